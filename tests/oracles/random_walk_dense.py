"""The random walk as IRN writes it, densely: the oracle of `affinity.random_walk`'s sparse one."""

import numpy as np

from pnoc_jax.affinity.paths import PathIndex


def random_walk_dense(
    cams: np.ndarray,
    edge: np.ndarray,
    beta: float = 10,
    exp_times: int = 8,
    radius: int = 5,
) -> np.ndarray:
    """Literal dense IRN formulation: O(N²) memory, O(exp_times · N³) time.

    Pads edge with 1.0 (left R, right R, bottom R), builds the dense affinity of the padded grid
    from IRN's (src, dst) pairs, crops the padding, takes A^β, column-normalises, squares
    ``exp_times`` times and returns x · T as float32 (K, h, w).
    """
    cams, edge = np.asarray(cams), np.asarray(edge)
    assert cams.ndim == 3 and cams.shape[1:] == edge.shape
    k, h, w = cams.shape
    r = radius
    padded = np.pad(edge.astype(np.float64), ((0, r), (r, r)), constant_values=1.0)
    hp, wp = padded.shape
    index = PathIndex(r)
    src, dst = index.pairs(hp, wp)
    flat = padded.ravel()
    aff = np.stack([1.0 - flat[p].max(axis=0) for p in index.path_indices(hp, wp)])
    n_pad = hp * wp
    dense = np.eye(n_pad)
    dense[np.broadcast_to(src, dst.shape), dst] = aff
    dense[dst, np.broadcast_to(src, dst.shape)] = aff
    dense = dense.reshape(hp, wp, hp, wp)[:h, r : r + w, :h, r : r + w].reshape(h * w, h * w)
    t = dense**beta
    t /= t.sum(axis=0, keepdims=True)
    for _ in range(exp_times):
        t = t @ t
    x = (cams * (1.0 - edge)).reshape(k, h * w).astype(np.float64)
    return (x @ t).reshape(k, h, w).astype(np.float32)
