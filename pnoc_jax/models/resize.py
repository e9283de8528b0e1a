"""Resizing that equals PyTorch's `F.interpolate` (NHWC): bilinear (both `align_corners`) and
bicubic (a = −0.75).

`jax.image.resize` antialiases when it downsamples, has no `align_corners=True` mode and uses
the Keys cubic with a = −0.5, so the DeepLab heads (method.md §10), PoolNet and the C²AM-H hint maps
(448 → 28, §7) use these instead (§13.14). Source coordinates and weights are computed
on the host (sizes are static) exactly as PyTorch's CPU kernels compute them; interpolation runs
in float32 and the result is cast back to the input dtype.

Bilinear, per spatial axis with input size ``n`` and output size ``m``::

    align_corners=True     src = i · (n − 1) / (m − 1)              (0 when m == 1)
    align_corners=False    src = max((i + 0.5) · s − 0.5, 0)        s = n / m, or 1 / scale_factor

and the output is ``(1 − λ) · x[⌊src⌋] + λ · x[min(⌊src⌋ + 1, n − 1)]`` with ``λ = src − ⌊src⌋``,
width first, then height (see ``_taps``).

Bicubic, per axis, for output index ``d`` of an input of length ``n`` resized to ``m``::

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


def _taps(
    in_size: int, out_size: int, align_corners: bool, scale_factor: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, upper weight λ) of every output position along one axis."""
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        step = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else 0.0
        src = np.float32(step) * dst
    else:
        if scale_factor is not None and scale_factor > 0:
            step = np.float32(1.0 / scale_factor)
        else:
            step = np.float32(in_size) / np.float32(out_size)
        # PyTorch's CPU build contracts this to one fused multiply-add; the float64 product of
        # two float32 numbers is exact, so rounding once to float32 reproduces it.
        src = (np.float64(step) * (dst.astype(np.float64) + 0.5) - 0.5).astype(np.float32)
        src = np.maximum(src, np.float32(0.0))
    lower = src.astype(np.int32)  # floor: src >= 0
    upper = np.minimum(lower + 1, in_size - 1).astype(np.int32)
    lam = np.clip(src - lower, 0.0, 1.0).astype(np.float32)
    return lower, upper, lam


def _interpolate_axis(
    x: jax.Array, axis: int, size: int, align_corners: bool, scale_factor: float | None
) -> jax.Array:
    in_size = x.shape[axis]
    if size == in_size:
        return x  # PyTorch's identity case, even when a scale_factor is given
    lower, upper, lam = _taps(in_size, size, align_corners, scale_factor)
    shape = [1] * x.ndim
    shape[axis] = size
    lam = jnp.asarray(lam.reshape(shape))
    a = jnp.take(x, jnp.asarray(lower), axis=axis)
    b = jnp.take(x, jnp.asarray(upper), axis=axis)
    return a * (1.0 - lam) + b * lam


def resize_bilinear(
    x: jax.Array,
    size: Sequence[int],
    align_corners: bool,
    *,
    scale_factor: float | None = None,
) -> jax.Array:
    """``[B, H, W, C] -> [B, size[0], size[1], C]``, PyTorch bilinear semantics (module docstring).

    ``scale_factor`` only changes the ``align_corners=False`` coordinate map to ``1/scale_factor``
    (what PyTorch does when it is given ``scale_factor`` rather than ``size``); prefer
    :func:`rescale_bilinear` for that case.
    """
    if x.ndim != 4:
        raise ValueError(f"expected [B, H, W, C], got shape {x.shape}")
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output size must be positive, got {tuple(size)}")
    dtype = x.dtype
    y = x.astype(jnp.float32)
    y = _interpolate_axis(y, 2, out_w, align_corners, scale_factor)
    y = _interpolate_axis(y, 1, out_h, align_corners, scale_factor)
    return y.astype(dtype)


def rescaled_size(size: Sequence[int], scale_factor: float) -> tuple[int, int]:
    """PyTorch's output size for ``scale_factor``: ``⌊n · s⌋`` per axis (in float64)."""
    return tuple(int(np.floor(float(n) * scale_factor)) for n in size)  # type: ignore[return-value]


def rescale_bilinear(x: jax.Array, scale_factor: float, align_corners: bool = False) -> jax.Array:
    """``F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=...)`` in NHWC.

    Output size ``⌊H·s⌋ × ⌊W·s⌋``; with ``align_corners=False`` the sampling step is exactly
    ``1/s`` (not ``H / ⌊H·s⌋``), as in PyTorch without ``recompute_scale_factor``.
    """
    size = rescaled_size(x.shape[1:3], scale_factor)
    return resize_bilinear(x, size, align_corners, scale_factor=scale_factor)


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
