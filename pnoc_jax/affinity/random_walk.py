"""IRN random walk on boundary-derived affinities (method.md §9), sparse NumPy/SciPy.

The reference builds a dense N×N affinity matrix (N = h·w at stride 4), raises it to β,
column-normalises it into T and squares T ``exp_times`` times, then computes ``x · T^(2^e)``.
Here the same product is evaluated as 2^e sparse matrix products with the K score vectors, never
materialising an N×N array: O(2^e · nnz · K) time and O(nnz) memory (nnz ≈ 69 N for R = 5).

No jax import: runs in CPU workers.
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse as sp

from pnoc_jax.affinity.paths import direction_path, search_directions
from pnoc_jax.postprocess.crf import dense_crf_labels

__all__ = [
    "boundary_to_affinity",
    "pseudo_label_from_rw",
    "random_walk",
    "rw_to_image",
    "transition_matrix",
]


def _check_edge(edge: np.ndarray) -> np.ndarray:
    edge = np.asarray(edge)
    if edge.ndim != 2:
        raise ValueError(f"edge must be a (h, w) boundary probability map, got shape {edge.shape}")
    if not np.issubdtype(edge.dtype, np.floating):
        raise TypeError(
            f"edge must be a float array (sigmoid of boundary logits), got {edge.dtype}"
        )
    if not np.all(np.isfinite(edge)) or edge.min() < 0 or edge.max() > 1:
        raise ValueError("edge must contain finite values in [0, 1]")
    return edge


def _check_cams(cams: np.ndarray, hw: tuple[int, int], name: str = "cams") -> np.ndarray:
    cams = np.asarray(cams)
    if cams.ndim != 3 or cams.shape[1:] != hw:
        raise ValueError(f"{name} must have shape (K, {hw[0]}, {hw[1]}), got {cams.shape}")
    if not np.issubdtype(cams.dtype, np.floating):
        raise TypeError(f"{name} must be a float array, got dtype {cams.dtype}")
    if not np.all(np.isfinite(cams)):
        raise ValueError(f"{name} contains NaN or inf")
    return cams


def _pair_affinities(edge: np.ndarray, radius: int):
    """Yield (flat offset, src, dst, aff) per direction, for the pairs inside the grid.

    Equivalent to IRN's padded layout (edge padded with 1.0 left/right/bottom by R, then
    cropped): a pair with both ends inside the grid has its whole path inside the grid.
    """
    h, w = edge.shape
    grid = np.arange(h * w, dtype=np.int64).reshape(h, w)
    for dy, dx in search_directions(radius):
        dy, dx = int(dy), int(dx)
        x0, x1 = max(0, -dx), w - max(0, dx)
        rows = h - dy
        if rows <= 0 or x1 <= x0:
            continue
        path_max = None
        for py, px in direction_path(dy, dx):
            sl = edge[py : py + rows, x0 + px : x1 + px]
            path_max = sl.copy() if path_max is None else np.maximum(path_max, sl)
        yield (
            dy * w + dx,
            grid[:rows, x0:x1].ravel(),
            grid[dy : dy + rows, x0 + dx : x1 + dx].ravel(),
            1.0 - path_max.ravel(),
        )


def boundary_to_affinity(edge: np.ndarray, radius: int = 5) -> sp.csr_matrix:
    """Sparse symmetric (N, N) float64 CSR affinity, N = h·w, from a boundary map.

    edge: (h, w) in [0, 1]. aff(src, dst) = 1 − max of edge over the IRN path between them, for
    all pairs within ``radius`` (both orders), plus self-affinity 1 on the diagonal.
    """
    edge = _check_edge(edge).astype(np.float64)
    n = edge.size
    srcs, dsts, affs = [np.arange(n)], [np.arange(n)], [np.ones(n)]
    for _, src, dst, aff in _pair_affinities(edge, radius):
        srcs += [src, dst]
        dsts += [dst, src]
        affs += [aff, aff]
    coo = sp.coo_matrix(
        (np.concatenate(affs), (np.concatenate(srcs), np.concatenate(dsts))), shape=(n, n)
    )
    return coo.tocsr()


def transition_matrix(aff: sp.spmatrix, beta: float = 10) -> sp.csr_matrix:
    """Column-normalised A^β (element-wise power) as CSR: every column sums to 1."""
    a = sp.csr_matrix(aff, dtype=np.float64, copy=True)
    a.data **= beta
    col_sum = np.asarray(a.sum(axis=0)).ravel()
    if np.any(col_sum <= 0):
        raise ValueError("affinity has an all-zero column; self-affinity must be positive")
    return (a @ sp.diags(1.0 / col_sum)).tocsr()


def _check_walk_args(
    cams: np.ndarray, edge: np.ndarray, beta: float, exp_times: int
) -> tuple[np.ndarray, np.ndarray]:
    edge = _check_edge(edge)
    cams = _check_cams(cams, edge.shape)
    if isinstance(exp_times, bool) or not isinstance(exp_times, int | np.integer):
        raise TypeError(f"exp_times must be an int, got {type(exp_times)}")
    if exp_times < 0:
        raise ValueError(f"exp_times must be >= 0, got {exp_times}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return cams, edge


def _walk_operator(edge: np.ndarray, radius: int, beta: float) -> sp.spmatrix:
    """Tᵀ = D⁻¹ A^β (row-normalised; A symmetric so D = column sums), float64.

    Stored as DIA: A is a 2-D stencil, so each direction is one diagonal of flat offset
    dy·w + dx, and the DIA product streams contiguous memory (about 2× faster than CSR).
    Falls back to CSR when the grid is too narrow for the offsets to be distinct.
    """
    h, w = edge.shape
    n = h * w
    pairs = list(_pair_affinities(edge.astype(np.float64), radius))
    powered = [aff**beta for _, _, _, aff in pairs]
    row_sum = np.ones(n)
    for (_, src, dst, _), a in zip(pairs, powered):
        row_sum += np.bincount(src, a, minlength=n) + np.bincount(dst, a, minlength=n)
    inv = 1.0 / row_sum
    if w <= 2 * (radius - 1):
        rows = np.concatenate([np.arange(n)] + [p[1] for p in pairs] + [p[2] for p in pairs])
        cols = np.concatenate([np.arange(n)] + [p[2] for p in pairs] + [p[1] for p in pairs])
        vals = np.concatenate([np.ones(n), *powered, *powered])
        return sp.csr_matrix((vals * inv[rows], (rows, cols)), shape=(n, n))
    # scipy DIA: A[i, i + off] is stored at data[k, i + off] (column index).
    offsets = [0]
    data = [inv.copy()]
    for (off, src, dst, _), a in zip(pairs, powered):
        upper = np.zeros(n)
        upper[dst] = a * inv[src]  # A[src, dst], offset +off
        lower = np.zeros(n)
        lower[src] = a * inv[dst]  # A[dst, src], offset -off
        offsets += [off, -off]
        data += [upper, lower]
    return sp.dia_matrix((np.stack(data), np.array(offsets)), shape=(n, n))


def random_walk(
    cams: np.ndarray,
    edge: np.ndarray,
    beta: float = 10,
    exp_times: int = 8,
    radius: int = 5,
) -> np.ndarray:
    """Random-walk propagation of CAMs, ``x · T^(2^exp_times)``, computed sparsely.

    cams: (K, h, w) foreground CAMs at stride 4; edge: (h, w) boundary probabilities.
    x = cams · (1 − edge). Returns float32 (K, h, w). Equals the literal dense formulation
    (float64 arithmetic; `tests/oracles/random_walk_dense.py`) without the N×N matrix:
    T = A D⁻¹ with A symmetric, so x·T = (D⁻¹ A xᵀ)ᵀ, applied 2^exp_times times to each class
    vector.
    """
    cams, edge = _check_walk_args(cams, edge, beta, exp_times)
    k, h, w = cams.shape
    step = _walk_operator(edge, radius, beta)
    x = (cams * (1.0 - edge)).reshape(k, h * w).astype(np.float64)
    out = np.empty((k, h, w), dtype=np.float32)
    for c in range(k):  # single vectors: DIA/CSR mat-vec kernels beat the multi-vector ones
        y = x[c]
        for _ in range(2**exp_times):
            y = step @ y
        out[c] = y.reshape(h, w)
    return out


def rw_to_image(rw: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Upsample RW scores to the image: bilinear ×4 (half-pixel, like PyTorch
    align_corners=False), crop to (H, W), divide by the global max over classes + 1e-5.

    rw: (K, h, w) with 4h >= H and 4w >= W. Returns float32 (K, H, W).
    """
    rw = np.asarray(rw, dtype=np.float32)
    if rw.ndim != 3:
        raise ValueError(f"rw must have shape (K, h, w), got {rw.shape}")
    k, h, w = rw.shape
    H, W = image_hw
    if 4 * h < H or 4 * w < W:
        raise ValueError(f"rw of size {h}x{w} at stride 4 does not cover image {H}x{W}")
    up = np.empty((k, H, W), dtype=np.float32)
    for c in range(k):
        up[c] = cv2.resize(rw[c], (4 * w, 4 * h), interpolation=cv2.INTER_LINEAR)[:H, :W]
    if k:
        up /= up.max() + 1e-5
    return up


