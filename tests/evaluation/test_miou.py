"""The one-pass threshold sweep against a brute-force computation per threshold."""

import numpy as np

from pnoc_jax.evaluation import miou


def brute_force(gt, cams, keys, thresholds, n):
    out = []
    for t in thresholds:
        planes = np.concatenate([np.full((1, *gt.shape), t), cams], axis=0)
        pred = np.asarray(keys)[planes.argmax(axis=0)]
        conf = np.zeros((n, n), np.int64)
        for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
            if g != 255:
                conf[g, p] += 1
        out.append(conf)
    return np.stack(out)


def test_sweep_equals_brute_force_per_threshold():
    rng = np.random.default_rng(0)
    n, thresholds = 6, miou.DEFAULT_THRESHOLDS
    total_fast = np.zeros((len(thresholds), n, n), np.int64)
    total_slow = np.zeros_like(total_fast)
    for _ in range(5):
        gt = rng.integers(0, n, size=(13, 17)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        classes = np.sort(rng.choice(np.arange(1, n), size=rng.integers(1, 4), replace=False))
        cams = rng.random((len(classes), 13, 17)).astype(np.float32)
        cams[0, 0, :3] = 0.25  # exact ties with a threshold go to the background
        keys = np.concatenate([[0], classes])
        total_fast += miou.sweep_confusions(gt, cams, keys, np.array(thresholds), n)
        total_slow += brute_force(gt, cams, keys, thresholds, n)
    np.testing.assert_array_equal(total_fast, total_slow)
    fast = miou.sweep_scores(total_fast, thresholds, [f"c{i}" for i in range(1, n)])
    slow = [miou.scores(c)["miou"] for c in total_slow]
    assert fast["miou"] == max(slow)
    assert fast["best_threshold"] == thresholds[int(np.argmax(slow))]


def test_scores_by_hand():
    # 2 labels. gt: 3 bg, 2 fg. pred: bg,bg,fg | fg,bg.
    conf = np.array([[2, 1], [1, 1]])
    s = miou.scores(conf)
    np.testing.assert_allclose(s["iou"], [2 / 4, 1 / 3])
    assert s["miou"] == (0.5 + 1 / 3) / 2
    assert s["fpr"] == 1 / 3 and s["fnr"] == 1 / 3


def test_image_without_classes_is_all_background():
    gt = np.array([[0, 1], [255, 0]], np.uint8)
    confs = miou.sweep_confusions(gt, np.zeros((0, 2, 2)), np.array([0]), np.array([0.1, 0.5]), 2)
    np.testing.assert_array_equal(confs[0], [[2, 0], [1, 0]])


def test_confusion_sum_adds_images_at_their_index():
    from pnoc_jax.evaluation.confusion import ConfusionSum, class_summary

    total = ConfusionSum(3, (2,))
    gt = np.array([[0, 1], [2, 255]])
    total.add(miou.confusion(gt, np.array([[0, 1], [1, 0]]), 3), 0)
    total.add(miou.confusion(gt, gt, 3), 1)
    total.add(miou.confusion(gt, gt, 3), 1)
    summed = total.total()  # one process: the local sums
    np.testing.assert_array_equal(summed[0], [[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(summed[1], 2 * np.eye(3, dtype=np.int64))
    summary = class_summary(summed[0], ["background", "a", "b"])
    assert summary["per_class_iou"] == {"background": 1.0, "a": 0.5, "b": 0.0}
    assert summary["miou"] == 0.5
