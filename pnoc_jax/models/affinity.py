"""AffinityNet: IRN's boundary (inter-pixel relation) branch on a frozen ResNet (method.md §9, PE).

The backbone runs in inference mode (BN running statistics) and its five taps are cut from the
gradient, so only the edge layers learn; the optimizer additionally freezes every parameter
under ``backbone`` (`core.optim` ``frozen=("backbone",)``) so weight decay cannot move them.

Each tap (stem after max-pool, layer1..layer4) -> 1x1 conv to 32 (no bias) -> GroupNorm(4) ->
bilinear upsample (half-pixel, PyTorch ``align_corners=False``) by tap stride / 4 -> ReLU; all
are cropped to layer1's size, concatenated (160) and mapped by a 1x1 conv with bias to one
boundary logit per stride-4 cell.

Initialisation as the reference (PE `AffinityNet` calls no init of its own, so PyTorch's
defaults apply): conv kernels U(±1/√fan_in) (`kaiming_uniform_(a=√5)`), the output bias
U(±1/√fan_in), GroupNorm scale 1 and offset 0.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pnoc_jax.models.backbones import FEATURE_NAMES, build_backbone, feature_strides

EDGE_CHANNELS = 32
EDGE_STRIDE = 4  # stride of the edge map (layer1)

# PyTorch's default Conv2d kernel init, kaiming_uniform_(a=√5): U(±1/√fan_in).
TORCH_CONV_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_conv_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Conv2d bias init: U(±1/√fan_in), fan_in of the kernel."""
    bound = 1.0 / fan_in**0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
    """[B, h, w, C] -> [B, h·f, w·f, C], half-pixel bilinear without antialiasing."""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, h * factor, w * factor, c), "bilinear", antialias=False)


class AffinityNet(nn.Module):
    """``__call__(x [B, H, W, 3]) -> edge logits [B, ⌈H/4⌉, ⌈W/4⌉]`` (float32).

    Submodules: ``backbone`` (frozen ResNet) and the edge layers ``edge{1..5}``, ``gn{1..5}``,
    ``edge_out``.
    """

    backbone: str
    output_stride: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # the backbone is always in inference mode; the edge layers have no BN
        feats = build_backbone(
            self.backbone, self.output_stride, frozen_bn=True, dtype=self.dtype, name="backbone"
        )(x, train=False)
        strides = feature_strides(self.output_stride)
        h, w = feats["layer1"].shape[1:3]
        maps = []
        for i, name in enumerate(FEATURE_NAMES, start=1):
            y = jax.lax.stop_gradient(feats[name])
            y = nn.Conv(
                EDGE_CHANNELS,
                (1, 1),
                use_bias=False,
                kernel_init=TORCH_CONV_INIT,
                dtype=self.dtype,
                name=f"edge{i}",
            )(y)
            y = nn.GroupNorm(num_groups=4, epsilon=1e-5, dtype=self.dtype, name=f"gn{i}")(y)
            y = upsample_bilinear(y, strides[name] // EDGE_STRIDE)
            maps.append(nn.relu(y)[:, :h, :w])
        fused = jnp.concatenate(maps, axis=-1)
        edge = nn.Conv(
            1,
            (1, 1),
            use_bias=True,
            kernel_init=TORCH_CONV_INIT,
            bias_init=torch_conv_bias_init(fused.shape[-1]),
            dtype=self.dtype,
            name="edge_out",
        )(fused)
        return edge[..., 0].astype(jnp.float32)
