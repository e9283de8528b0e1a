"""IRN paths and the sparse random walk (vs the literal dense formulation)."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from pnoc_jax.affinity.paths import PathIndex, direction_path, grid_pairs, search_directions
from pnoc_jax.affinity.random_walk import (
    boundary_to_affinity,
    pseudo_label_from_rw,
    random_walk,
    rw_to_image,
    transition_matrix,
)
from pnoc_jax.cpu_benchmark import synthetic_cams, synthetic_photo
from tests.oracles.random_walk_dense import random_walk_dense

# ---------------------------------------------------------------------------------------------
# Paths


def test_search_directions_radius_5():
    dirs = search_directions(5)
    assert dirs.shape == (34, 2)  # 4 + 9 + 9 + 7 + 5
    assert dirs[:4].tolist() == [[0, 1], [0, 2], [0, 3], [0, 4]]
    assert dirs[4].tolist() == [1, -4]
    # With their opposites, the directions are exactly the nonzero offsets of the open disc.
    both = {tuple(d) for d in dirs} | {(-a, -b) for a, b in dirs}
    disc = {(y, x) for y in range(-4, 5) for x in range(-4, 5) if 0 < x * x + y * y < 25}
    assert both == disc and len(both) == 2 * len(dirs)


def test_search_directions_radius_10_count():
    # Training radius: half of the nonzero lattice points of the open disc of radius 10.
    disc = sum(1 for y in range(-9, 10) for x in range(-9, 10) if 0 < x * x + y * y < 100)
    assert len(search_directions(10)) == disc // 2


@pytest.mark.parametrize(
    ("direction", "path"),
    [
        ((0, 1), [(0, 1), (0, 0)]),
        ((0, 3), [(0, 3), (0, 2), (0, 1), (0, 0)]),
        ((1, 1), [(1, 1), (0, 1), (1, 0), (0, 0)]),
        ((1, -1), [(1, -1), (0, -1), (1, 0), (0, 0)]),
        ((2, 1), [(2, 1), (1, 1), (2, 0), (0, 1), (1, 0), (0, 0)]),
        ((3, 0), [(3, 0), (2, 0), (1, 0), (0, 0)]),
        # (x - 4y)² < 17 holds on the whole 2×5 box; equal |y| + |x| keeps row-major order.
        ((1, 4), [(1, 4), (0, 4), (1, 3), (0, 3), (1, 2), (0, 2), (1, 1), (0, 1), (1, 0), (0, 0)]),
    ],
)
def test_direction_paths(direction, path):
    assert [tuple(p) for p in direction_path(*direction).tolist()] == path


def test_grid_pairs_layout():
    h, w, r = 9, 12, 3
    src, dst = grid_pairs(h, w, r)
    dirs = search_directions(r)
    assert src.shape == ((h - r + 1) * (w - 2 * r + 2),)
    assert dst.shape == (len(dirs), src.size)
    sy, sx = np.divmod(src, w)
    assert sy.min() == 0 and sy.max() == h - r and sx.min() == r - 1 and sx.max() == w - r
    dy, dx = np.divmod(dst, w)
    np.testing.assert_array_equal(dy - sy, np.broadcast_to(dirs[:, :1], dy.shape))
    np.testing.assert_array_equal(dx - sx, np.broadcast_to(dirs[:, 1:], dx.shape))
    index = PathIndex(r)
    for d, paths in enumerate(index.path_indices(h, w)):
        np.testing.assert_array_equal(paths[0], dst[d])
        np.testing.assert_array_equal(paths[-1], src)
    groups = index.grouped_path_indices(h, w)
    assert sorted(np.concatenate([ids for ids, _ in groups]).tolist()) == list(range(len(dirs)))


def test_grid_too_small_or_bad_radius():
    with pytest.raises(ValueError, match="too small for radius"):
        grid_pairs(4, 20, 5)
    with pytest.raises(ValueError, match="radius must be >= 2"):
        search_directions(1)


# ---------------------------------------------------------------------------------------------
# Affinities and the walk


def test_affinity_is_one_minus_path_max():
    edge = np.zeros((6, 8))
    edge[:, 3] = 0.8  # a vertical wall
    a = boundary_to_affinity(edge, radius=3).toarray()
    idx = lambda y, x: y * 8 + x
    assert a[idx(2, 1), idx(2, 2)] == 1.0  # same side
    assert a[idx(2, 2), idx(2, 4)] == pytest.approx(0.2)  # crosses the wall
    assert a[idx(2, 4), idx(2, 2)] == pytest.approx(0.2)  # symmetric
    assert a[idx(2, 2), idx(3, 3)] == pytest.approx(0.2)  # ends on the wall
    assert a[idx(0, 0), idx(0, 5)] == 0.0  # beyond the radius
    np.testing.assert_array_equal(np.diag(a), 1.0)
    np.testing.assert_array_equal(a, a.T)


def test_transition_matrix_columns_sum_to_one():
    edge = np.random.default_rng(0).random((10, 11))
    t = transition_matrix(boundary_to_affinity(edge, radius=5), beta=10)
    np.testing.assert_allclose(np.asarray(t.sum(axis=0)).ravel(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("exp_times", [3, 5, 8])
@pytest.mark.parametrize(("h", "w", "radius"), [(12, 14, 5), (11, 8, 5), (9, 13, 3)])
def test_sparse_walk_matches_dense(h, w, radius, exp_times):
    rng = np.random.default_rng(h * w + exp_times)
    edge = rng.random((h, w)) ** 2
    cams = rng.random((2, h, w))
    sparse = random_walk(cams, edge, beta=10, exp_times=exp_times, radius=radius)
    dense = random_walk_dense(cams, edge, beta=10, exp_times=exp_times, radius=radius)
    np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-5 * np.abs(dense).max())


def test_walk_averages_and_respects_edges():
    # Columns of T sum to 1, so x·T averages x: a constant stays constant.
    h, w = 16, 16
    flat = random_walk(np.full((1, h, w), 0.5), np.zeros((h, w)), exp_times=6)
    np.testing.assert_allclose(flat, 0.5, rtol=1e-6)
    # A closed wall of edge 1 blocks the propagation; scores spread over their own side.
    edge = np.zeros((h, w))
    edge[:, 8] = 1.0
    cams = np.zeros((1, h, w))
    cams[0, 4:12, 2:5] = 1.0
    rw = random_walk(cams, edge, exp_times=6)
    assert rw[0, :, 8:].max() == 0.0
    assert rw[0, :, :8].min() > 0.0


def _voc_sized_problem(k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    h, w = 94, 125  # stride-4 CAMs of a 375×500 image
    edge = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    edge = (edge - edge.min()) / (edge.max() - edge.min())
    return synthetic_cams(h, w, k, seed=4), edge


def test_walk_memory_is_bounded():
    cams, edge = _voc_sized_problem()
    tracemalloc.start()
    rw = random_walk(cams, edge)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = edge.size
    assert rw.shape == cams.shape and np.all(np.isfinite(rw))
    assert peak < 200 * 2**20, peak  # a dense N×N float32 matrix alone would be 4 N² bytes
    assert 4 * n * n > 500 * 2**20


def test_walk_rejects_bad_inputs():
    edge = np.zeros((6, 7))
    with pytest.raises(ValueError, match=r"cams must have shape \(K, 6, 7\)"):
        random_walk(np.zeros((2, 6, 6)), edge)
    with pytest.raises(ValueError, match="edge must contain finite values in"):
        random_walk(np.zeros((2, 6, 7)), edge + 2)
    with pytest.raises(TypeError, match="edge must be a float array"):
        random_walk(np.zeros((2, 6, 7)), edge.astype(np.int64))
    with pytest.raises(ValueError, match="exp_times must be >= 0"):
        random_walk(np.zeros((2, 6, 7)), edge, exp_times=-1)


# ---------------------------------------------------------------------------------------------
# Upsampling and pseudo labels


def _bilinear_half_pixel(x: np.ndarray, scale: int) -> np.ndarray:
    """Independent PyTorch-style bilinear (align_corners=False) upsampling of a 2-D array."""
    h, w = x.shape

    def coords(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) / scale - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = coords(h * scale, h)
    x0, x1, fx = coords(w * scale, w)
    top = x[y0][:, x0] * (1 - fx) + x[y0][:, x1] * fx
    bot = x[y1][:, x0] * (1 - fx) + x[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bot * fy[:, None]


def test_rw_to_image():
    rng = np.random.default_rng(0)
    rw = rng.random((2, 5, 7)).astype(np.float32)
    up = rw_to_image(rw, (18, 25))
    assert up.shape == (2, 18, 25) and up.dtype == np.float32
    ref = np.stack([_bilinear_half_pixel(c, 4)[:18, :25] for c in rw])
    np.testing.assert_allclose(up, ref / (ref.max() + 1e-5), atol=1e-5)
    assert up.max() == pytest.approx(1.0, abs=1e-4)  # global, not per-class, normalisation
    assert up[np.argmin(rw.max(axis=(1, 2)))].max() < 1.0 - 1e-3
    with pytest.raises(ValueError, match="does not cover"):
        rw_to_image(rw, (21, 25))


def test_pseudo_label_rules_without_crf():
    image = np.zeros((2, 3, 3), np.uint8)
    rw = np.array(
        [
            [[0.9, 0.2, 0.5], [0.1, 0.35, 0.0]],
            [[0.5, 0.25, 0.6], [0.0, 0.3, 0.1]],
        ],
        np.float32,
    )
    keys = np.array([0, 5, 12])
    out = pseudo_label_from_rw(rw, keys, image, bg_threshold=0.3, crf_iterations=0)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[5, 0, 12], [0, 5, 0]])  # 0.3 ties go to background


def test_pseudo_label_with_crf_and_empty_image():
    h, w = 48, 64
    image = synthetic_photo(h, w, seed=2)
    rw = synthetic_cams(h, w, 2, seed=3)
    keys = np.array([0, 3, 9])
    out = pseudo_label_from_rw(rw, keys, image)
    assert out.shape == (h, w) and set(np.unique(out)) <= {0, 3, 9}
    no_crf = pseudo_label_from_rw(rw, keys, image, crf_iterations=0)
    assert (out == no_crf).mean() > 0.8
    empty = pseudo_label_from_rw(np.zeros((0, h, w), np.float32), np.array([0]), image)
    assert empty.shape == (h, w) and not empty.any()
    with pytest.raises(ValueError, match="keys must be an int array of length K\\+1=3"):
        pseudo_label_from_rw(rw, np.array([0, 3]), image)
