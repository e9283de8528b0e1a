"""Bilinear resizing that equals PyTorch's ``F.interpolate(mode="bilinear")`` (NHWC).

``jax.image.resize`` antialiases when it downsamples and has no ``align_corners=True`` mode, so
the DeepLab heads (spec §10, §13.14) use this instead. For each spatial axis with input size
``n`` and output size ``m`` the source coordinate of output index ``i`` is, as in PyTorch::

    align_corners=True     src = i · (n − 1) / (m − 1)              (0 when m == 1)
    align_corners=False    src = max((i + 0.5) · s − 0.5, 0)        s = n / m, or 1 / scale_factor

and the output is ``(1 − λ) · x[⌊src⌋] + λ · x[min(⌊src⌋ + 1, n − 1)]`` with ``λ = src − ⌊src⌋``,
width first, then height. Coordinates and weights are computed on the host (sizes are static)
exactly as PyTorch's CPU kernel computes them (see ``_taps``); interpolation runs in float32 and
the result is cast back to the input dtype (bf16 in, bf16 out). No antialiasing, whatever the
direction.
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
