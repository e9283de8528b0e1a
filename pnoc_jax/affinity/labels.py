"""Affinity labels from CAMs (method.md §8) and inter-pixel pair labels (method.md §9), NumPy only.

Label maps use 0 = background, 1..C = class, 255 = uncertain (ignored). The dense CRF is the
pydensecrf-compatible `pnoc_jax.postprocess.crf.dense_crf_labels` (Gaussian sxy 3 / compat 3,
bilateral sxy 50 / srgb 5 / compat 10). No jax import: runs in CPU workers.
"""

from __future__ import annotations

import numpy as np

from pnoc_jax.affinity.paths import PathIndex
from pnoc_jax.core.masks import IGNORE
from pnoc_jax.postprocess.crf import dense_crf_labels

__all__ = [
    "affinity_labels_conventional",
    "affinity_labels_saliency",
    "pair_labels",
]

_TOL = 1e-6  # slack for "in [0, 1]" checks


def _check_inputs(
    image: np.ndarray, cams: np.ndarray, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = image.dtype if isinstance(image, np.ndarray) else type(image)
        raise TypeError(f"image must be a uint8 numpy array (H, W, 3), got {got}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    cams = np.asarray(cams)
    if not np.issubdtype(cams.dtype, np.floating):
        raise TypeError(f"cams must be a float array (K, H, W), got dtype {cams.dtype}")
    if cams.ndim != 3 or cams.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"cams must have shape (K, {image.shape[0]}, {image.shape[1]}) matching image, "
            f"got {cams.shape}"
        )
    if cams.shape[0] < 1:
        raise ValueError("cams must have at least one class (images without labels are skipped)")
    if not np.all(np.isfinite(cams)) or cams.min() < -_TOL or cams.max() > 1 + _TOL:
        raise ValueError(
            "cams must be per-class max-normalised scores in [0, 1] (hr_cam), got range "
            f"[{np.nanmin(cams):.4g}, {np.nanmax(cams):.4g}]"
        )
    keys = np.asarray(keys)
    k = cams.shape[0]
    if not np.issubdtype(keys.dtype, np.integer) or keys.shape != (k + 1,):
        raise ValueError(
            f"keys must be an int array of shape (K+1,)=({k + 1},) [0, c1+1, ...], got "
            f"{keys.dtype} {keys.shape}"
        )
    if keys[0] != 0 or keys[1:].min() < 1 or keys.max() >= IGNORE:
        raise ValueError(f"keys must be [0, c1+1, ...] with class ids in 1..254, got {keys}")
    return image, cams, keys.astype(np.uint8)


def _thresholded_argmax(cams: np.ndarray, threshold: float) -> np.ndarray:
    """argmax([threshold plane, cams]) over K+1 channels (ties go to background)."""
    best = cams.argmax(axis=0) + 1
    best[cams.max(axis=0) <= threshold] = 0
    return best


def _crf_argmax(
    image: np.ndarray, labels: np.ndarray, n_labels: int, iterations: int, gt_prob: float
) -> np.ndarray:
    q = dense_crf_labels(image, labels, n_labels, gt_prob=gt_prob, iterations=iterations)
    return q.argmax(axis=0)


def affinity_labels_conventional(
    image: np.ndarray,
    cams: np.ndarray,
    keys: np.ndarray,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    crf_iterations: int = 10,
    crf_gt_prob: float = 0.7,
) -> np.ndarray:
    """PSA/IRN affinity labels: confident fg at ``fg_threshold``, confident bg at ``bg_threshold``.

    image: uint8 (H, W, 3); cams: float (K, H, W) in [0, 1]; keys: (K+1,) [0, c1+1, ...].
    fg = keys[CRF(argmax([δ_fg, cams]))], bg = keys[CRF(argmax([δ_bg, cams]))]; label = fg,
    255 where fg is background, 0 where both are background. Returns uint8 (H, W).
    """
    image, cams, keys = _check_inputs(image, cams, keys)
    n = cams.shape[0] + 1
    fg = keys[
        _crf_argmax(image, _thresholded_argmax(cams, fg_threshold), n, crf_iterations, crf_gt_prob)
    ]
    bg = keys[
        _crf_argmax(image, _thresholded_argmax(cams, bg_threshold), n, crf_iterations, crf_gt_prob)
    ]
    label = fg.copy()
    label[fg == 0] = IGNORE
    label[(fg == 0) & (bg == 0)] = 0
    return label


def affinity_labels_saliency(
    image: np.ndarray,
    cams: np.ndarray,
    keys: np.ndarray,
    saliency: np.ndarray,
    fg_threshold: float = 0.40,
    saliency_threshold: float = 0.10,
    crf_iterations: int = 10,
    crf_gt_prob: float = 0.7,
) -> np.ndarray:
    """P-NOC affinity labels with a saliency map (used in the final pipeline).

    saliency: float (H, W) in [0, 1] (PoolNet PNG / 255). S = CRF_2labels(saliency > δ_sal);
    fg = keys[CRF(S · argmax([δ_fg, cams]))]; label = fg, 255 where fg is background, 0 where
    also non-salient. So non-salient & CAM-bg → 0, salient & weak CAM → 255, strong CAM → class.
    Returns uint8 (H, W).
    """
    image, cams, keys = _check_inputs(image, cams, keys)
    saliency = np.asarray(saliency)
    if not np.issubdtype(saliency.dtype, np.floating):
        raise TypeError(f"saliency must be a float array in [0, 1], got dtype {saliency.dtype}")
    if saliency.shape != image.shape[:2]:
        raise ValueError(
            f"saliency must have shape {image.shape[:2]} matching image, got {saliency.shape}"
        )
    if not np.all(np.isfinite(saliency)) or saliency.min() < -_TOL or saliency.max() > 1 + _TOL:
        raise ValueError("saliency must contain finite values in [0, 1] (PNG / 255)")
    salient = _crf_argmax(
        image, (saliency > saliency_threshold).astype(np.int64), 2, crf_iterations, crf_gt_prob
    )
    n = cams.shape[0] + 1
    cam_labels = _thresholded_argmax(cams, fg_threshold) * salient
    fg = keys[_crf_argmax(image, cam_labels, n, crf_iterations, crf_gt_prob)]
    label = fg.copy()
    label[fg == 0] = IGNORE
    label[(salient == 0) & (fg == 0)] = 0
    return label


def pair_labels(
    label_map: np.ndarray, radius: int = 10, num_classes: int = 21
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inter-pixel training labels over the IRN (src, dst) pairs of ``label_map``.

    label_map: int (h, w), e.g. the affinity PNG nearest-resized to crop/4 (128×128); values
    >= ``num_classes`` (21 VOC incl. background, 81 COCO; 255 ignore) make a pair invalid.
    Returns boolean (bg_pos, fg_pos, neg), each (D, S) in `PathIndex(radius).pairs` layout:
    bg_pos = same label 0, fg_pos = same label > 0, neg = different labels.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be 2-D (h, w), got shape {label_map.shape}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise TypeError(f"label_map must be an integer array, got dtype {label_map.dtype}")
    src, dst = PathIndex(radius).pairs(*label_map.shape)
    flat = label_map.ravel()
    a = flat[src][None, :]
    b = flat[dst]
    valid = (a < num_classes) & (b < num_classes)
    equal = a == b
    pos = equal & valid
    return pos & (a == 0), pos & (a > 0), ~equal & valid
