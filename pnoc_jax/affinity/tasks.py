"""Per-image CPU work of the affinity stages (CRF labels, random walk), run in `core.pool`.

Each task is a small picklable record; its function does the work for one image, writes the
image's files atomically and returns what the stage sums. Finished outputs are detected here,
so a resumed stage redoes only the missing images. No jax import (pool workers).
"""

import dataclasses

import numpy as np

from pnoc_jax.affinity import labels as aff_labels
from pnoc_jax.affinity import random_walk as rw_lib
from pnoc_jax.core import artifacts, fileio, scores
from pnoc_jax.core.masks import IGNORE


def label_counts(label: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """[labelled, agreeing, gt_valid, labelled_fg, agreeing_fg] pixel counts vs the GT mask.

    Only pixels with GT != 255 count. labelled = label != 255 (precision = agreeing / labelled,
    coverage = labelled / gt_valid); the _fg counts restrict to labels 1..C.
    """
    gt_valid = gt != IGNORE
    labelled = (label != IGNORE) & gt_valid
    agree = labelled & (label == gt)
    fg = label != 0
    return np.array(
        [labelled.sum(), agree.sum(), gt_valid.sum(), (labelled & fg).sum(), (agree & fg).sum()],
        np.int64,
    )


@dataclasses.dataclass(frozen=True)
class LabelParams:
    """Thresholds and CRF settings of the affinity labels (`config.affinity_labels`)."""

    fg_threshold: float
    bg_threshold: float
    saliency_threshold: float
    crf_iterations: int
    crf_gt_prob: float


@dataclasses.dataclass(frozen=True)
class LabelTask:
    """One image's affinity label: from its CAM file (and saliency PNG) to `out_path`."""

    image: np.ndarray  # uint8 [H, W, 3]
    gt: np.ndarray  # uint8 [H, W], for precision and coverage only
    cam_path: str  # `core.scores` file: ours (.npz) or the reference's (.npy)
    out_path: str
    saliency_path: str  # "" = conventional labels
    params: LabelParams


def affinity_label(task: LabelTask) -> tuple[np.ndarray, bool]:
    """Writes the image's affinity-label PNG unless a whole one exists (method.md §8).

    Returns its `label_counts` and whether it was computed now.
    """
    if artifacts.damage(task.out_path) is None:
        return label_counts(fileio.read_png(task.out_path), task.gt), False
    record = scores.read(task.cam_path, ("hr_cam",))
    p = task.params
    if task.saliency_path:
        saliency = fileio.read_saliency(task.saliency_path, task.image.shape[:2])
        label = aff_labels.affinity_labels_saliency(
            task.image,
            record["hr_cam"],
            record["keys"],
            saliency,
            fg_threshold=p.fg_threshold,
            saliency_threshold=p.saliency_threshold,
            crf_iterations=p.crf_iterations,
            crf_gt_prob=p.crf_gt_prob,
        )
    else:
        label = aff_labels.affinity_labels_conventional(
            task.image,
            record["hr_cam"],
            record["keys"],
            fg_threshold=p.fg_threshold,
            bg_threshold=p.bg_threshold,
            crf_iterations=p.crf_iterations,
            crf_gt_prob=p.crf_gt_prob,
        )
    fileio.write_png(task.out_path, label)
    return label_counts(label, task.gt), True


@dataclasses.dataclass(frozen=True)
class WalkParams:
    """Random-walk and pseudo-label settings (`config.rw`)."""

    beta: float
    exp_times: int
    radius: int
    bg_threshold: float
    crf_iterations: int
    crf_gt_prob: float
    labels: bool = True  # False: the random-walk scores only, no pseudo-label


@dataclasses.dataclass(frozen=True)
class WalkTask:
    """One image's random walk: CAM file + boundary map -> rw scores and the pseudo-label.

    `edge` is None for an image without classes: its pseudo-label is all background and it
    has no score file.
    """

    image: np.ndarray  # uint8 [H, W, 3]
    edge: np.ndarray | None  # float32 [⌈H/4⌉, ⌈W/4⌉], σ of the boundary logits
    cam_path: str  # `core.scores` file: ours (.npz) or the reference's (.npy)
    rw_path: str  # .npz written by `core.scores`
    png_path: str
    params: WalkParams


def random_walk(task: WalkTask) -> None:
    """Random walk of one image's CAMs on its boundary map; writes the rw `.npz` (or reads it,
    when a first pass wrote it) and, with `params.labels`, the PNG."""
    p = task.params
    if task.edge is None:
        if p.labels:
            fileio.write_png(task.png_path, np.zeros(task.image.shape[:2], np.uint8))
        return
    if fileio.exists(task.rw_path):
        record = scores.read(task.rw_path, ("rw",))
        keys, rw_hr = record["keys"], record["rw"]
    else:
        record = scores.read(task.cam_path, ("cam",))
        keys = record["keys"]
        rw = rw_lib.random_walk(
            record["cam"], task.edge, beta=p.beta, exp_times=p.exp_times, radius=p.radius
        )
        rw_hr = rw_lib.rw_to_image(rw, task.image.shape[:2])
        scores.write(task.rw_path, keys, rw=rw_hr)
    if not p.labels:
        return
    label = rw_lib.pseudo_label_from_rw(
        rw_hr,
        keys,
        task.image,
        bg_threshold=p.bg_threshold,
        crf_iterations=p.crf_iterations,
        crf_gt_prob=p.crf_gt_prob,
    )
    fileio.write_png(task.png_path, label)
