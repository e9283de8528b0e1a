"""Segmentation networks: DeepLabV3+ (P-NOC's final model) and DeepLabV2 with multi-scale inputs.

Both put a new head on a ResNet ``backbone`` submodule (:mod:`pnoc_jax.models.resnet`), so
:func:`pnoc_jax.core.optim.param_labels` gives the backbone 1×/2× and every head parameter
10×/20× (method.md §2) without further configuration. Inputs are NHWC; logits are float32 whatever
the compute ``dtype``.

**DeepLabV3+** (§10; P-NOC ``core/networks.py::DeepLabV3Plus``, ``core/deeplab_utils.py``)::

    layer4 ─ ASPP: 1×1 | 3×3 rate r1 | 3×3 r2 | 3×3 r3 | image pool (GAP → 1×1 → broadcast)
             each 256, no bias, GroupNorm(4), ReLU; concat 1280 → 1×1 256 GN ReLU Dropout 0.5
    layer1 ─ 1×1 48 GN ReLU ──────────────┐
    ASPP out ─ bilinear (align_corners) ───┴ concat 304 → 3×3 256 GN ReLU Dropout 0.5
             → 3×3 256 GN ReLU Dropout 0.1 → 1×1 → classes (bias) → bilinear (align_corners)
               to the input size

The head width (256, 48 for the low-level reduction) is the spec's by default; ``head_channels`` and
``low_level_channels`` shrink it for tiny CPU recipes. ``valid`` (``[B, H, W]``, inference on a
padded canvas) restricts the image-pooling mean and the GroupNorm statistics to the image's own
cells, so a padded image is normalised as the image alone would be (the reference runs every
image at its own size).

Rates (r1, r2, r3) are (6, 12, 18) at output stride 16 and (12, 24, 36) at 8, as the reference's
``ASPP(output_stride)`` chooses them. Note that P-NOC's ``DeepLabV3Plus`` always passes
``output_stride=16`` to ``ASPP``, so its (never used) ``dilated=True`` variant keeps 6/12/18;
set ``atrous_rates=(6, 12, 18)`` to reproduce that. Head convs use ``kaiming_normal_`` (fan-in,
gain √2); the classifier's bias keeps PyTorch's default U(±1/√fan_in); GroupNorm starts at 1/0.

**DeepLabV2** (kazuto1011/deeplab-pytorch ``DeepLabV2`` + ``MSC``, used for the paper's "V2"
rows): ASPP-V2 is the SUM of four 3×3 convs with bias (rates 6/12/18/24, init N(0, 0.01), bias
0) on layer4, giving logits at the feature stride. Training uses multi-scale inputs
(:meth:`DeepLabV2.msc`); inference (:meth:`DeepLabV2.predict`) returns the max-fused logits
resized to the input. deeplab-pytorch keeps BatchNorm frozen while training (``freeze_bn``), hence
``frozen_bn=True`` by default here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pnoc_jax.models.backbones import backbone_features
from pnoc_jax.models.layers import KAIMING_FAN_IN, conv
from pnoc_jax.models.resize import rescale_bilinear, resize_bilinear

ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48
GN_GROUPS = 4
GN_EPSILON = 1e-5  # torch.nn.GroupNorm default (flax's is 1e-6)
ASPP_DROPOUT, DECODER_DROPOUTS = 0.5, (0.5, 0.1)

V2_ATROUS_RATES = (6, 12, 18, 24)
MSC_SCALES = (0.5, 0.75)


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")


def _torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default conv bias init, U(-1/√fan_in, 1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def default_atrous_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLabV3(+) ASPP rates: (6, 12, 18) at output stride 16, doubled at 8."""
    _check_output_stride(output_stride)
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


class _ConvGNReLU(nn.Module):
    """Bias-free conv (torch-style symmetric padding) -> GroupNorm(4) -> ReLU."""

    features: int
    kernel: int = 1
    dilation: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """``valid`` ``[B, h, w]`` (optional): the cells GroupNorm takes its statistics over."""
        x = conv(
            self.features,
            self.kernel,
            self.dtype,
            "conv",
            dilation=self.dilation,
            kernel_init=KAIMING_FAN_IN,
        )(x)
        x = nn.GroupNorm(
            num_groups=GN_GROUPS,
            epsilon=GN_EPSILON,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="gn",
        )(x, mask=None if valid is None else jnp.broadcast_to(valid[..., None], x.shape))
        return nn.relu(x)


