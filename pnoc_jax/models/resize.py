"""PyTorch-exact bicubic resizing (``F.interpolate(mode="bicubic", align_corners=False)``).

``jax.image.resize(method="cubic")`` differs from PyTorch in three ways, each of which matters for
the C²AM-H hint maps (448 → 28, spec §7 and §13.14): it uses the Keys kernel with a = −0.5 (PyTorch
a = −0.75), it antialiases when downsampling (PyTorch does not), and it renormalises the kernel at
the border (PyTorch clamps the tap indices, i.e. repeats the edge pixel).

PyTorch's rule, per axis, for output index ``d`` of an input of length ``n`` resized to ``m``::

    scale = n / m                     (the sizes' ratio; no user scale factor)
    s     = scale · (d + 0.5) − 0.5   (half-pixel source coordinate, NOT clamped at 0)
    i     = floor(s), t = s − i
    out   = Σ_{k=−1..2} w_k(t) · x[clip(i + k, 0, n − 1)]
    w_{−1} = c2(t + 1), w_0 = c1(t), w_1 = c1(1 − t), w_2 = c2(2 − t)
    c1(u) = ((a + 2) u − (a + 3)) u² + 1          for |u| ≤ 1
    c2(u) = ((a u − 5a) u + 8a) u − 4a            for 1 < |u| < 2,   a = −0.75

The 2-D resize is this 1-D rule along the width, then along the height (the order of PyTorch's
kernel). Values can overshoot the input range, as in PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

CUBIC_A = -0.75  # PyTorch's bicubic coefficient (JAX / Keys: -0.5)


def _cubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices [4, n_out] (clamped) and weights [4, n_out] of PyTorch's 1-D bicubic rule.

    Computed in float32 like PyTorch's CPU/CUDA kernels for float inputs.
    """
    a = np.float32(CUBIC_A)
    scale = np.float32(n_in) / np.float32(n_out)
    s = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    i = np.floor(s)
    t = (s - i).astype(np.float32)

    def c1(u):
        return ((a + 2) * u - (a + 3)) * u * u + 1

    def c2(u):
        return ((a * u - 5 * a) * u + 8 * a) * u - 4 * a

    weights = np.stack([c2(t + 1), c1(t), c1(1 - t), c2(2 - t)]).astype(np.float32)
    idx = i.astype(np.int64)[None, :] + np.arange(-1, 3)[:, None]
    return np.clip(idx, 0, n_in - 1).astype(np.int32), weights


def _resize_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
    idx, weights = _cubic_taps(x.shape[axis], n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    out = 0.0
    for k in range(4):
        w = jnp.asarray(weights[k]).reshape(shape)
        out = out + w * jnp.take(x, jnp.asarray(idx[k]), axis=axis)
    return out


def resize_bicubic(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Resize ``x`` [B, H, W] or [B, H, W, C] to ``size`` = (h, w) like PyTorch's bicubic.

    Equals ``F.interpolate(x_nchw, size, mode="bicubic", align_corners=False)`` (a = −0.75,
    clamped border taps, no antialiasing) for up- and down-sampling; see the module docstring.
    Computed in float32; the result has the input's (floating) dtype.
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"expected [B, H, W] or [B, H, W, C], got shape {x.shape}")
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"output size must be positive, got {tuple(size)}")
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    y = x.astype(jnp.float32)
    if y.shape[2] != width:
        y = _resize_axis(y, 2, width)
    if y.shape[1] != height:
        y = _resize_axis(y, 1, height)
    return y.astype(dtype)
