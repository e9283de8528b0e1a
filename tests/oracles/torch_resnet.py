"""A torchvision-structured ResNet in plain ``torch.nn`` (torchvision is not available here).

Module names and dilation rules follow ``torchvision.models.resnet`` so ``state_dict`` keys convert
with :func:`pnoc_jax.models.convert.torch_resnet_to_flax`. ``forward`` returns the stem activation
before the max-pool as ``conv1`` besides ``stem`` (after it) and ``layer1..4``.
"""

from __future__ import annotations

import torch
from torch import nn

DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
TINY = dict(layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16, block="basic")


class BasicBlock(nn.Module):
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
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
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
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    def __init__(
        self,
        layers,
        widths=(64, 128, 256, 512),
        stem_width=64,
        block="bottleneck",
        output_stride=16,
    ):
        super().__init__()
        block_cls = Bottleneck if block == "bottleneck" else BasicBlock
        self.inplanes, self.dilation = stem_width, 1
        self.conv1 = nn.Conv2d(3, stem_width, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        dilate = DILATE[output_stride]
        self.layer1 = self._make_layer(block_cls, widths[0], layers[0])
        self.layer2 = self._make_layer(block_cls, widths[1], layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(block_cls, widths[2], layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(block_cls, widths[3], layers[3], 2, dilate[2])
        self.channels = {
            "conv1": stem_width,
            **{f"layer{i + 1}": w * block_cls.expansion for i, w in enumerate(widths)},
        }

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
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
        x = torch.relu(self.bn1(self.conv1(x)))
        feats = {"conv1": x}
        x = self.maxpool(x)
        feats["stem"] = x
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats[f"layer{i}"] = x
        return feats


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """He-scaled random conv weights, random BN affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model


def state_dict_numpy(model: nn.Module, prefix: str = "") -> dict:
    """``state_dict`` entries under ``prefix`` as NumPy arrays, with the prefix removed."""
    return {
        k[len(prefix) :]: v.detach().numpy().copy()
        for k, v in model.state_dict().items()
        if k.startswith(prefix)
    }