class ASPP(nn.Module):
    """DeepLabV3 ASPP with GroupNorm: ``[B, h, w, C] -> [B, h, w, 256]``.

    Submodules ``branch0`` (1×1), ``branch1..3`` (3×3 at ``rates``), ``pool`` (image pooling)
    and ``project`` (1×1 on the concatenation), each a conv + GroupNorm pair.
    """

    rates: Sequence[int]
    dtype: Any = jnp.float32
    channels: int = ASPP_CHANNELS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, valid: jax.Array | None = None) -> jax.Array:
        """``valid`` ``[B, h, w]`` (optional): the cells the image-pooling mean and the
        GroupNorm statistics run over."""
        dt, ch = self.dtype, self.channels
        branches = [_ConvGNReLU(ch, 1, dtype=dt, name="branch0")(x, valid)]
        for i, rate in enumerate(self.rates, start=1):
            branches.append(_ConvGNReLU(ch, 3, rate, dtype=dt, name=f"branch{i}")(x, valid))
        if valid is None:
            pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
        else:
            weight = valid.astype(jnp.float32)[..., None]
            total = jnp.sum(x.astype(jnp.float32) * weight, axis=(1, 2), keepdims=True)
            count = jnp.maximum(jnp.sum(weight, axis=(1, 2), keepdims=True), 1.0)
            pooled = (total / count).astype(x.dtype)
        pooled = _ConvGNReLU(ch, 1, dtype=dt, name="pool")(pooled)
        # Bilinear upsampling of a 1×1 map (any align_corners) is a broadcast.
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], ch)))
        y = _ConvGNReLU(ch, 1, dtype=dt, name="project")(jnp.concatenate(branches, axis=-1), valid)
        return nn.Dropout(ASPP_DROPOUT, deterministic=not train)(y)


class Decoder(nn.Module):
    """DeepLabV3+ decoder: ``(aspp [B, h, w, 256], low [B, h4, w4, C]) -> [B, h4, w4, K]``.

    Submodules ``reduce`` (1×1 48 on the low-level features), ``fuse1``, ``fuse2`` (3×3 256) and
    ``classifier`` (1×1 with bias). Logits come back in the compute dtype.
    """

    num_classes: int
    dtype: Any = jnp.float32
    channels: int = ASPP_CHANNELS
    low_level_channels: int = LOW_LEVEL_CHANNELS

    @nn.compact
    def __call__(
        self, x: jax.Array, low_level: jax.Array, train: bool, valid: jax.Array | None = None
    ) -> jax.Array:
        """``valid`` ``[B, h4, w4]`` (optional): the cells GroupNorm takes its statistics over."""
        dt = self.dtype
        low_level = _ConvGNReLU(self.low_level_channels, 1, dtype=dt, name="reduce")(
            low_level, valid
        )
        x = resize_bilinear(x, low_level.shape[1:3], align_corners=True)
        x = jnp.concatenate([x, low_level], axis=-1)
        for i, rate in enumerate(DECODER_DROPOUTS, start=1):
            x = _ConvGNReLU(self.channels, 3, dtype=dt, name=f"fuse{i}")(x, valid)
            x = nn.Dropout(rate, deterministic=not train)(x)
        return conv(
            self.num_classes,
            1,
            dt,
            "classifier",
            use_bias=True,
            kernel_init=KAIMING_FAN_IN,
            bias_init=_torch_bias_init(self.channels),
        )(x)


def _cells(valid: jax.Array, stride: int, size: tuple[int, int]) -> jax.Array:
    """The cells of a stride-`stride` feature map whose top-left input pixel is valid."""
    return valid[:, ::stride, ::stride][:, : size[0], : size[1]]


class DeepLabV3Plus(nn.Module):
    """``__call__(x [B, H, W, 3], train, valid) -> logits [B, H, W, num_classes]`` (float32).

    Submodules: ``backbone`` (ResNet), ``aspp`` (:class:`ASPP` on layer4) and ``decoder``
    (:class:`Decoder` with layer1). ``atrous_rates=None`` picks :func:`default_atrous_rates`.
    With ``train=True`` dropout needs a ``"dropout"`` rng and, unless ``frozen_bn``, the
    ``batch_stats`` collection must be mutable. ``valid`` (``[B, H, W]`` bool, optional) marks
    each input's image pixels on a padded canvas: the image-pooling mean and every GroupNorm's
    statistics then run over the image's cells only, ``valid[:, ::s, ::s]`` at stride s (an
    image of ``h x w`` pixels at the top-left has ``⌈h/s⌉ x ⌈w/s⌉`` of them, exactly its own
    grid when run alone), so padding does not dilute them. What remains of the padding is
    local: convolutions at the image's border see the canvas instead of zeros.
    """

    backbone: str
    num_classes: int
    output_stride: int = 16
    frozen_bn: bool = False
    dtype: Any = jnp.float32
    atrous_rates: Sequence[int] | None = None
    head_channels: int = ASPP_CHANNELS
    low_level_channels: int = LOW_LEVEL_CHANNELS
    remat: bool = False  # recompute each backbone block in the backward pass

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, valid: jax.Array | None = None
    ) -> jax.Array:
        _check_output_stride(self.output_stride)
        rates = self.atrous_rates or default_atrous_rates(self.output_stride)
        feats = backbone_features(self, x, train)
        deep = low = None
        if valid is not None:  # the image's cells at layer4 (stride os) and layer1 (stride 4)
            deep = _cells(valid, self.output_stride, feats["layer4"].shape[1:3])
            low = _cells(valid, 4, feats["layer1"].shape[1:3])
        y = ASPP(tuple(rates), dtype=self.dtype, channels=self.head_channels, name="aspp")(
            feats["layer4"], train, deep
        )
        y = Decoder(
            self.num_classes,
            dtype=self.dtype,
            channels=self.head_channels,
            low_level_channels=self.low_level_channels,
            name="decoder",
        )(y, feats["layer1"], train, low)
        return resize_bilinear(y.astype(jnp.float32), x.shape[1:3], align_corners=True)