def pseudo_label_from_rw(
    rw_hr: np.ndarray,
    keys: np.ndarray,
    image: np.ndarray,
    bg_threshold: float = 0.3,
    crf_iterations: int = 1,
    crf_gt_prob: float = 0.9,
) -> np.ndarray:
    """Pseudo mask from full-resolution RW scores (``make_pseudo_labels.py``).

    rw_hr: (K, H, W) from `rw_to_image`; keys: (K+1,) ints [0, c1+1, ...]; image uint8 (H, W, 3).
    argmax([t_bg, rw]) → dense CRF on labels (n_labels = K+1) → keys. Returns uint8 (H, W) in
    0..C with no ignore pixels; an image without classes (K = 0) is all background.
    """
    keys = np.asarray(keys)
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    rw_hr = _check_cams(rw_hr, image.shape[:2], "rw_hr")
    k = rw_hr.shape[0]
    if keys.ndim != 1 or keys.size != k + 1 or not np.issubdtype(keys.dtype, np.integer):
        raise ValueError(f"keys must be an int array of length K+1={k + 1}, got {keys!r}")
    if keys[0] != 0 or keys.min() < 0 or keys.max() > 255:
        raise ValueError(f"keys must start with 0 (background) and lie in 0..255, got {keys}")
    if k == 0:
        return np.zeros(image.shape[:2], dtype=np.uint8)
    scores = np.concatenate([np.full((1, *rw_hr.shape[1:]), bg_threshold, rw_hr.dtype), rw_hr])
    labels = scores.argmax(axis=0)
    q = dense_crf_labels(image, labels, k + 1, gt_prob=crf_gt_prob, iterations=crf_iterations)
    return keys.astype(np.uint8)[q.argmax(axis=0)]
