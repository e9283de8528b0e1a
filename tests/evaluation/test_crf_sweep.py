"""The CRF variant of the sweep against a brute-force loop over thresholds (method.md §6)."""

import numpy as np
import pytest

from pnoc_jax.core import artifacts, scores
from pnoc_jax.evaluation import crf_tasks, miou, sweep
from pnoc_jax.postprocess import crf

THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
NUM_LABELS = 6  # 5 classes + background


def _image(seed: int, h: int = 23, w: int = 31):
    """An RGB image with two coloured blobs, its mask (classes 2 and 5 + a 255 band) and soft
    scores that spill over the blobs' borders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.full((h, w, 3), 90, np.uint8)
    a = (yy - 8) ** 2 + (xx - 9) ** 2 < 30
    b = (yy - 15) ** 2 / 2 + (xx - 22) ** 2 < 40
    image[a], image[b] = (220, 40, 40), (30, 200, 60)
    image = np.clip(image + rng.integers(-15, 16, image.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[a], mask[b] = 2, 5
    mask[0, :] = 255
    smooth = lambda m: np.clip(m * 0.8 + rng.random((h, w)) * 0.5, 0, 1)
    maps = np.stack([smooth(a.astype(float)), smooth(b.astype(float))]).astype(np.float32)
    return image, mask, np.array([0, 2, 5]), maps


def _brute_force(image, mask, keys, maps, iterations, gt_prob):
    """The reference's loop: per threshold, argmax([t, maps]) -> CRF -> keys -> confusion."""
    out = []
    for t in THRESHOLDS:
        planes = np.concatenate([np.full((1, *mask.shape), t, np.float32), maps])
        labels = planes.argmax(axis=0)
        refined = crf.crf_label_map(image, labels, max(len(keys), 2), gt_prob, iterations)
        out.append(miou.confusion(mask, keys[refined], NUM_LABELS))
    return np.stack(out)


def test_label_maps_batched_equal_one_by_one():
    image, _, _, maps = _image(0)
    labels = crf_tasks.threshold_label_maps(maps, np.asarray(THRESHOLDS))
    labels = np.concatenate([labels, labels[:2]])  # repeated maps are solved once
    batched = crf.crf_label_maps(image, labels, 3, 0.7, 10)
    for got, lab in zip(batched, labels, strict=True):
        np.testing.assert_array_equal(got, crf.crf_label_map(image, lab, 3, 0.7, 10))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, n_labels=2\)"):
        crf.crf_label_maps(image, labels, 2, 0.7, 1)


@pytest.mark.parametrize(("iterations", "gt_prob"), [(10, 0.7), (1, 0.9)])
def test_image_confusions_equal_the_brute_force(tmp_path, iterations, gt_prob):
    image, mask, keys, maps = _image(1)
    path = artifacts.score_file(str(tmp_path), "a")
    scores.write(path, keys, hr_cam=maps)
    task = crf_tasks.CrfSweepTask(
        image, mask, path, "hr_cam", THRESHOLDS, NUM_LABELS, iterations, gt_prob
    )
    got = crf_tasks.crf_confusions(task)
    np.testing.assert_array_equal(got, _brute_force(image, mask, keys, maps, iterations, gt_prob))
    plain = miou.sweep_confusions(mask, maps, keys, np.asarray(THRESHOLDS), NUM_LABELS)
    assert not np.array_equal(got, plain)  # the CRF moved pixels
    assert got.sum() == plain.sum() == (mask != 255).sum() * len(THRESHOLDS)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_split_crf_sweep_sums_images_and_reports(tmp_path, num_workers):
    examples, expected = [], 0
    for i in range(3):
        image, mask, keys, maps = _image(10 + i)
        scores.write(artifacts.score_file(str(tmp_path), f"im{i}"), keys, rw=maps)
        examples.append({"id": f"im{i}", "image": image, "mask": mask, "labels": np.eye(5)[1]})
        expected = expected + _brute_force(image, mask, keys, maps, 1, 0.9)
    empty_mask = np.zeros((23, 31), np.uint8)  # an image without classes: all background
    examples.append({"id": "e", "image": image, "mask": empty_mask, "labels": np.zeros(5)})
    expected[:, 0, 0] += empty_mask.size
    names = [f"c{i}" for i in range(1, 6)]
    summary = sweep.crf_sweep(examples, str(tmp_path), "rw", THRESHOLDS, names, 1, 0.9, num_workers)
    want = miou.sweep_scores(expected, np.asarray(THRESHOLDS), names)
    np.testing.assert_equal(summary, {"iterations": 1, "gt_prob": 0.9, **want})  # NaN == NaN
    report = {
        "split": "val",
        "crf": summary,
        **sweep.sweep(examples, str(tmp_path), "rw", THRESHOLDS, names),
    }
    sweep.write_report(str(tmp_path), report)
    assert (tmp_path / "sweep_crf.csv").read_text().count("\n") == len(THRESHOLDS) + 1
    assert ", with CRF (t=1): " in sweep.headline("RW", report)
