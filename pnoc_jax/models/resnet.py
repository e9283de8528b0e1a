"""torchvision-compatible ResNet backbones in flax.linen (NHWC).

The module tree mirrors torchvision's ``ResNet`` so a torch ``state_dict`` maps 1:1 onto it
(see :mod:`pnoc_jax.models.convert`)::

    conv1, bn1                                   stem 7x7/2 conv + BN (+ ReLU, 3x3/2 max-pool)
    layer{i}_{j}/conv1 .. conv3, bn1 .. bn3      block j (0-based) of stage i (1..4)
    layer{i}_{j}/downsample_conv, downsample_bn  projection shortcut (torch ``downsample.0/1``)

Convolutions have no bias and HWIO kernels; BatchNorm uses momentum 0.9 (torch 0.1) and
epsilon 1e-5. All padding is explicit and symmetric, exactly like torch, so outputs agree for odd
input sizes too. Output stride 16/8 follows torchvision's ``replace_stride_with_dilation``: a
dilated stage has stride 1, its first block keeps the previous dilation in its 3x3 conv(s) and the
remaining blocks use the new one. (torchvision's ``BasicBlock`` refuses dilation; here both of its
3x3 convs take the block's dilation.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pnoc_jax.models.layers import batch_norm, conv

_EXPANSION = {"bottleneck": 4, "basic": 1}

RESNET_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(stage_sizes=(1, 1, 1, 1), block="basic", stem_width=16, widths=(16, 32, 64, 128)),
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    "resnet101": dict(stage_sizes=(3, 4, 23, 3), block="bottleneck"),
    "resnet152": dict(stage_sizes=(3, 8, 36, 3), block="bottleneck"),
}


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity/projection shortcut (torchvision ``BasicBlock``)."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    use_running_average: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ura, dt = self.use_running_average, self.dtype
        y = conv(self.planes, 3, dt, "conv1", self.stride, self.dilation)(x)
        y = nn.relu(batch_norm(ura, dt, "bn1")(y))
        y = conv(self.planes, 3, dt, "conv2", dilation=self.dilation)(y)
        y = batch_norm(ura, dt, "bn2")(y)
        if self.downsample:
            x = conv(self.planes, 1, dt, "downsample_conv", self.stride)(x)
            x = batch_norm(ura, dt, "downsample_bn")(x)
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 x4 bottleneck (torchvision v1.5 ``Bottleneck``)."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    use_running_average: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ura, dt = self.use_running_average, self.dtype
        y = conv(self.planes, 1, dt, "conv1")(x)
        y = nn.relu(batch_norm(ura, dt, "bn1")(y))
        y = conv(self.planes, 3, dt, "conv2", self.stride, self.dilation)(y)
        y = nn.relu(batch_norm(ura, dt, "bn2")(y))
        y = conv(self.planes * 4, 1, dt, "conv3")(y)
        y = batch_norm(ura, dt, "bn3")(y)
        if self.downsample:
            x = conv(self.planes * 4, 1, dt, "downsample_conv", self.stride)(x)
            x = batch_norm(ura, dt, "downsample_bn")(x)
        return nn.relu(y + x)


def stage_plan(
    stage_sizes: Sequence[int],
    block: str,
    stem_width: int,
    widths: Sequence[int],
    output_stride: int,
) -> list[list[dict[str, Any]]]:
    """Per-stage list of block settings (planes, stride, dilation, downsample), torchvision rules.

    Shared by the flax model and the weight converter so both agree on which blocks have a
    projection shortcut.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if block not in _EXPANSION:
        raise ValueError(f"block must be one of {sorted(_EXPANSION)}, got {block!r}")
    if len(stage_sizes) != 4 or len(widths) != 4:
        raise ValueError("stage_sizes and widths must have 4 entries")
    expansion = _EXPANSION[block]
    # replace_stride_with_dilation for (layer2, layer3, layer4).
    dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[
        output_stride
    ]
    inplanes, dilation = stem_width, 1
    plan: list[list[dict[str, Any]]] = []
    for i, (n_blocks, planes) in enumerate(zip(stage_sizes, widths, strict=True)):
        stride = 1 if i == 0 else 2
        previous_dilation = dilation
        if i > 0 and dilate[i - 1]:
            dilation *= stride
            stride = 1
        blocks = []
        for j in range(n_blocks):
            blocks.append(
                dict(
                    planes=planes,
                    stride=stride if j == 0 else 1,
                    dilation=previous_dilation if j == 0 else dilation,
                    downsample=j == 0 and (stride != 1 or inplanes != planes * expansion),
                )
            )
            inplanes = planes * expansion
        plan.append(blocks)
    return plan


class ResNet(nn.Module):
    """ResNet feature extractor; returns the stem and the four stage outputs (NHWC).

    Strides: conv1 2 (the stem before its max-pool), stem/layer1 4, layer2 8, layer3 16 (8 at
    OS8), layer4 ``output_stride``.
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    stem_width: int = 64
    widths: Sequence[int] = (64, 128, 256, 512)
    output_stride: int = 16
    frozen_bn: bool = False
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each block in the backward pass (same parameters)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        plan = stage_plan(
            self.stage_sizes, self.block, self.stem_width, self.widths, self.output_stride
        )
        ura = (not train) or self.frozen_bn
        block_cls = Bottleneck if self.block == "bottleneck" else BasicBlock
        block_cls = nn.remat(block_cls) if self.remat else block_cls
        x = x.astype(self.dtype)
        x = conv(self.stem_width, 7, self.dtype, "conv1", stride=2)(x)
        x = nn.relu(batch_norm(ura, self.dtype, "bn1")(x))
        feats = {"conv1": x}  # stride 2, before the max-pool (PoolNet's finest tap)
        # Flax pads max-pool windows with -inf, like torch.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        feats["stem"] = x
        for i, blocks in enumerate(plan, start=1):
            for j, cfg in enumerate(blocks):
                x = block_cls(
                    **cfg, use_running_average=ura, dtype=self.dtype, name=f"layer{i}_{j}"
                )(x)
            feats[f"layer{i}"] = x
        return feats


def resnet_feature_channels(name: str) -> dict[str, int]:
    """Channel count of each feature of the ResNet `name` (a key of `RESNET_CONFIGS`)."""
    cfg = RESNET_CONFIGS[name]
    expansion = _EXPANSION[cfg["block"]]
    widths = cfg.get("widths", (64, 128, 256, 512))
    out = {"conv1": cfg.get("stem_width", 64), "stem": cfg.get("stem_width", 64)}
    out.update({f"layer{i}": w * expansion for i, w in enumerate(widths, start=1)})
    return out
