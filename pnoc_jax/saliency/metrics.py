"""The saliency evaluation of Table 6 as per-image confusion matrices (method.md §7), NumPy only.

Saliency maps s are floats in [0, 1] (PNG / 255). GT masks use 0 background, 1..C classes and
255 ignored. Three measures, each a confusion matrix summed over a split, as the reference's
`scripts/ccam/evaluate.py` and `scripts/evaluate.py --sal_dir`:

* `saliency_confusions`: 2 classes, GT foreground = any class 1..C; predicted foreground
  = s > t for every threshold t (argmax([t, s]), ties to background) -> [T, 2, 2].
* `oracle_confusions` (the GT-class oracle, "segmentation" mode): where s > t the pixel is
  given its GT class if it is GT foreground and, if it is GT background, a class drawn uniformly
  from the image's GT classes (so a false positive is never rewarded and the true background is
  not leaked); elsewhere background -> [T, L, L]. The draw is seeded per image.
* `priors_with_saliency_confusion`: the CAMs with 1 − s as the background plane instead of a
  constant threshold, argmax([1 − s, hr_cam]) (ties to background) -> [L, L].
"""

from __future__ import annotations

import zlib

import numpy as np

from pnoc_jax.core.masks import IGNORE
from pnoc_jax.evaluation import miou


def _check(gt: np.ndarray, saliency: np.ndarray) -> None:
    if saliency.shape != gt.shape:
        raise ValueError(f"saliency map {saliency.shape} does not match the mask {gt.shape}")


def foreground_mask(gt: np.ndarray) -> np.ndarray:
    """uint8 [H, W]: 1 where GT is a class, 0 background, 255 kept ignored."""
    out = (gt != 0).astype(np.uint8)
    out[gt == IGNORE] = IGNORE
    return out


def saliency_confusions(gt: np.ndarray, saliency: np.ndarray, thresholds) -> np.ndarray:
    """[T, 2, 2] confusions (rows GT bg/fg, columns predicted) of s > t for every threshold."""
    _check(gt, saliency)
    keys = np.array([0, 1], np.int64)
    return miou.sweep_confusions(foreground_mask(gt), saliency[None], keys, thresholds, 2)


def image_seed(image_id: str) -> int:
    """The seed of an image's oracle draw: a stable hash of its id."""
    return zlib.crc32(image_id.encode())


def oracle_candidates(gt: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """The class each pixel gets if predicted salient: its GT class on GT foreground, on GT
    background (and ignored pixels) one drawn uniformly from the image's GT classes (the
    image-level labels where the mask has no class pixel; class 0 where there are none)."""
    foreground = (gt != 0) & (gt != IGNORE)
    classes = np.unique(gt[foreground])
    if classes.size == 0:
        classes = np.flatnonzero(np.asarray(labels) > 0.5) + 1
    if classes.size == 0:
        return np.zeros(gt.shape, np.int64)
    drawn = np.random.default_rng(seed).choice(classes, size=gt.shape)
    return np.where(foreground, gt, drawn).astype(np.int64)


def oracle_confusions(
    gt: np.ndarray,
    saliency: np.ndarray,
    thresholds,
    num_labels: int,
    labels: np.ndarray,
    seed: int,
) -> np.ndarray:
    """[T, L, L] confusions of the GT-class oracle for every threshold (module docstring)."""
    _check(gt, saliency)
    candidates = oracle_candidates(gt, labels, seed)
    classes = np.unique(candidates)
    # One plane per candidate class holding s where the pixel's candidate is that class: the
    # thresholded argmax then predicts the candidate where s > t, background elsewhere.
    planes = np.stack([np.where(candidates == c, saliency, 0.0) for c in classes])
    keys = np.concatenate([[0], classes]).astype(np.int64)
    return miou.sweep_confusions(gt, planes, keys, thresholds, num_labels)


def priors_with_saliency_confusion(
    gt: np.ndarray, cams: np.ndarray, keys: np.ndarray, saliency: np.ndarray, num_labels: int
) -> np.ndarray:
    """[L, L] confusion of argmax([1 − s, cams]) mapped through `keys` ([0, c1 + 1, ...])."""
    _check(gt, saliency)
    if cams.shape[1:] != gt.shape:
        raise ValueError(f"CAMs {cams.shape[1:]} do not match the mask {gt.shape}")
    scores = np.concatenate([(1.0 - saliency)[None], cams], axis=0)
    prediction = np.asarray(keys)[scores.argmax(axis=0)]
    return miou.confusion(gt, prediction, num_labels)
