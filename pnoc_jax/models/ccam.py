"""C²AM / C²AM-H network: ResNet backbone + the fg/bg "disentangler" (§7, ``core/ccam.py``).

``F = concat(layer4, layer3)`` (channels in that order) at the backbone's output stride, a 3x3
conv without bias to one channel and a BatchNorm give the logit map z; with P = σ(z)::

    fg = Σ_hw P · F / (h·w),    bg = Σ_hw (1 − P) · F / (h·w)

(divided by the number of cells, not by Σ P, as the reference). layer4 and layer3 must have the same
resolution, i.e. output stride 16 or 8. The losses are in :mod:`pnoc_jax.saliency.losses`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pnoc_jax.models.backbones import backbone_features
from pnoc_jax.models.layers import KAIMING_FAN_IN, batch_norm, conv


class CCAM(nn.Module):
    """``__call__(x [B, H, W, 3], train) -> (z [B, h, w], fg [B, C], bg [B, C])``, all float32.

    z are the disentangler's logits (pre-sigmoid) at stride ``output_stride``; C is
    layer4 + layer3 channels (3072 for ResNet-50). Submodules: ``backbone`` (ResNet, BN frozen when
    ``frozen_bn``), ``disentangler_conv`` and ``disentangler_bn``. The disentangler's BatchNorm is
    an ordinary one (batch statistics when training) whatever ``frozen_bn`` says, as in the
    reference, where only the backbone's norm layers are fixed. Outside ``backbone`` the
    parameters fall in the optimizer's head groups (kernel/scale 10×, BN bias 20×; method.md §7).
    """

    backbone: str
    output_stride: int = 16
    frozen_bn: bool = False
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each backbone block in the backward pass

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        if self.output_stride not in (8, 16):
            raise ValueError(
                f"CCAM concatenates layer4 and layer3, which differ in size at output stride "
                f"{self.output_stride}; use 16 or 8"
            )
        feats = backbone_features(self, x, train)
        features = jnp.concatenate([feats["layer4"], feats["layer3"]], axis=-1)
        z = conv(1, 3, self.dtype, "disentangler_conv", kernel_init=KAIMING_FAN_IN)(features)
        z = batch_norm(not train, self.dtype, "disentangler_bn")(z)
        z = z[..., 0].astype(jnp.float32)
        fg, bg = pool_foreground_background(z, features)
        return z, fg, bg


def pool_foreground_background(z: jax.Array, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """fg = Σ_hw σ(z)·F / (h·w), bg = Σ_hw (1 − σ(z))·F / (h·w): [B,h,w], [B,h,w,C] -> 2 × [B,C].

    In float32 at full precision, whatever the features' dtype.
    """
    h, w = z.shape[1:3]
    p = jax.nn.sigmoid(z.astype(jnp.float32))
    f = features.astype(jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    fg = jnp.einsum("bhw,bhwc->bc", p, f, precision=hp) / (h * w)
    bg = jnp.einsum("bhw,bhwc->bc", 1.0 - p, f, precision=hp) / (h * w)
    return fg, bg
