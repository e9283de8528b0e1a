"""ResNeSt backbones (split-attention ResNets, Zhang et al. 2020) in flax.linen (NHWC).

Matches the reference PyTorch implementation (PyPI ``resnest``, ``resnest.torch``) that the
official ImageNet weights were trained with: radix-2 split attention, cardinality 1, deep stem,
``avg_down`` projection shortcuts and ``avd`` (average-pool downsampling after the
split-attention conv). The module tree maps onto the torch ``state_dict`` by a fixed rule (see
:mod:`pnoc_jax.models.convert`)::

    torch                         flax (under ``backbone``)
    conv1.0 / .3 / .6             stem_conv1 / stem_conv2 / stem_conv3  deep stem, 3x3 convs
    conv1.1 / .4                  stem_bn1 / stem_bn2
    bn1                           bn1                                   BN after the stem
    layer{i}.{j}                  layer{i}_{j}                          block j (0-based), stage i
      conv1, bn1, conv3, bn3      conv1, bn1, conv3, bn3                1x1 convs
      conv2.{conv,bn0,fc1,bn1,fc2}  conv2/{conv,bn0,fc1,bn1,fc2}        split-attention conv
      downsample.1 / .2           downsample_conv / downsample_bn       (downsample.0 is a pool)

Sequential children are renamed so that every BatchNorm has "bn" in its name (the optimizer
freezes BN parameters by that fragment) and shortcuts are named as in :mod:`resnet`.

Block structure (``resnest.torch.resnet.Bottleneck`` with radix 2, avd, not avd_first)::

    x -> 1x1 conv (gw) BN ReLU -> SplitAttentionConv(3x3, stride 1 if avd else s) -> [avd pool]
      -> 1x1 conv (4*planes) BN -> + shortcut -> ReLU
    gw = int(planes * bottleneck_width / 64) * cardinality
    avd pool  = AvgPool 3x3 / s, zero padding 1, always divides by 9 (count_include_pad=True);
                applied in the first block of layers 2-4 even where s == 1 (dilated layers), where
                it is a 3x3 blur, because the reference sets ``is_first`` there.
    shortcut  = AvgPool k=s/s, ceil_mode, divides by the valid count (count_include_pad=False),
                then 1x1 conv + BN; the pool is the identity in layer1 and in dilated layers.

Output stride (the reference's ``dilated`` / ``dilation`` arguments)::

    output_stride  layer3 (stride, dilation)  layer4 (stride, dilation)  reference arguments
    32             (2, 1)                     (2, 1)                     (defaults)
    16             (2, 1)                     (1, 2)                     dilation=2
    8              (1, 2)                     (1, 4)                     dilated=True

In a dilated layer the first block's 3x3 conv uses dilation 1 (layer dilation 2) or 2 (layer
dilation 4); the other blocks use the layer's. BN uses momentum 0.9 (torch 0.1) and epsilon
1e-5; all padding is explicit and symmetric, like torch. Parameters are float32; ``dtype`` is
the compute dtype of convs/BN, while the split-attention pooling and softmax and the avg-pools
are computed in float32 and cast back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pnoc_jax.models.layers import batch_norm, conv

_EXPANSION = 4

# Constructor fields of ResNeSt, exactly as resnest.torch.resnest{50,101,200,269} build them
# (all: radix 2, groups 1, bottleneck_width 64, deep stem, avg_down, avd, not avd_first).
RESNEST_CONFIGS: Mapping[str, Mapping[str, Any]] = {
    "resnest50": dict(stage_sizes=(3, 4, 6, 3), stem_width=32, radix=2, bottleneck_width=64),
    "resnest101": dict(stage_sizes=(3, 4, 23, 3), stem_width=64, radix=2, bottleneck_width=64),
    "resnest200": dict(stage_sizes=(3, 24, 36, 3), stem_width=64, radix=2, bottleneck_width=64),
    "resnest269": dict(stage_sizes=(3, 30, 48, 8), stem_width=64, radix=2, bottleneck_width=64),
    # For fast tests (no pretrained weights): one block per stage, split-attention convs of
    # width 16/32/64/128. Also buildable in the reference, as
    # ResNet(Bottleneck, [1, 1, 1, 1], radix=2, bottleneck_width=16, deep_stem=True,
    #        stem_width=8, avg_down=True, avd=True); stage outputs keep 256..2048 channels.
    "resnest_tiny": dict(stage_sizes=(1, 1, 1, 1), stem_width=8, radix=2, bottleneck_width=16),
}

# Stage widths ("planes"); the reference hard-codes them. Stage outputs have 4x as many channels.
_WIDTHS = (64, 128, 256, 512)

# (stride, dilation) of layer1..layer4 for each output stride (resnest.torch.resnet.ResNet).
_LAYER_STRIDE_DILATION = {
    32: ((1, 1), (2, 1), (2, 1), (2, 1)),
    16: ((1, 1), (2, 1), (2, 1), (1, 2)),
    8: ((1, 1), (2, 1), (1, 2), (1, 4)),
}


def _avd_pool(x: jax.Array, stride: int) -> jax.Array:
    """torch ``AvgPool2d(3, stride, padding=1)``: zero padding counted, i.e. window sum / 9."""
    y = nn.avg_pool(
        x.astype(jnp.float32), (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1))
    )
    return y.astype(x.dtype)


def _shortcut_pool(x: jax.Array, k: int) -> jax.Array:
    """torch ``AvgPool2d(k, k, ceil_mode=True, count_include_pad=False)``.

    ceil_mode adds a last, partial window when the size is not a multiple of ``k``; it is
    averaged over its valid pixels only. Output size ``ceil(n / k)``.
    """
    if k == 1:
        return x
    h, w = x.shape[1:3]
    y = nn.avg_pool(
        x.astype(jnp.float32),
        (k, k),
        strides=(k, k),
        padding=((0, -h % k), (0, -w % k)),
        count_include_pad=False,
    )
    return y.astype(x.dtype)


class SplitAttentionConv(nn.Module):
    """Split-attention 3x3 conv (``resnest.torch.splat.SplAtConv2d`` with BN, no rectify).

    (N, H, W, C_in) -> (N, H', W', channels). A grouped conv (groups = cardinality * radix)
    makes ``radix`` splits of ``channels`` each (split r = output channels r*channels ...);
    their sum is global-average-pooled and goes through fc1 (1x1, bias) BN ReLU fc2 (1x1,
    bias) to per-split attention logits, softmax over the radix (sigmoid when radix is 1); the
    output is the attention-weighted sum of the splits.
    """

    channels: int
    stride: int = 1
    dilation: int = 1
    radix: int = 2
    cardinality: int = 1
    reduction_factor: int = 4
    use_running_average: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ura, dt = self.use_running_average, self.dtype
        c, radix, card = self.channels, self.radix, self.cardinality
        # torch: max(in_channels * radix // reduction_factor, 32) with in_channels == channels.
        inter = max(c * radix // self.reduction_factor, 32)
        x = conv(c * radix, 3, dt, "conv", self.stride, self.dilation, groups=card * radix)(x)
        x = nn.relu(batch_norm(ura, dt, "bn0")(x))
        splits = x.reshape(*x.shape[:3], radix, c)  # (N, H, W, radix, C)
        gap = jnp.mean(splits.astype(jnp.float32).sum(axis=3), axis=(1, 2), keepdims=True)
        gap = conv(inter, 1, dt, "fc1", groups=card, use_bias=True)(gap.astype(dt))
        gap = nn.relu(batch_norm(ura, dt, "bn1")(gap))
        logits = conv(c * radix, 1, dt, "fc2", groups=card, use_bias=True)(gap)
        logits = logits.astype(jnp.float32).reshape(x.shape[0], card, radix, c // card)
        # rSoftMax: softmax over the radix within each cardinal group (sigmoid for radix 1).
        att = jax.nn.softmax(logits, axis=2) if radix > 1 else jax.nn.sigmoid(logits)
        # (N, card, radix, C/card) -> (N, 1, 1, radix, C), channel order of the splits.
        att = att.transpose(0, 2, 1, 3).reshape(x.shape[0], 1, 1, radix, c)
        return (att.astype(dt) * splits).sum(axis=3)


class Bottleneck(nn.Module):
    """ResNeSt bottleneck (``resnest.torch.resnet.Bottleneck``, avd after the split conv)."""

    planes: int
    stride: int = 1
    dilation: int = 1
    avd: bool = False
    downsample: bool = False
    shortcut_pool: int = 1
    radix: int = 2
    cardinality: int = 1
    bottleneck_width: int = 64
    use_running_average: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ura, dt = self.use_running_average, self.dtype
        group_width = int(self.planes * (self.bottleneck_width / 64.0)) * self.cardinality
        y = conv(group_width, 1, dt, "conv1")(x)
        y = nn.relu(batch_norm(ura, dt, "bn1")(y))
        y = SplitAttentionConv(
            group_width,
            stride=1 if self.avd else self.stride,
            dilation=self.dilation,
            radix=self.radix,
            cardinality=self.cardinality,
            use_running_average=ura,
            dtype=dt,
            name="conv2",
        )(y)
        if self.avd:
            y = _avd_pool(y, self.stride)
        y = conv(self.planes * _EXPANSION, 1, dt, "conv3")(y)
        y = batch_norm(ura, dt, "bn3")(y)
        if self.downsample:
            x = _shortcut_pool(x, self.shortcut_pool)
            x = conv(self.planes * _EXPANSION, 1, dt, "downsample_conv")(x)
            x = batch_norm(ura, dt, "downsample_bn")(x)
        return nn.relu(y + x)


def resnest_plan(
    stage_sizes: Sequence[int], stem_width: int, output_stride: int
) -> list[list[dict[str, Any]]]:
    """Per-stage list of Bottleneck settings, following ``resnest.torch.resnet.ResNet``.

    Each entry: planes, stride, dilation (of the 3x3 conv), avd, downsample and shortcut_pool
    (kernel = stride of the shortcut's avg-pool). Shared by the model and the weight converter.
    """
    if output_stride not in _LAYER_STRIDE_DILATION:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if len(stage_sizes) != 4:
        raise ValueError(f"stage_sizes must have 4 entries, got {stage_sizes}")
    inplanes = 2 * stem_width  # deep stem
    plan: list[list[dict[str, Any]]] = []
    layers = zip(stage_sizes, _WIDTHS, _LAYER_STRIDE_DILATION[output_stride], strict=True)
    for i, (n_blocks, planes, (stride, dilation)) in enumerate(layers):
        is_first = i > 0  # the reference passes is_first=False for layer1 only
        blocks = []
        for j in range(n_blocks):
            if j == 0:
                blocks.append(
                    dict(
                        planes=planes,
                        stride=stride,
                        dilation=2 if dilation == 4 else 1,
                        avd=stride > 1 or is_first,
                        downsample=stride != 1 or inplanes != planes * _EXPANSION,
                        shortcut_pool=stride if dilation == 1 else 1,
                    )
                )
            else:
                blocks.append(
                    dict(
                        planes=planes,
                        stride=1,
                        dilation=dilation,
                        avd=False,
                        downsample=False,
                        shortcut_pool=1,
                    )
                )
            inplanes = planes * _EXPANSION
        plan.append(blocks)
    return plan


class ResNeSt(nn.Module):
    """ResNeSt feature extractor; returns the stem and the four stage outputs (NHWC).

    Strides: stem/layer1 4, layer2 8, layer3 16 (8 at OS8), layer4 ``output_stride``.
    Channels: stem ``2 * stem_width``, layer1..4 256, 512, 1024, 2048.
    """

    stage_sizes: Sequence[int]
    stem_width: int = 64
    radix: int = 2
    cardinality: int = 1
    bottleneck_width: int = 64
    output_stride: int = 16
    frozen_bn: bool = False
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each block in the backward pass (same parameters)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        plan = resnest_plan(self.stage_sizes, self.stem_width, self.output_stride)
        ura = (not train) or self.frozen_bn
        dt, sw = self.dtype, self.stem_width
        x = x.astype(dt)
        x = conv(sw, 3, dt, "stem_conv1", stride=2)(x)
        x = nn.relu(batch_norm(ura, dt, "stem_bn1")(x))
        x = conv(sw, 3, dt, "stem_conv2")(x)
        x = nn.relu(batch_norm(ura, dt, "stem_bn2")(x))
        x = conv(2 * sw, 3, dt, "stem_conv3")(x)
        x = nn.relu(batch_norm(ura, dt, "bn1")(x))
        # Flax pads max-pool windows with -inf, like torch.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        feats = {"stem": x}
        block = nn.remat(Bottleneck) if self.remat else Bottleneck
        for i, blocks in enumerate(plan, start=1):
            for j, cfg in enumerate(blocks):
                x = block(
                    **cfg,
                    radix=self.radix,
                    cardinality=self.cardinality,
                    bottleneck_width=self.bottleneck_width,
                    use_running_average=ura,
                    dtype=dt,
                    name=f"layer{i}_{j}",
                )(x)
            feats[f"layer{i}"] = x
        return feats


def resnest_config(name: str) -> dict[str, Any]:
    """ResNeSt constructor fields of ``name``; ValueError naming the valid names otherwise."""
    try:
        return dict(RESNEST_CONFIGS[name])
    except KeyError:
        raise ValueError(
            f"unknown ResNeSt {name!r}; valid names: {', '.join(sorted(RESNEST_CONFIGS))}"
        ) from None


def build_resnest(
    name: str, output_stride: int = 16, frozen_bn: bool = False, dtype: Any = jnp.float32
) -> ResNeSt:
    """ResNeSt by name ("resnest50/101/200/269" or "resnest_tiny")."""
    return ResNeSt(
        **resnest_config(name), output_stride=output_stride, frozen_bn=frozen_bn, dtype=dtype
    )


def resnest_feature_channels(name: str) -> dict[str, int]:
    """Channel count of each feature returned by the ResNeSt ``name``."""
    cfg = resnest_config(name)
    out = {"stem": 2 * cfg["stem_width"]}
    out.update({f"layer{i}": w * _EXPANSION for i, w in enumerate(_WIDTHS, start=1)})
    return out
