"""PyTorch transcription of PoolNet's ResNet "locate" variant (Liu et al. 2019; method.md §7).

Written from the structure of the authors' ``networks/poolnet.py`` (``config_resnet``) and
``networks/deeplab_resnet.py::ResNet_locate`` in plain torch, on the torchvision-structured
:class:`tests.oracles.torch_resnet.ResNet` (output stride 16) that our flax model uses; plus the
mapping of its ``state_dict`` onto the flax variables.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pnoc_jax.models.convert import torch_resnet_to_flax
from tests.oracles.torch_resnet import ResNet, state_dict_numpy

CONVERT = (128, 256, 256, 512, 512)
INFOS = (512, 256, 256, 128)
# (k_in, k_out, resize to the next tap, fuse)
DEEP_POOL = (
    (512, 512, False, True),
    (512, 256, True, True),
    (256, 256, True, True),
    (256, 128, True, True),
    (128, 128, False, False),
)


def _up(x, size):
    return F.interpolate(x, size, mode="bilinear", align_corners=True)


class DeepPool(nn.Module):
    def __init__(self, k, k_out, need_x2, need_fuse):
        super().__init__()
        self.need_x2, self.need_fuse = need_x2, need_fuse
        self.pools = nn.ModuleList([nn.AvgPool2d(s, s) for s in (2, 4, 8)])
        self.convs = nn.ModuleList([nn.Conv2d(k, k, 3, 1, 1, bias=False) for _ in range(3)])
        self.conv_sum = nn.Conv2d(k, k_out, 3, 1, 1, bias=False)
        if need_fuse:
            self.conv_sum_c = nn.Conv2d(k_out, k_out, 3, 1, 1, bias=False)

    def forward(self, x, x2=None, x3=None):
        out = x
        for pool, conv in zip(self.pools, self.convs, strict=True):
            out = out + _up(conv(pool(x)), x.shape[2:])
        out = torch.relu(out)
        if self.need_x2:
            out = _up(out, x2.shape[2:])
        out = self.conv_sum(out)
        if self.need_fuse:
            out = self.conv_sum_c(out + x2 + x3)
        return out


class PoolNet(nn.Module):
    """`divisor` divides every head width (the flax model's `head_divisor`)."""

    def __init__(self, resnet: ResNet, divisor: int = 1):
        super().__init__()
        self.resnet = resnet
        d = divisor
        tap_channels = [
            resnet.channels[k] for k in ("conv1", "layer1", "layer2", "layer3", "layer4")
        ]
        self.convert = nn.ModuleList(
            [nn.Conv2d(cin, cout // d, 1, bias=False) for cin, cout in zip(tap_channels, CONVERT)]
        )
        self.ppms_pre = nn.Conv2d(tap_channels[-1], 512 // d, 1, bias=False)
        self.ppms = nn.ModuleList(
            [
                nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(512 // d, 512 // d, 1, bias=False))
                for s in (1, 3, 5)
            ]
        )
        self.ppm_cat = nn.Conv2d(2048 // d, 512 // d, 3, 1, 1, bias=False)
        self.infos = nn.ModuleList(
            [nn.Conv2d(512 // d, c // d, 3, 1, 1, bias=False) for c in INFOS]
        )
        self.deep_pool = nn.ModuleList(
            [DeepPool(k // d, k_out // d, x2, fuse) for k, k_out, x2, fuse in DEEP_POOL]
        )
        self.score = nn.Conv2d(128 // d, 1, 1)

    def forward(self, x):
        feats = self.resnet(x)
        xs = [feats[k] for k in ("conv1", "layer1", "layer2", "layer3", "layer4")]
        p = self.ppms_pre(xs[-1])
        pyramid = [p] + [_up(torch.relu(ppm(p)), p.shape[2:]) for ppm in self.ppms]
        g = torch.relu(self.ppm_cat(torch.cat(pyramid, dim=1)))
        infos = [torch.relu(conv(_up(g, xs[3 - k].shape[2:]))) for k, conv in enumerate(self.infos)]
        conv2merge = [torch.relu(conv(t)) for conv, t in zip(self.convert, xs)][::-1]
        merge = self.deep_pool[0](conv2merge[0], conv2merge[1], infos[0])
        for k in range(1, 4):
            merge = self.deep_pool[k](merge, conv2merge[k + 1], infos[k])
        merge = self.deep_pool[4](merge)
        return _up(self.score(merge), x.shape[2:])


def poolnet_to_flax(model: PoolNet, stage_sizes) -> dict:
    """Flax variables of :class:`pnoc_jax.models.poolnet.PoolNet` from the torch model."""
    out = torch_resnet_to_flax(state_dict_numpy(model.resnet), stage_sizes)
    sd = state_dict_numpy(model)
    params = out["params"]

    def kernel(key):
        return {"kernel": sd[key].transpose(2, 3, 1, 0)}

    for i in range(5):
        params[f"convert_{i}"] = kernel(f"convert.{i}.weight")
    params["ppms_pre"] = kernel("ppms_pre.weight")
    for k in range(3):
        params[f"ppms_{k}"] = kernel(f"ppms.{k}.1.weight")
    params["ppm_cat"] = kernel("ppm_cat.weight")
    for k in range(4):
        params[f"infos_{k}"] = kernel(f"infos.{k}.weight")
    for k, cfg in enumerate(DEEP_POOL):
        level = {f"convs_{i}": kernel(f"deep_pool.{k}.convs.{i}.weight") for i in range(3)}
        level["conv_sum"] = kernel(f"deep_pool.{k}.conv_sum.weight")
        if cfg[3]:
            level["conv_sum_c"] = kernel(f"deep_pool.{k}.conv_sum_c.weight")
        params[f"deep_pool_{k}"] = level
    params["score"] = {**kernel("score.weight"), "bias": sd["score.bias"]}
    return out
