"""Loss terms and schedules against values worked by hand or with plain NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.cam import losses


def test_multilabel_soft_margin_by_hand():
    logits = jnp.array([[0.0, 2.0], [-1.0, 1.0]])
    labels = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    s = lambda z: 1 / (1 + math.exp(-z))
    by_hand = (
        -(
            (math.log(s(0.0)) + math.log(1 - s(2.0))) / 2
            + (math.log(1 - s(-1.0)) + math.log(s(1.0))) / 2
        )
        / 2
    )
    assert float(losses.multilabel_soft_margin(logits, labels)) == pytest.approx(by_hand, rel=1e-6)


def test_label_smoothing_values():
    y = jnp.array([[1.0, 0.0]])
    np.testing.assert_allclose(losses.smooth_labels(y, 0.1), [[0.95, 0.05]], rtol=1e-6)
    np.testing.assert_allclose(losses.smooth_labels(y, 0.0), y)


def test_smoothed_loss_by_hand():
    z, t = 1.5, 0.95
    s = 1 / (1 + math.exp(-z))
    expected = -(t * math.log(s) + (1 - t) * math.log(1 - s))
    got = losses.multilabel_soft_margin(
        jnp.array([[z]]), losses.smooth_labels(jnp.array([[1.0]]), 0.1)
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_linear_ramp_start_middle_end():
    total = 100
    # λ_re: 0 -> 4 over the first half.
    assert float(losses.linear_ramp(0, total, 0.0, 4.0, 0.5)) == 0.0
    assert float(losses.linear_ramp(25, total, 0.0, 4.0, 0.5)) == pytest.approx(2.0)
    assert float(losses.linear_ramp(50, total, 0.0, 4.0, 0.5)) == pytest.approx(4.0)
    assert float(losses.linear_ramp(99, total, 0.0, 4.0, 0.5)) == pytest.approx(4.0)
    # λ_cse: 0.3 -> 1 over the whole run.
    assert float(losses.linear_ramp(0, total, 0.3, 1.0, 1.0)) == pytest.approx(0.3)
    assert float(losses.linear_ramp(50, total, 0.3, 1.0, 1.0)) == pytest.approx(0.65)
    assert float(losses.linear_ramp(100, total, 0.3, 1.0, 1.0)) == pytest.approx(1.0)


def test_tile_merge_round_trip_and_order():
    x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    tiles = np.asarray(losses.tile(jnp.asarray(x)))
    assert tiles.shape == (8, 2, 3, 3)
    np.testing.assert_array_equal(tiles[0], x[0, :2, :3])  # TL of sample 0
    np.testing.assert_array_equal(tiles[4 + 1], x[1, :2, 3:])  # TR of sample 1
    np.testing.assert_array_equal(tiles[2], x[0, 2:, :3])  # BL of sample 0
    np.testing.assert_array_equal(tiles[4 + 3], x[1, 2:, 3:])  # BR of sample 1
    np.testing.assert_array_equal(np.asarray(losses.merge(jnp.asarray(tiles))), x)


def test_reconstruction_loss_uses_unsmoothed_labels_and_full_mean():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 3, 4)), rng.normal(size=(2, 3, 3, 4))
    y = np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32)
    expected = (np.abs(a - b) * y[:, None, None, :]).sum() / a.size
    got = losses.reconstruction_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(y))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_sample_erased_class_only_positives_and_uniform():
    labels = jnp.array([[1.0, 0.0, 1.0, 0.0]] * 4000)
    r = np.asarray(losses.sample_erased_class(jax.random.key(0), labels))
    assert set(np.unique(r)) == {0, 2}
    assert abs((r == 0).mean() - 0.5) < 0.03


def test_remove_class():
    y = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(losses.remove_class(y, jnp.array([2, 0])), [[1, 0, 0], [0, 1, 0]])


def test_resize_bilinear_matches_half_pixel_numpy():
    import cv2

    x = np.random.default_rng(1).random((1, 5, 7), np.float32)
    got = np.asarray(losses.resize_bilinear(jnp.asarray(x), 20, 28))[0]
    ref = cv2.resize(x[0], (28, 20), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_soft_mask_normalises_over_the_whole_batch():
    maps = np.zeros((2, 2, 2), np.float32)
    maps[0, 0, 0], maps[1, 1, 1] = 2.0, 1.0
    mask = np.asarray(losses.soft_erasing_mask(jnp.asarray(maps)))
    np.testing.assert_allclose(mask[0, 0, 0], 1 - 2 / (2 + 1e-5), atol=1e-6)
    np.testing.assert_allclose(mask[1, 1, 1], 1 - 1 / (2 + 1e-5), atol=1e-6)  # batch max, not 1
    np.testing.assert_allclose(mask[0, 1, 1], 1.0)


def test_hard_mask_normalises_per_sample():
    maps = np.array([[[0.0, 0.1], [0.3, 1.0]], [[0.0, 1.0], [2.0, 10.0]]], np.float32)
    keep = np.asarray(losses.hard_keep_mask(jnp.asarray(maps), 0.2))
    # ψ per sample: [0, .1, .3, 1] and [0, .1, .2, 1]; keep where ψ <= 0.2.
    np.testing.assert_array_equal(keep, [[[1, 1], [0, 0]], [[1, 1], [1, 0]]])


def test_soft_mask_gradient_reaches_cams():
    cams = jnp.ones((1, 2, 2, 2))

    def f(c):
        maps = losses.class_maps(c, jnp.array([1]), 4, 4)
        return jnp.sum(losses.soft_erasing_mask(maps * jnp.arange(16.0).reshape(1, 4, 4)))

    g = jax.grad(f)(cams)
    assert np.abs(np.asarray(g[..., 1])).sum() > 0
    assert np.abs(np.asarray(g[..., 0])).sum() == 0
