"""Test-only PyTorch references for the DeepLab heads, written from the spec (plain torch.nn).

* :class:`TorchResNet`: torchvision's ResNet structure (module names, dilation rules) without
  torchvision, returning the stem and stage outputs; ``BasicBlock`` also accepts dilation.
* :class:`TorchDeepLabV3Plus`: P-NOC's DeepLabV3+ with GroupNorm (method.md §10).
* :class:`TorchDeepLabV2` and :class:`TorchMSC`: deeplab-pytorch's ASPP-V2 sum and multi-scale
  inputs.
* :func:`load_flax_variables`: copies flax ``{"params", "batch_stats"}`` into these modules. Head
  submodules carry the flax names, so ``aspp/branch1/conv/kernel`` becomes
  ``aspp.branch1.conv.weight``; the backbone follows torchvision's names.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


# --- backbone ----------------------------------------------------------------------------------


class TorchBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        d = dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=d, dilation=d, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=d, dilation=d, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class TorchBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        d = dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=d, dilation=d, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


BLOCKS = {"basic": TorchBasicBlock, "bottleneck": TorchBottleneck}


class TorchResNet(nn.Module):
    """torchvision ResNet layout; ``forward`` returns ``{"stem", "layer1".."layer4"}`` (NCHW)."""

    def __init__(self, block, layers, widths, stem_width, output_stride):
        super().__init__()
        block = BLOCKS[block]
        self.inplanes, self.dilation = stem_width, 1
        self.conv1 = nn.Conv2d(3, stem_width, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        dilate = (False, *DILATE[output_stride])
        for i in range(4):
            layer = self._make_layer(block, widths[i], layers[i], 1 if i == 0 else 2, dilate[i])
            setattr(self, f"layer{i + 1}", layer)
        self.out_channels = [stem_width] + [w * block.expansion for w in widths]

    def _make_layer(self, block, planes, blocks, stride, dilate):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feats = {"stem": x}
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats[f"layer{i}"] = x
        return feats


# --- DeepLabV3+ ---------------------------------------------------------------------------------


class ConvGNReLU(nn.Module):
    def __init__(self, cin, cout, kernel=1, dilation=1):
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
        self.gn = nn.GroupNorm(4, cout)

    def forward(self, x):
        return F.relu(self.gn(self.conv(x)))


class TorchASPP(nn.Module):
    def __init__(self, cin, rates):
        super().__init__()
        self.branch0 = ConvGNReLU(cin, 256, 1)
        self.branch1 = ConvGNReLU(cin, 256, 3, rates[0])
        self.branch2 = ConvGNReLU(cin, 256, 3, rates[1])
        self.branch3 = ConvGNReLU(cin, 256, 3, rates[2])
        self.pool = ConvGNReLU(cin, 256, 1)
        self.project = ConvGNReLU(1280, 256, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        size = x.shape[2:]
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1))
        pooled = F.interpolate(pooled, size=size, mode="bilinear", align_corners=True)
        branches = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x), pooled]
        return self.dropout(self.project(torch.cat(branches, dim=1)))


class TorchDecoder(nn.Module):
    def __init__(self, num_classes, low_channels):
        super().__init__()
        self.reduce = ConvGNReLU(low_channels, 48, 1)
        self.fuse1 = ConvGNReLU(304, 256, 3)
        self.drop1 = nn.Dropout(0.5)
        self.fuse2 = ConvGNReLU(256, 256, 3)
        self.drop2 = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, x, low):
        low = self.reduce(low)
        x = F.interpolate(x, size=low.shape[2:], mode="bilinear", align_corners=True)
        x = self.drop1(self.fuse1(torch.cat([x, low], dim=1)))
        x = self.drop2(self.fuse2(x))
        return self.classifier(x)


class TorchDeepLabV3Plus(nn.Module):
    def __init__(self, num_classes, rates, block, layers, widths, stem_width, output_stride):
        super().__init__()
        self.backbone = TorchResNet(block, layers, widths, stem_width, output_stride)
        chans = self.backbone.out_channels
        self.aspp = TorchASPP(chans[4], rates)
        self.decoder = TorchDecoder(num_classes, chans[1])

    def forward(self, x):
        feats = self.backbone(x)
        y = self.decoder(self.aspp(feats["layer4"]), feats["layer1"])
        return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=True)


# --- DeepLabV2 + MSC ----------------------------------------------------------------------------


class TorchASPPV2(nn.Module):
    def __init__(self, cin, num_classes, rates):
        super().__init__()
        for i, r in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(cin, num_classes, 3, padding=r, dilation=r))

    def forward(self, x):
        return sum(conv(x) for conv in self.children())


class TorchDeepLabV2(nn.Module):
    def __init__(self, num_classes, rates, block, layers, widths, stem_width, output_stride):
        super().__init__()
        self.backbone = TorchResNet(block, layers, widths, stem_width, output_stride)
        self.aspp = TorchASPPV2(self.backbone.out_channels[4], num_classes, rates)

    def forward(self, x):
        return self.aspp(self.backbone(x)["layer4"])


class TorchMSC(nn.Module):
    """deeplab-pytorch's MSC; always returns ``[logits, *pyramid, max]`` (its training output)."""

    def __init__(self, base, scales=(0.5, 0.75)):
        super().__init__()
        self.base, self.scales = base, scales

    def forward(self, x):
        logits = self.base(x)
        size = logits.shape[2:]
        pyramid = [
            self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
            for s in self.scales
        ]
        resized = [
            F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid
        ]
        fused = torch.max(torch.stack([logits, *resized]), dim=0)[0]
        return [logits, *pyramid, fused]


# --- weights ------------------------------------------------------------------------------------

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean"}
_LEAF["var"] = "running_var"
_MODULE = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


def torch_key(path: tuple[str, ...]) -> str:
    """Flax path ``("backbone", "layer2_0", "downsample_bn", "var")`` -> torch state_dict key."""
    *modules, leaf = path
    names = [_MODULE.get(m, re.sub(r"^layer(\d)_(\d+)$", r"layer\1.\2", m)) for m in modules]
    return ".".join([*names, _LEAF[leaf]])


def load_flax_variables(module: nn.Module, variables: dict) -> nn.Module:
    """Copies every flax leaf into ``module`` (strictly: no key left over on either side)."""
    state = module.state_dict()
    wanted = {k for k in state if not k.endswith("num_batches_tracked")}
    seen = set()
    for collection in variables.values():
        for path, leaf in jax.tree_util.tree_leaves_with_path(collection):
            key = torch_key(tuple(p.key for p in path))
            value = np.asarray(leaf, np.float32)
            if value.ndim == 4:  # HWIO -> OIHW
                value = value.transpose(3, 2, 0, 1)
            assert key in wanted, f"no torch parameter for {key}"
            assert tuple(state[key].shape) == value.shape, key
            state[key] = torch.from_numpy(value.copy())
            seen.add(key)
    assert seen == wanted, f"torch parameters without a flax value: {sorted(wanted - seen)}"
    module.load_state_dict(state)
    return module.eval()


def randomised_variables(shapes: dict, seed: int) -> dict:
    """Non-trivial values for a flax variable tree given by ``jax.eval_shape(model.init, ...)``.

    Kernels He-normal (fan-in), norm scales around 1, biases/offsets and BN means around 0,
    BN variances in [0.5, 1.5).
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        shape = leaf.shape
        if name == "kernel":
            fan_in = math.prod(shape[:-1])
            value = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
        elif name == "scale":
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "var":
            value = 0.5 + rng.random(shape)
        else:  # bias, mean
            value = 0.2 * rng.standard_normal(shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)
