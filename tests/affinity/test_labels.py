"""Affinity labels (method.md §8) and inter-pixel pair labels (method.md §9) on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest

from pnoc_jax.affinity.labels import (
    affinity_labels_conventional,
    affinity_labels_saliency,
    pair_labels,
)
from pnoc_jax.affinity.paths import grid_pairs, search_directions
from pnoc_jax.cpu_benchmark import synthetic_photo

KEYS = np.array([0, 7, 15])  # image with classes 6 and 14 (0-based) -> segmentation ids 7, 15

# Two classes on a 2×4 image; rows = CAM of class 7 and class 15.
CAMS = np.array(
    [
        [[0.90, 0.35, 0.20, 0.04], [0.50, 0.10, 0.00, 0.30]],
        [[0.10, 0.20, 0.60, 0.02], [0.45, 0.06, 0.03, 0.30]],
    ],
    np.float32,
)
IMAGE = np.zeros((2, 4, 3), np.uint8)


def test_conventional_rules_without_crf():
    out = affinity_labels_conventional(IMAGE, CAMS, KEYS, 0.30, 0.05, crf_iterations=0)
    # fg (δ=0.30): [[7, 7, 15, 0], [7, 0, 0, 0 (tie at 0.30 -> bg)]]
    # bg (δ=0.05): [[7, 7, 15, 0], [7, 7, 0, 7]] -> 0 only where both are bg.
    expected = [[7, 7, 15, 0], [7, 255, 0, 255]]
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_saliency_rules_without_crf():
    saliency = np.array([[0.9, 0.9, 0.05, 0.05], [0.8, 0.5, 0.0, 0.2]], np.float32)
    out = affinity_labels_saliency(IMAGE, CAMS, KEYS, saliency, 0.40, 0.10, crf_iterations=0)
    # S = saliency > 0.1:          [[1, 1, 0, 0], [1, 1, 0, 1]]
    # argmax([0.4, cams]):         [[7, 0, 15, 0], [7, 0, 0, 0]]
    # fg = keys[S · argmax]:       [[7, 0, 0, 0], [7, 0, 0, 0]]  (strong CAM outside S is dropped)
    # label: fg; fg==0 -> 255; fg==0 & S==0 -> 0.
    expected = [[7, 255, 0, 0], [7, 255, 0, 255]]
    np.testing.assert_array_equal(out, expected)


def _blob_scene(h: int = 60, w: int = 80):
    """A coloured disc on a textured background, with a CAM that covers the disc's centre."""
    image = synthetic_photo(h, w, seed=7)
    ys, xs = np.mgrid[0:h, 0:w]
    disc = (ys - 30) ** 2 + (xs - 40) ** 2 < 15**2
    image[disc] = (230, 40, 40)
    cam = np.clip(1.2 - np.hypot(ys - 30, xs - 40) / 15, 0, 1).astype(np.float32)[None]
    return image, cam, disc


def test_labels_with_crf():
    image, cam, disc = _blob_scene()
    keys = np.array([0, 13])
    conv = affinity_labels_conventional(image, cam, keys)
    assert set(np.unique(conv)) <= {0, 13, 255}
    assert conv[30, 40] == 13 and conv[2, 2] == 0
    assert (conv[disc] == 13).mean() > 0.9  # CRF grows the confident core to the disc
    saliency = disc.astype(np.float32) * 0.9
    sal = affinity_labels_saliency(image, cam, keys, saliency)
    assert set(np.unique(sal)) <= {0, 13, 255}
    assert (sal[disc] == 13).mean() > 0.9 and (sal[~disc] == 0).mean() > 0.95


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"image": IMAGE.astype(np.float32)}, TypeError, "image must be a uint8"),
        ({"image": np.zeros((3, 4, 3), np.uint8)}, ValueError, r"cams must have shape \(K, 3, 4\)"),
        (
            {"cams": CAMS * 2},
            ValueError,
            r"cams must be per-class max-normalised scores in \[0, 1\]",
        ),
        ({"cams": CAMS - 0.5}, ValueError, r"in \[0, 1\]"),
        ({"cams": (CAMS * 10).astype(np.int64)}, TypeError, "cams must be a float array"),
        ({"cams": CAMS[:0]}, ValueError, "at least one class"),
        ({"keys": np.array([0, 7])}, ValueError, r"keys must be an int array of shape \(K\+1,\)"),
        ({"keys": np.array([1, 7, 15])}, ValueError, r"keys must be \[0, c1\+1, ...\]"),
        ({"keys": np.array([0.0, 7, 15])}, ValueError, "keys must be an int array"),
    ],
)
def test_conventional_rejects_bad_inputs(kwargs, exc, match):
    args = {"image": IMAGE, "cams": CAMS, "keys": KEYS} | kwargs
    with pytest.raises(exc, match=match):
        affinity_labels_conventional(**args, crf_iterations=0)


