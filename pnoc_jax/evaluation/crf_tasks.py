"""The CRF variant of the threshold sweep, one image per task (method.md §6, the CRF table of §9).

For every threshold t the reference's `evaluate.py` (with `--crf_t`) labels the image
argmax([t, scores]) in the image's own label space (0 the background plane, k the k-th class
of its keys), refines that label map with the dense CRF (`crf_inference_label`: unary
`-log(gt_prob)` for the given label, `n_labels = max(K + 1, 2)`, Gaussian (3, 3) + bilateral
(50, 5, 10)), maps it through the keys and counts it against the ground truth. Here every
threshold's map of one image goes through one `postprocess.crf.crf_label_maps` call (the
lattices built once). No jax import: runs in `core.pool` workers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pnoc_jax.core import scores
from pnoc_jax.evaluation import miou
from pnoc_jax.postprocess import crf


@dataclasses.dataclass(frozen=True)
class CrfSweepTask:
    """One image: its RGB pixels and ground truth, and where its scores are."""

    image: np.ndarray  # uint8 [H, W, 3]
    gt: np.ndarray  # uint8 [H, W]
    score_path: str  # `core.scores` file; "" for an image without classes
    key: str  # "hr_cam" or "rw"
    thresholds: tuple[float, ...]
    num_labels: int  # classes + background of the dataset
    iterations: int
    gt_prob: float


def threshold_label_maps(maps: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[T, H, W] int: argmax([t, maps]) for each t (0 = the background plane; ties go to it)."""
    if maps.shape[0] == 0:
        return np.zeros((len(thresholds), *maps.shape[1:]), np.int64)
    best, arg = maps.max(axis=0), maps.argmax(axis=0) + 1
    return np.stack([np.where(best > t, arg, 0) for t in thresholds])


def crf_confusions(task: CrfSweepTask) -> np.ndarray:
    """[T, L, L] confusion matrices of the CRF-refined label maps of one image."""
    thresholds = np.asarray(task.thresholds, np.float64)
    shape = (len(thresholds), task.num_labels, task.num_labels)
    out = np.zeros(shape, np.int64)
    if not task.score_path:  # no classes: background everywhere, as the plain sweep
        for i in range(len(thresholds)):
            out[i] = miou.confusion(task.gt, np.zeros_like(task.gt), task.num_labels)
        return out
    record = scores.read(task.score_path, (task.key,))
    keys, maps = np.asarray(record["keys"]), record[task.key]
    if maps.shape[1:] != task.gt.shape:
        raise ValueError(
            f"{task.score_path}: {task.key} {maps.shape[1:]} does not match the mask "
            f"{task.gt.shape}"
        )
    local = threshold_label_maps(maps, thresholds)
    refined = crf.crf_label_maps(
        task.image, local, max(len(keys), 2), task.gt_prob, task.iterations
    )
    for i, labels in enumerate(refined):
        out[i] = miou.confusion(task.gt, keys[labels], task.num_labels)
    return out
