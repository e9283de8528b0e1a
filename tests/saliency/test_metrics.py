"""The Table 6 confusions against brute-force pixel loops and hand-worked values."""

import numpy as np
import pytest

from pnoc_jax.evaluation import miou
from pnoc_jax.saliency import metrics

THRESHOLDS = (0.1, 0.25, 0.5, 0.8)
L = 5  # background + 4 classes


def _example(seed: int, h: int = 9, w: int = 11):
    rng = np.random.default_rng(seed)
    gt = rng.choice([0, 0, 0, 1, 3, 255], size=(h, w)).astype(np.uint8)
    saliency = np.round(rng.uniform(0, 1, (h, w)) * 255) / 255  # as read from a PNG
    saliency[0, :2] = 0.5, 204 / 255  # exactly on a threshold (0.8 = 204/255): background
    return gt, saliency


def _count(gt, prediction, n):
    conf = np.zeros((n, n), np.int64)
    for g, p in zip(gt.ravel(), prediction.ravel(), strict=True):
        if g != 255:
            conf[g, p] += 1
    return conf


def test_saliency_confusions_brute_force():
    gt, s = _example(0)
    got = metrics.saliency_confusions(gt, s, THRESHOLDS)
    assert got.shape == (len(THRESHOLDS), 2, 2)
    for k, t in enumerate(THRESHOLDS):
        truth = np.where(gt == 255, 255, (gt != 0).astype(np.uint8))
        prediction = np.array([[1 if v > t else 0 for v in row] for row in s])
        np.testing.assert_array_equal(got[k], _count(truth, prediction, 2))


def test_saliency_miou_by_hand():
    gt = np.array([[0, 0, 1, 2]], np.uint8)
    s = np.array([[0.0, 0.6, 0.7, 0.1]], np.float32)
    conf = metrics.saliency_confusions(gt, s, (0.5,))[0]
    # bg: TP 1 (pixel 0), FP 1 (pixel 3 predicted bg), FN 1 (pixel 1) -> 1/3; fg: 1/3.
    np.testing.assert_array_equal(conf, [[1, 1], [1, 1]])
    assert miou.scores(conf)["miou"] == pytest.approx(1 / 3)


def test_oracle_brute_force():
    gt, s = _example(1)
    labels = np.array([1, 0, 1, 0], np.float32)  # classes 1 and 3
    seed = metrics.image_seed("img_7")
    got = metrics.oracle_confusions(gt, s, THRESHOLDS, L, labels, seed)
    # The same draw as the implementation: uniform over the mask's classes, seeded per image.
    drawn = np.random.default_rng(seed).choice(np.array([1, 3]), size=gt.shape)
    for k, t in enumerate(THRESHOLDS):
        prediction = np.zeros(gt.shape, np.int64)
        for i in range(gt.shape[0]):
            for j in range(gt.shape[1]):
                if s[i, j] > t:
                    is_class = gt[i, j] not in (0, 255)
                    prediction[i, j] = gt[i, j] if is_class else drawn[i, j]
        np.testing.assert_array_equal(got[k], _count(gt, prediction, L), err_msg=str(t))


def test_oracle_never_rewards_a_false_positive():
    """Salient background is a wrong class; a perfect saliency map makes a perfect oracle."""
    gt = np.array([[0, 0, 2, 2], [0, 4, 4, 255]], np.uint8)
    perfect = np.where((gt != 0) & (gt != 255), 1.0, 0.0).astype(np.float32)
    labels = np.array([0, 1, 0, 1], np.float32)
    conf = metrics.oracle_confusions(gt, perfect, (0.5,), L, labels, 3)[0]
    assert np.trace(conf) == conf.sum() == 7
    everything = np.ones_like(perfect)
    conf = metrics.oracle_confusions(gt, everything, (0.5,), L, labels, 3)[0]
    assert conf[0, 0] == 0 and conf[0].sum() == 3  # every background pixel gets a class
    assert np.trace(conf) == 4  # the 4 class pixels, nothing else
    # No class pixel in the mask: the image-level labels' classes are drawn instead.
    empty = np.zeros((2, 3), np.uint8)
    conf = metrics.oracle_confusions(empty, np.ones((2, 3), np.float32), (0.5,), L, labels, 0)[0]
    assert set(np.flatnonzero(conf[0])) <= {2, 4} and conf[0].sum() == 6


def test_priors_with_saliency_brute_force_and_ties():
    gt, s = _example(2)
    rng = np.random.default_rng(3)
    cams = rng.uniform(0, 1, (2, *gt.shape)).astype(np.float32)
    cams[:, 1, 1], s[1, 1] = (0.25, 0.1), 0.75  # 1 - s ties the best CAM: background wins
    keys = np.array([0, 2, 4], np.int64)
    got = metrics.priors_with_saliency_confusion(gt, cams, keys, s, L)
    prediction = np.zeros(gt.shape, np.int64)
    for i in range(gt.shape[0]):
        for j in range(gt.shape[1]):
            scores = [1 - s[i, j], cams[0, i, j], cams[1, i, j]]
            prediction[i, j] = keys[int(np.argmax(scores))]
    assert prediction[1, 1] == 0
    np.testing.assert_array_equal(got, _count(gt, prediction, L))
    with pytest.raises(ValueError, match="do not match"):
        metrics.priors_with_saliency_confusion(gt, cams[:, :3], keys, s, L)
    with pytest.raises(ValueError, match="does not match"):
        metrics.saliency_confusions(gt, s[:3], THRESHOLDS)
