"""Per-image CPU work of the saliency stages, run in `core.pool`: small picklable records and the
functions that do one image's work and write its files atomically. No jax import (pool workers).
"""

import dataclasses

import numpy as np

from pnoc_jax.core import fileio, scores
from pnoc_jax.saliency import maps

SALIENCY_KEYS = np.array([0, 1], np.int64)  # the one "class" of a saliency map file


@dataclasses.dataclass(frozen=True)
class MaskParams:
    """Threshold and CRF of the C²AM(-H) pseudo-masks (`config.saliency_infer`)."""

    mask_threshold: float
    crf_iterations: int
    crf_gt_prob: float


@dataclasses.dataclass(frozen=True)
class MaskTask:
    """One image: its per-scale TTA sums -> the map file (`map_path`) and the mask PNG.

    `maps_per_scale` is None for an image without classes: its mask is all background and it
    has no map file (as the reference).
    """

    image: np.ndarray  # uint8 [H, W, 3]
    maps_per_scale: list[np.ndarray] | None  # [h_s, w_s] per scale
    stride: int
    map_path: str
    mask_path: str
    params: MaskParams


def saliency_mask(task: MaskTask) -> None:
    """Writes the image's map file (keys [0, 1], cam, hr_cam) and its 0/255 CRF mask PNG."""
    h, w = task.image.shape[:2]
    if task.maps_per_scale is None:
        fileio.write_saliency(task.mask_path, np.zeros((h, w), np.uint8))
        return
    cam, hr = maps.combine_scales(task.maps_per_scale, h, w, task.stride)
    scores.write(task.map_path, SALIENCY_KEYS, cam=cam, hr_cam=hr)
    p = task.params
    mask = maps.saliency_mask(task.image, hr[0], p.mask_threshold, p.crf_iterations, p.crf_gt_prob)
    fileio.write_saliency(task.mask_path, mask)
