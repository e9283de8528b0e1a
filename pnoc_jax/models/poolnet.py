"""PoolNet (Liu et al., CVPR 2019), ResNet-50 "locate" variant: a fully supervised saliency net.

Structure (the authors' ``networks/poolnet.py`` with ``config_resnet`` and
``networks/deeplab_resnet.py::ResNet_locate``, as used by P-NOC; method.md §7)::

    taps    conv1 (stem before max-pool, stride 2), layer1 (4), layer2 (8), layer3 (16), layer4 (16)
    convert 1x1 conv (no bias) + ReLU per tap -> 128, 256, 256, 512, 512 channels
    GGM     (pyramid-pooling global guidance, on layer4)
            p = ppms_pre(layer4)                      1x1 conv 2048 -> 512, no ReLU
            g = ReLU(ppm_cat([p, up(ReLU(conv(apool_k(p)))) for k in 1, 3, 5]))   3x3, 2048 -> 512
            info_k = ReLU(conv3x3(up(g, size of layer3, layer2, layer1, conv1)))  512, 256, 256, 128
    FAM     (feature aggregation, "DeepPool", five of them, coarse to fine)
            r = ReLU(x + Σ_{s in 2,4,8} up(conv3x3(avgpool_s(x))))        avgpool s×s, stride s
            r = up(r, size of the next tap)                                 levels 1-3 only
            r = conv_sum(r)                                                 3x3 to k_out
            r = conv_sum_c(r + tap + info)                                  levels 0-3 only
            level 0 starts from the converted layer4 and fuses layer3 (same size), level k = 1..3
            fuses layer2, layer1, conv1, level 4 only refines
    score   1x1 conv with bias 128 -> 1, up to the input size

Every ``up`` is bilinear with ``align_corners=True`` (as in the original code), the adaptive pools
follow PyTorch's ``AdaptiveAvgPool2d`` windows, and all head convolutions but the score are
bias-free.

Backbone: the torchvision-structured ResNet of :mod:`pnoc_jax.models.resnet` (same module tree and
parameter names, so ImageNet weights converted by :mod:`pnoc_jax.models.convert` load unchanged) at
output stride 16, instead of the caffe-style ResNet-50 of the original (``resnet50_caffe.pth``),
which the spec allows. Differences to the original backbone: the stride sits in the 3x3 conv, not
the first 1x1 (torchvision v1.5); the stem max-pool floors instead of ``ceil_mode=True`` (so maps
are one cell smaller for some sizes); the first layer4 block uses dilation 1, the others 2
(torchvision ``replace_stride_with_dilation``; caffe-locate dilates all three); and the inputs are
those of torchvision weights (RGB, ImageNet mean/std), not caffe's BGR minus mean. BatchNorm is in
inference mode by default (``frozen_bn``; the original trains with ``net.eval()`` and BN
parameters excluded from the optimizer: freeze them with ``core.optim`` ``frozen=("bn",)``).

The average pools of the FAMs need the stride-16 maps to be at least 8 cells on each side (input
≥ 113 px); PyTorch raises an error below that, and so does :class:`PoolNet`. The original test
script upsamples images of at most 100 px by 2 before the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pnoc_jax.models.backbones import build_backbone
from pnoc_jax.models.layers import conv
from pnoc_jax.models.resize import resize_bilinear

OUTPUT_STRIDE = 16  # level 0 of the FAMs fuses layer4 with layer3 without resizing
TAPS = ("conv1", "layer1", "layer2", "layer3", "layer4")
CONVERT_CHANNELS = (128, 256, 256, 512, 512)  # per tap, in TAPS order
GGM_CHANNELS = 512
GGM_POOL_SIZES = (1, 3, 5)
INFO_CHANNELS = (512, 256, 256, 128)  # guidance for FAM levels 0..3 (layer3, layer2, layer1, conv1)
FAM_POOL_SIZES = (2, 4, 8)
# (k_out, resize to the next tap, fuse with tap + guidance) per FAM level, coarse to fine.
FAM_LEVELS = ((512, False, True), (256, True, True), (256, True, True), (128, True, True))
FAM_LAST = (128, False, False)

# The original initialises every head conv with N(0, 0.01) and biases with 0 (``weights_init``).
_head_init = nn.initializers.normal(0.01)


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if np.ndim(size) == 0:
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] averaging weights over PyTorch's windows [⌊i·n/o⌋, ⌈(i+1)·n/o⌉)."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, size: int | Sequence[int]) -> jax.Array:
    """PyTorch ``AdaptiveAvgPool2d(size)`` on [B, H, W, C] -> [B, h, w, C].

    Output cell (i, j) averages rows ⌊i·H/h⌋ .. ⌈(i+1)·H/h⌉ − 1 and the columns likewise
    (windows overlap when h does not divide H). Computed in float32 at full precision; the
    result has the input's dtype.
    """
    h, w = _size2(size)
    mh = jnp.asarray(_adaptive_pool_matrix(x.shape[1], h))
    mw = jnp.asarray(_adaptive_pool_matrix(x.shape[2], w))
    y = jnp.einsum(
        "ih,bhwc,jw->bijc", mh, x.astype(jnp.float32), mw, precision=jax.lax.Precision.HIGHEST
    )
    return y.astype(x.dtype)


def _head_conv(features: int, kernel: int, dtype: Any, name: str, bias: bool = False) -> nn.Conv:
    return conv(features, kernel, dtype, name, use_bias=bias, kernel_init=_head_init)


class FeatureAggregation(nn.Module):
    """PoolNet's FAM ("DeepPoolLayer"): multi-scale average pooling, then optional resize + fuse.

    ``__call__(x, tap=None, info=None)``: r = ReLU(x + Σ_s up(conv_s(avgpool_s(x)))); resized to
    ``tap``'s size when ``resize``; r = conv_sum(r); then conv_sum_c(r + tap + info) when ``fuse``.
    """

    features: int
    resize: bool
    fuse: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, tap: jax.Array | None = None, info: jax.Array | None = None
    ) -> jax.Array:
        size = x.shape[1:3]
        if min(size) < max(FAM_POOL_SIZES):
            raise ValueError(
                f"PoolNet's {max(FAM_POOL_SIZES)}x{max(FAM_POOL_SIZES)} average pool needs maps of "
                f"at least that size, got {tuple(size)} (input too small: use >= 113 px)"
            )
        out = x
        for i, s in enumerate(FAM_POOL_SIZES):
            y = nn.avg_pool(x, (s, s), strides=(s, s), padding="VALID")
            y = _head_conv(x.shape[-1], 3, self.dtype, f"convs_{i}")(y)
            out = out + resize_bilinear(y, size, align_corners=True)
        out = nn.relu(out)
        if self.resize:
            out = resize_bilinear(out, tap.shape[1:3], align_corners=True)
        out = _head_conv(self.features, 3, self.dtype, "conv_sum")(out)
        if self.fuse:
            out = _head_conv(self.features, 3, self.dtype, "conv_sum_c")(out + tap + info)
        return out


class PoolNet(nn.Module):
    """``__call__(x [B, H, W, 3], train) -> saliency logits [B, H, W]`` (float32, pre-sigmoid).

    Submodules: ``backbone`` (a torchvision-structured ResNet at output stride 16, whose
    ``conv1`` feature is the stem before its max-pool), ``convert_{0..4}`` (per tap
    in ``TAPS`` order), the global guidance ``ppms_pre``, ``ppms_{0..2}``, ``ppm_cat``,
    ``infos_{0..3}``, the FAMs ``deep_pool_{0..4}`` and ``score``. See the module docstring.
    """

    backbone: str = "resnet50"
    frozen_bn: bool = True
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each backbone block in the backward pass
    # Every head width (128...512 channels) divided by this; 1 is PoolNet. The synthetic recipe
    # uses 8 (16...64 channels): the head then costs a 64th of its full-width FLOPs.
    head_divisor: int = 1

    def _width(self, channels: int) -> int:
        if self.head_divisor < 1 or channels % self.head_divisor:
            raise ValueError(
                f"head_divisor={self.head_divisor} must divide PoolNet's head widths (128...512)"
            )
        return channels // self.head_divisor

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dt = self.dtype
        feats = build_backbone(
            self.backbone, OUTPUT_STRIDE, self.frozen_bn, dt, remat=self.remat, name="backbone"
        )(x, train=train)
        taps = [feats[name] for name in TAPS]

        # Global guidance module: pyramid pooling on layer4, then one guidance map per level.
        ggm = self._width(GGM_CHANNELS)
        p = _head_conv(ggm, 1, dt, "ppms_pre")(taps[-1])
        pyramid = [p]
        for k, s in enumerate(GGM_POOL_SIZES):
            y = nn.relu(_head_conv(ggm, 1, dt, f"ppms_{k}")(adaptive_avg_pool(p, s)))
            pyramid.append(resize_bilinear(y, p.shape[1:3], align_corners=True))
        g = nn.relu(_head_conv(ggm, 3, dt, "ppm_cat")(jnp.concatenate(pyramid, -1)))
        infos = []
        for k, channels in enumerate(INFO_CHANNELS):
            target = taps[len(INFO_CHANNELS) - 1 - k]  # layer3, layer2, layer1, conv1
            y = resize_bilinear(g, target.shape[1:3], align_corners=True)
            infos.append(nn.relu(_head_conv(self._width(channels), 3, dt, f"infos_{k}")(y)))

        converted = [
            nn.relu(_head_conv(self._width(channels), 1, dt, f"convert_{i}")(tap))
            for i, (tap, channels) in enumerate(zip(taps, CONVERT_CHANNELS, strict=True))
        ][::-1]  # layer4, layer3, layer2, layer1, conv1

        merge = converted[0]
        for k, (features, resize, fuse) in enumerate(FAM_LEVELS):
            fam = FeatureAggregation(self._width(features), resize, fuse, dt, name=f"deep_pool_{k}")
            merge = fam(merge, converted[k + 1], infos[k])
        features, resize, fuse = FAM_LAST
        last = len(FAM_LEVELS)
        fam = FeatureAggregation(self._width(features), resize, fuse, dt, name=f"deep_pool_{last}")
        merge = fam(merge)
        score = _head_conv(1, 1, dt, "score", bias=True)(merge)
        score = resize_bilinear(score, x.shape[1:3], align_corners=True)
        return score[..., 0].astype(jnp.float32)