def test_saliency_rejects_bad_saliency():
    with pytest.raises(ValueError, match="saliency must have shape"):
        affinity_labels_saliency(IMAGE, CAMS, KEYS, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"saliency must contain finite values in \[0, 1\]"):
        affinity_labels_saliency(IMAGE, CAMS, KEYS, np.full((2, 4), 255.0))
    with pytest.raises(TypeError, match="saliency must be a float array"):
        affinity_labels_saliency(IMAGE, CAMS, KEYS, np.zeros((2, 4), np.uint8))


# ---------------------------------------------------------------------------------------------
# Pair labels


def test_pair_labels_by_hand():
    # Radius 2: directions (0,1), (1,-1), (1,0), (1,1); sources = rows 0..1, cols 1..2 of 3×4.
    label_map = np.array([[0, 0, 3, 3], [0, 0, 255, 3], [1, 0, 0, 3]], np.uint8)
    bg, fg, neg = pair_labels(label_map, radius=2)
    assert search_directions(2).tolist() == [[0, 1], [1, -1], [1, 0], [1, 1]]
    # Sources in order: (0,1)=0 (0,2)=3 (1,1)=0 (1,2)=255.
    # (0,1): dst (0,2)=3 (0,3)=3 (1,2)=255 (1,3)=3
    # (1,-1): dst (1,0)=0 (1,1)=0 (2,0)=1 (2,1)=0
    # (1,0): dst (1,1)=0 (1,2)=255 (2,1)=0 (2,2)=0
    # (1,1): dst (1,2)=255 (1,3)=3 (2,2)=0 (2,3)=3
    np.testing.assert_array_equal(bg, [[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(fg, [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(neg, [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_pair_labels_match_brute_force():
    rng = np.random.default_rng(0)
    label_map = rng.choice(np.array([0, 0, 1, 5, 20, 21, 255], np.uint8), size=(20, 24))
    bg, fg, neg = pair_labels(label_map, radius=4, num_classes=21)
    src, dst = grid_pairs(20, 24, 4)
    flat = label_map.ravel()
    for d in range(dst.shape[0]):
        for s in range(src.size):
            a, b = int(flat[src[s]]), int(flat[dst[d, s]])
            valid = a < 21 and b < 21
            assert bg[d, s] == (valid and a == b == 0)
            assert fg[d, s] == (valid and a == b and a > 0)
            assert neg[d, s] == (valid and a != b)
    assert not (bg & fg).any() and not (bg & neg).any() and not (fg & neg).any()


def test_pair_labels_training_shape():
    bg, fg, neg = pair_labels(np.zeros((128, 128), np.uint8), radius=10)
    assert bg.shape == fg.shape == neg.shape == (len(search_directions(10)), 119 * 110)
    assert bg.all() and not fg.any() and not neg.any()
    with pytest.raises(TypeError, match="label_map must be an integer array"):
        pair_labels(np.zeros((20, 20)), radius=3)
