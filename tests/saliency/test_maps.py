"""C²AM map combination, the orientation heuristic and the CRF masks, on hand-made maps."""

import math

import numpy as np
import pytest

from pnoc_jax.saliency import maps


def _bilinear_half_pixel(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Brute-force bilinear resize, align_corners=False (source = (i + 0.5)·n/m − 0.5, clamped)."""
    h, w = x.shape
    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            sy = min(max((i + 0.5) * h / height - 0.5, 0.0), h - 1)
            sx = min(max((j + 0.5) * w / width - 0.5, 0.0), w - 1)
            y0, x0 = math.floor(sy), math.floor(sx)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            ly, lx = sy - y0, sx - x0
            top = (1 - lx) * x[y0, x0] + lx * x[y0, x1]
            bottom = (1 - lx) * x[y1, x0] + lx * x[y1, x1]
            out[i, j] = (1 - ly) * top + ly * bottom
    return out


def test_combine_scales_is_the_normalised_mean_of_the_resized_maps():
    rng = np.random.default_rng(0)
    height, width, stride = 21, 30, 8
    per_scale = [rng.uniform(0, 3, (3, 4)).astype(np.float32), rng.uniform(0, 3, (5, 8))]
    cam, hr = maps.combine_scales([m.astype(np.float32) for m in per_scale], height, width, stride)
    assert cam.shape == (1, 6, 8) and hr.shape == (1, height, width)
    assert cam.dtype == hr.dtype == np.float32
    # hr: resized to (8·⌈21/8⌉, 8·⌈30/8⌉) = (24, 32), cropped to 21 x 30, mean, / (max + 1e-5).
    full = np.mean([_bilinear_half_pixel(m, 24, 32) for m in per_scale], axis=0)[:height, :width]
    np.testing.assert_allclose(hr[0], full / (full.max() + 1e-5), rtol=1e-5, atol=1e-6)
    low = np.mean([_bilinear_half_pixel(m, 6, 8) for m in per_scale], axis=0)
    np.testing.assert_allclose(cam[0], low / (low.max() + 1e-5), rtol=1e-5, atol=1e-6)
    assert hr.max() < 1 and hr.max() > 0.9999


def test_combine_scales_mean_equals_sum_after_normalisation_and_rejects_bad_maps():
    """The reference's mean over scales and a sum differ only in the 1e-5 of the normaliser."""
    m = [np.ones((2, 2), np.float32), 3 * np.ones((2, 2), np.float32)]
    _, hr = maps.combine_scales(m, 5, 6, 4)
    np.testing.assert_allclose(hr, 2 / (2 + 1e-5))
    with pytest.raises(ValueError, match="at least one scale"):
        maps.combine_scales([], 5, 6, 4)
    with pytest.raises(ValueError, match=r"\[h, w\] map"):
        maps.combine_scales([np.ones((2, 2, 1), np.float32)], 5, 6, 4)


def test_border_foreground_by_hand():
    mask = np.zeros((4, 5), bool)
    assert maps.border_foreground(mask) == 0.0
    mask[0, :] = True  # top row: top 5/5, left 1/4, bottom 0/5, right 1/4
    assert maps.border_foreground(mask) == pytest.approx((1 + 0.25 + 0 + 0.25) / 4)
    mask[:] = True
    mask[1:3, 1:4] = False  # a hole inside: every border line is foreground
    assert maps.border_foreground(mask) == 1.0


def _blob(h: int = 12, w: int = 16) -> np.ndarray:
    """σ(z) of a centred object: 0.9 inside an ellipse, 0.1 outside."""
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2 + 0.5) / (h / 3)) ** 2 + ((xx - w / 2 + 0.5) / (w / 3)) ** 2 <= 1
    return np.where(inside, 0.9, 0.1)


def test_orientation_of_hand_made_maps():
    blob = _blob()
    upright = maps.orientation([blob, blob])
    assert upright == {"inverted": False, "border_foreground": 0.0, "images": 2}
    inverted = maps.orientation([1 - blob, 1 - blob])
    assert inverted["inverted"] and inverted["border_foreground"] == 1.0
    # An object touching the left border: left line all foreground, top/bottom 3 of 16.
    touching = np.full((12, 16), 0.1)
    touching[:, :3] = 0.8
    fraction = (3 / 16 + 1 + 3 / 16 + 0) / 4
    assert maps.border_foreground(touching > 0.5) == pytest.approx(fraction)
    # The decision averages over the images: one inverted-looking map of three is outvoted.
    mixed = maps.orientation([blob, blob, 1 - blob])
    assert not mixed["inverted"] and mixed["border_foreground"] == pytest.approx(1 / 3)
    # Exactly 0.5 is not "above 0.5": not inverted (the reference's strict >).
    half = np.full((4, 4), 0.1)
    half[:, :2] = 0.9  # left 1, right 0, top 1/2, bottom 1/2
    assert maps.orientation([half]) == {"inverted": False, "border_foreground": 0.5, "images": 1}
    with pytest.raises(ValueError, match="at least one map"):
        maps.orientation([])


def test_saliency_mask_threshold_and_crf():
    image = np.zeros((6, 8, 3), np.uint8)
    hr = np.array([[0.1, 0.2, 0.21, 0.9, 0.0, 0.0, 0.3, 0.2]] * 6, np.float32)
    out = maps.saliency_mask(image, hr, threshold=0.2, crf_iterations=0)
    # argmax([0.2, s]): ties go to the background, so 0.2 is not salient.
    np.testing.assert_array_equal(out[0], [0, 0, 255, 255, 0, 0, 255, 0])
    assert out.dtype == np.uint8

    # With the CRF: a bright disc on a dark image, a map covering most of it plus noise.
    yy, xx = np.mgrid[0:40, 0:40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 100
    image = np.where(disc[..., None], 220, 30).astype(np.uint8).repeat(3, axis=2)
    noisy = (disc & (xx < 26)).astype(np.float32) * 0.8
    noisy[2, 2] = 0.9  # an isolated false positive in the dark background
    mask = maps.saliency_mask(image, noisy, 0.2, crf_iterations=10, crf_gt_prob=0.7)
    raw = maps.saliency_mask(image, noisy, 0.2, crf_iterations=0)
    iou = lambda m: ((m > 0) & disc).sum() / ((m > 0) | disc).sum()
    assert iou(mask) > iou(raw) and mask[2, 2] == 0
    with pytest.raises(ValueError, match="does not match"):
        maps.saliency_mask(image, noisy[:10], 0.2)