class ASPPV2(nn.Module):
    """DeepLabV2 ASPP: the sum of 3×3 convs (with bias) ``c0..c3`` at ``rates``, float32 out."""

    num_classes: int
    rates: Sequence[int] = V2_ATROUS_RATES
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = None
        for i, rate in enumerate(self.rates):
            y = conv(
                self.num_classes,
                3,
                self.dtype,
                f"c{i}",
                dilation=rate,
                use_bias=True,
                kernel_init=nn.initializers.normal(0.01),
                bias_init=nn.initializers.zeros,
            )(x).astype(jnp.float32)
            out = y if out is None else out + y
        return out


class DeepLabV2(nn.Module):
    """DeepLabV2 (dilated ResNet + ASPP-V2) with deeplab-pytorch's multi-scale inputs (MSC).

    ``__call__(x [B, H, W, 3], train) -> logits [B, h, w, num_classes]`` (float32) at the
    feature stride: ``h = ⌈H / output_stride⌉`` (the ResNet's rounding). Submodules ``backbone``
    and ``aspp`` (:class:`ASPPV2`, convs ``c0..c3`` like deeplab-pytorch's ``aspp.c0..c3``).
    Use ``apply(..., method="msc")`` for training and ``method="predict"`` for inference.
    """

    backbone: str
    num_classes: int
    output_stride: int = 8
    frozen_bn: bool = True
    dtype: Any = jnp.float32
    atrous_rates: Sequence[int] = V2_ATROUS_RATES
    msc_scales: Sequence[float] = MSC_SCALES
    remat: bool = False  # recompute each backbone block in the backward pass

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_output_stride(self.output_stride)
        feats = backbone_features(self, x, train)
        return ASPPV2(self.num_classes, tuple(self.atrous_rates), dtype=self.dtype, name="aspp")(
            feats["layer4"]
        )

    def msc(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        """Multi-scale logits ``(full, *scaled, fused)``, the order of deeplab-pytorch's MSC.

        For ``msc_scales = (0.5, 0.75)`` and input ``[B, H, W, 3]``:

        * ``full``   ``[B, h, w, K]``, ``h = ⌈H / os⌉``: logits of ``x``;
        * ``scaled`` ``[B, ⌈⌊H·s⌋ / os⌉, ⌈⌊W·s⌋ / os⌉, K]`` per scale ``s``: logits of ``x``
          rescaled as ``F.interpolate(x, scale_factor=s, mode="bilinear",
          align_corners=False)`` (:func:`~pnoc_jax.models.resize.rescale_bilinear`);
        * ``fused``  ``[B, h, w, K]``: element-wise max of ``full`` and every ``scaled``
          resized to ``(h, w)`` (bilinear, ``align_corners=False``).

        All float32. deeplab-pytorch trains on the sum of the cross-entropies of all four, each
        against the labels resized (PIL nearest) to that output's size. The backbone (shared
        weights) runs once per scale, so with trainable BatchNorm the statistics are updated
        once per scale too, as in PyTorch.
        """
        full = self(x, train)
        size = full.shape[1:3]
        scaled = [self(rescale_bilinear(x, s, align_corners=False), train) for s in self.msc_scales]
        resized = [resize_bilinear(logits, size, align_corners=False) for logits in scaled]
        fused = jnp.max(jnp.stack([full, *resized]), axis=0)
        return (full, *scaled, fused)

    def predict(self, x: jax.Array, multi_scale: bool = True) -> jax.Array:
        """Inference logits ``[B, H, W, K]`` (float32) at the input size.

        The MSC ``fused`` logits (or the single-scale ones with ``multi_scale=False``) resized
        bilinearly (``align_corners=False``) to ``(H, W)``, like deeplab-pytorch's evaluation.
        Always in inference mode (BN running statistics, no dropout).
        """
        logits = self.msc(x, train=False)[-1] if multi_scale else self(x, train=False)
        return resize_bilinear(logits, x.shape[1:3], align_corners=False)
