"""C²AM saliency maps: test-time combination, orientation and CRF masks (method.md §7), NumPy only.

* `combine_scales`: the per-scale sums of ReLU(z) over the flip pair are resized (bilinear,
  half-pixel) to stride 4 (`cam`) and to the image (`hr_cam`), averaged over the scales and each
  divided by its max + 1e-5, as the reference's `scripts/ccam/inference.py`.
* `border_foreground` / `orientation`: plain C²AM can learn foreground and background either way
  round. The reference's check (`check_positive`) thresholds σ(z) at 0.5 and calls the model
  inverted when the mean of the map's four border lines is above 0.5: objects rarely cover the
  image border, so a map that is mostly "foreground" there has the roles swapped.
* `saliency_mask`: hr_cam > 0.2, then a 2-label dense CRF (t = 10, gt_prob 0.7), as 0/255 (the
  reference's `inference_crf.py`): the pseudo-masks the saliency detector is trained on.

No jax import: runs in CPU workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from pnoc_jax.postprocess.crf import dense_crf_labels

INVERTED_ABOVE = 0.5  # border foreground fraction above which a C²AM is inverted
PROBABILITY_THRESHOLD = 0.5  # σ(z) > 0.5 is foreground in the orientation check


def _resize(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] -> [height, width], bilinear with align_corners=False (cv2 INTER_LINEAR)."""
    return cv2.resize(maps.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def combine_scales(
    maps_per_scale: Sequence[np.ndarray], height: int, width: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over scales of the flip-pair sums, at stride 4 and at full resolution, normalised.

    maps_per_scale: [h_s, w_s] per scale (ReLU(z) of the image + unflipped ReLU(z) of its
    mirror). Like CAMs (method.md §6), `cam` is resized to (⌈H/4⌉, ⌈W/4⌉) and `hr_cam` to
    (stride·⌈H/stride⌉, stride·⌈W/stride⌉), cropped to H x W. Each is divided by its max + 1e-5.
    Returns (cam [1, ⌈H/4⌉, ⌈W/4⌉], hr_cam [1, H, W]), float32 in [0, 1).
    """
    if not maps_per_scale:
        raise ValueError("combine_scales needs the maps of at least one scale")
    low_h, low_w = math.ceil(height / 4), math.ceil(width / 4)
    hr_h, hr_w = stride * math.ceil(height / stride), stride * math.ceil(width / stride)
    cam = np.zeros((low_h, low_w), np.float32)
    hr = np.zeros((hr_h, hr_w), np.float32)
    for maps in maps_per_scale:
        if maps.ndim != 2:
            raise ValueError(f"expected one [h, w] map per scale, got shape {maps.shape}")
        cam += _resize(maps, low_h, low_w)
        hr += _resize(maps, hr_h, hr_w)
    cam /= len(maps_per_scale)
    hr = hr[:height, :width] / len(maps_per_scale)
    cam /= cam.max() + 1e-5
    hr /= hr.max() + 1e-5
    return cam[None], hr[None]


def border_foreground(mask: np.ndarray) -> float:
    """Mean over the 4 border lines (top row, left column, bottom row, right column, each
    averaged on its own, as the reference) of a binary [h, w] map."""
    mask = np.asarray(mask, np.float64)
    if mask.ndim != 2 or min(mask.shape) < 1:
        raise ValueError(f"expected a [h, w] map, got shape {mask.shape}")
    lines = (mask[0, :], mask[:, 0], mask[-1, :], mask[:, -1])
    return float(np.mean([line.mean() for line in lines]))


def orientation(probabilities: Sequence[np.ndarray]) -> dict:
    """Whether a C²AM's maps σ(z) (one [h, w] map per image) have foreground and background
    swapped: the border fraction of σ(z) > 0.5, averaged over the images, is above 0.5.

    Returns {"inverted": bool, "border_foreground": mean fraction, "images": count}. The
    reference decides on the first image of one batch; averaging over several images makes the
    decision less dependent on that one image.
    """
    if not len(probabilities):
        raise ValueError("the orientation check needs at least one map")
    fractions = [border_foreground(np.asarray(p) > PROBABILITY_THRESHOLD) for p in probabilities]
    mean = float(np.mean(fractions))
    return {"inverted": mean > INVERTED_ABOVE, "border_foreground": mean, "images": len(fractions)}


def saliency_mask(
    image: np.ndarray,
    hr_map: np.ndarray,
    threshold: float = 0.2,
    crf_iterations: int = 10,
    crf_gt_prob: float = 0.7,
) -> np.ndarray:
    """The pseudo-mask of one image: argmax([threshold, hr_map]) (i.e. hr_map > threshold), then
    the 2-label dense CRF of P-NOC (`crf_inference_label`); no CRF when `crf_iterations` is 0.

    image: uint8 [H, W, 3]; hr_map: float [H, W] in [0, 1]. Returns uint8 [H, W] in {0, 255}.
    """
    hr_map = np.asarray(hr_map)
    if hr_map.shape != image.shape[:2]:
        raise ValueError(f"saliency map {hr_map.shape} does not match the image {image.shape[:2]}")
    labels = (hr_map > threshold).astype(np.int64)
    if crf_iterations > 0:
        q = dense_crf_labels(image, labels, 2, gt_prob=crf_gt_prob, iterations=crf_iterations)
        labels = q.argmax(axis=0)
    return (labels * 255).astype(np.uint8)
