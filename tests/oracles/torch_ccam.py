"""PyTorch transcription of C²AM (§7): the disentangler model and its two contrastive losses.

Written from the spec's description of the reference (``core/ccam.py``, ``core/networks.py::CCAM``)
in plain torch, to check the flax model and the JAX losses; also the flax variable mapping.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pnoc_jax.models.convert import torch_resnet_to_flax
from tests.oracles.torch_resnet import ResNet, state_dict_numpy


class CCAM(nn.Module):
    """backbone -> cat(layer4, layer3) -> conv3x3 (1, no bias) -> BN(1) -> (fg, bg, z)."""

    def __init__(self, resnet: ResNet):
        super().__init__()
        self.resnet = resnet
        cin = resnet.channels["layer4"] + resnet.channels["layer3"]
        self.activation_head = nn.Conv2d(cin, 1, 3, padding=1, bias=False)
        self.bn_head = nn.BatchNorm2d(1)

    def forward(self, x):
        feats = self.resnet(x)
        f = torch.cat([feats["layer4"], feats["layer3"]], dim=1)
        z = self.bn_head(self.activation_head(f))
        n, c, h, w = f.shape
        p = torch.sigmoid(z).reshape(n, 1, h * w)
        flat = f.reshape(n, c, h * w).transpose(1, 2)
        fg = torch.bmm(p, flat).reshape(n, c) / (h * w)
        bg = torch.bmm(1 - p, flat).reshape(n, c) / (h * w)
        return fg, bg, z


def ccam_to_flax(model: CCAM, stage_sizes) -> dict:
    """Flax variables of :class:`pnoc_jax.models.ccam.CCAM` from the torch model."""
    out = torch_resnet_to_flax(state_dict_numpy(model.resnet), stage_sizes)
    head = state_dict_numpy(model)
    out["params"]["disentangler_conv"] = {
        "kernel": head["activation_head.weight"].transpose(2, 3, 1, 0)
    }
    out["params"]["disentangler_bn"] = {
        "scale": head["bn_head.weight"],
        "bias": head["bn_head.bias"],
    }
    out["batch_stats"]["disentangler_bn"] = {
        "mean": head["bn_head.running_mean"],
        "var": head["bn_head.running_var"],
    }
    return out


def clamped_cosine(a, b):
    sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    return sim.clamp(0.0005, 0.9995)


def sim_max_loss(x, alpha, stable=True):
    """Rank-weighted −log cos; ranks by argsort of the descending sort (``stable`` tie order)."""
    sim = clamped_cosine(x, x)
    loss = -torch.log(sim)
    loss = torch.where(loss < 0, torch.zeros_like(loss), loss)
    _, order = sim.sort(dim=1, descending=True, stable=stable)
    _, rank = order.sort(dim=1)
    return (loss * torch.exp(-(rank - 1).float() * alpha)).mean()


def sim_min_loss(bg, fg):
    return (-torch.log(1 - clamped_cosine(bg, fg))).mean()


def hint_loss(z, hints, fg_threshold, label_smoothing):
    """Reference form: BCE over the selected pixels, averaged (NaN for an empty selection)."""
    selected = z[hints >= fg_threshold]
    target = torch.ones_like(selected) * (1 - label_smoothing) + 0.5 * label_smoothing
    return F.binary_cross_entropy_with_logits(selected, target, reduction="mean")


def to_numpy(t) -> np.ndarray:
    return t.detach().numpy()
