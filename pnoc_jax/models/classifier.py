"""CAM classifier: ResNet backbone + bias-free 1x1 conv head, logits = GAP of the CAMs."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pnoc_jax.models.backbones import backbone_features
from pnoc_jax.models.layers import KAIMING_FAN_IN, conv


class CAMClassifier(nn.Module):
    """Multi-label classifier whose head yields class activation maps.

    ``__call__(x [B,H,W,3], train)`` returns ``(logits [B,C], cams [B,h,w,C])``, both float32.
    ``cams`` are the raw (possibly negative) 1x1-conv outputs on the layer4 features and
    ``logits`` their spatial mean, which equals the conv applied after global average pooling.
    Submodules: ``backbone`` (`pnoc_jax.models.backbones`) and ``classifier``.
    """

    backbone: str
    num_classes: int
    output_stride: int = 16
    frozen_bn: bool = False
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each backbone block in the backward pass

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        feats = backbone_features(self, x, train)
        head = conv(self.num_classes, 1, self.dtype, "classifier", kernel_init=KAIMING_FAN_IN)
        cams = head(feats["layer4"])
        cams = cams.astype(jnp.float32)
        logits = jnp.mean(cams, axis=(1, 2))
        return logits, cams
