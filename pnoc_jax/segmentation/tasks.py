"""Per-image CPU work of the segmentation inference, run in `core.pool`: softmax, dense CRF,
argmax, label PNGs.

Each task is a picklable record; `segment` writes the image's files atomically, the label map
with the final (CRF) prediction LAST, so an image whose `label_path` exists is finished. No jax
import (pool workers).
"""

import dataclasses

import numpy as np

from pnoc_jax.core import fileio
from pnoc_jax.postprocess import crf

# The dense CRF of DeepLab's test time (method.md §9 table, "dlv2": HEAD segmentation inference and
# deeplab-pytorch): unary -log softmax, Gaussian(sxy 1, compat 3) + bilateral(sxy 67, srgb 3,
# compat 4).
CRF_KERNELS = {
    "gauss_sxy": 1.0,
    "gauss_compat": 3.0,
    "bilateral_sxy": 67.0,
    "bilateral_srgb": 3.0,
    "bilateral_compat": 4.0,
}


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable float32 softmax along `axis`."""
    shifted = (logits - logits.max(axis=axis, keepdims=True)).astype(np.float32)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def predict_labels(
    image: np.ndarray, logits: np.ndarray, crf_iterations: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(argmax of softmax(logits), argmax of the CRF marginals or None when iterations = 0).

    image uint8 [H, W, 3]; logits float32 [K, H, W]. Label maps are uint8 [H, W].
    """
    probs = softmax(logits)
    plain = probs.argmax(axis=0).astype(np.uint8)
    if not crf_iterations:
        return plain, None
    q = crf.dense_crf(image, probs, iterations=crf_iterations, **CRF_KERNELS)
    return plain, q.argmax(axis=0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class SegmentTask:
    """One image's prediction: merged logits -> label PNGs.

    `label_path` gets the final prediction (after the CRF when `crf_iterations` > 0);
    `plain_path` the prediction without CRF ("" when there is no CRF: it is the same map);
    `server_path` ("" = none) a copy of the final map in the evaluation server's layout.
    """

    image: np.ndarray  # uint8 [H, W, 3]
    logits: np.ndarray  # float32 [K, H, W]
    label_path: str
    plain_path: str
    server_path: str
    crf_iterations: int


def segment(task: SegmentTask) -> bool:
    """Writes the task's PNGs (the label PNG last, so it marks the image done); returns True."""
    plain, refined = predict_labels(task.image, task.logits, task.crf_iterations)
    final = plain if refined is None else refined
    if task.plain_path:
        fileio.write_png(task.plain_path, plain)
    if task.server_path:
        fileio.write_png(task.server_path, final)
    fileio.write_png(task.label_path, final)
    return True
