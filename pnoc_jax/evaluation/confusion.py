"""Confusion matrices summed over a split: per image on each process, then over processes.

Every evaluator (the threshold sweeps, the label-map evaluations, segmentation's validation and
evaluation, Table 6) sums with `ConfusionSum` and scores with `miou`. Kept apart from `miou`,
which per-image CPU workers import without JAX.
"""

from collections.abc import Sequence

import numpy as np

from pnoc_jax.core import distributed
from pnoc_jax.evaluation import miou


class ConfusionSum:
    """int64 confusion matrices [*leading, L, L] (rows ground truth, columns prediction) of this
    process's images; `total()` adds those of every process."""

    def __init__(self, num_labels: int, leading: tuple[int, ...] = ()):
        self.local = np.zeros((*leading, num_labels, num_labels), np.int64)

    def add(self, matrices: np.ndarray, index: int | tuple = ...) -> None:
        """Adds one image's matrices (at `index` of the leading axes, default all)."""
        self.local[index] += matrices

    def total(self) -> np.ndarray:
        """The sum over every process. A collective: every process must call it."""
        return distributed.allgather(self.local).sum(axis=0)


def class_summary(conf: np.ndarray, names: Sequence[str]) -> dict:
    """mIoU, FPR, FNR and {name: IoU} of one confusion matrix whose labels are `names`."""
    scores = miou.scores(conf)
    return {
        "miou": scores["miou"],
        "fpr": scores["fpr"],
        "fnr": scores["fnr"],
        "per_class_iou": {n: float(v) for n, v in zip(names, scores["iou"], strict=True)},
    }
