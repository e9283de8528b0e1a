"""Confusion matrices, IoU metrics and the background-threshold sweep (pure NumPy).

Class indices are segmentation indices: 0 background, 1..C foreground, 255 ignored.
"""

import numpy as np

from pnoc_jax.core.masks import IGNORE

DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.81, 0.05), 2).tolist())


def confusion(gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """[num_labels, num_labels] counts, rows = ground truth, columns = prediction."""
    valid = gt != IGNORE
    index = gt[valid].astype(np.int64) * num_labels + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_labels**2).reshape(num_labels, num_labels)


def sweep_confusions(
    gt: np.ndarray,
    cams: np.ndarray,
    keys: np.ndarray,
    thresholds: np.ndarray,
    num_labels: int,
) -> np.ndarray:
    """Confusion matrices of `argmax([t, cams])` for every threshold t, in one pass.

    gt: [H, W] uint8; cams: [K, H, W] scores of the image's classes; keys: [K + 1] segmentation
    index of each plane (keys[0] = 0, the background plane). Ties go to the background, as
    argmax picks the first maximum. Returns [T, num_labels, num_labels] int64.

    A pixel whose best class score m exceeds exactly k thresholds is predicted as that class
    for those k thresholds and as background for the others, so one histogram over
    (k, gt, class) followed by a cumulative sum over k gives all T matrices.
    """
    thresholds = np.asarray(thresholds, np.float64)
    t = len(thresholds)
    valid = gt != IGNORE
    g = gt[valid].astype(np.int64)
    if cams.shape[0] == 0:
        best, label = np.full(g.shape, -np.inf), np.zeros_like(g)
    else:
        flat = cams.reshape(cams.shape[0], -1)[:, valid.reshape(-1)]
        best = flat.max(axis=0)
        label = np.asarray(keys)[1:][flat.argmax(axis=0)].astype(np.int64)
    k = np.searchsorted(thresholds, best, side="left")  # number of thresholds strictly below m
    n2 = num_labels * num_labels
    fg = np.bincount((k * num_labels + g) * num_labels + label, minlength=(t + 1) * n2)
    fg = fg.reshape(t + 1, num_labels, num_labels)
    # Threshold i predicts the class for pixels with k > i, background for k <= i.
    above = np.cumsum(fg[::-1], axis=0)[::-1][1:]  # above[i] = Σ_{k > i} fg[k]
    below = np.cumsum(fg.sum(axis=2), axis=0)[:t]  # below[i, g] = Σ_{k <= i} pixels of gt g
    out = above.copy()
    out[:, :, 0] += below
    return out


def scores(conf: np.ndarray) -> dict:
    """IoU per class, mIoU over classes that occur (incl. background), FPR/FNR over foreground.

    FPR_c = FP / (TP + FP + FN), FNR_c = FN / (TP + FP + FN) (the paper's definitions).
    """
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    gt_count = conf.sum(axis=1)
    pred_count = conf.sum(axis=0)
    union = gt_count + pred_count - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        fpr = np.where(union > 0, (pred_count - tp) / union, np.nan)
        fnr = np.where(union > 0, (gt_count - tp) / union, np.nan)
    return {
        "miou": float(np.nanmean(iou)),
        "fpr": float(np.nanmean(fpr[1:])) if len(fpr) > 1 else float("nan"),
        "fnr": float(np.nanmean(fnr[1:])) if len(fnr) > 1 else float("nan"),
        "iou": iou,
    }


def sweep_scores(confs: np.ndarray, thresholds, class_names: list[str]) -> dict:
    """Summary of a sweep: best threshold (by mIoU), its per-class IoU, and the full curve."""
    rows = []
    for t, conf in zip(thresholds, confs, strict=True):
        s = scores(conf)
        rows.append({"threshold": float(t), "miou": s["miou"], "fpr": s["fpr"], "fnr": s["fnr"]})
    best = int(np.nanargmax([r["miou"] for r in rows]))
    best_scores = scores(confs[best])
    names = ["background", *class_names]
    return {
        "miou": rows[best]["miou"],
        "best_threshold": rows[best]["threshold"],
        "fpr": rows[best]["fpr"],
        "fnr": rows[best]["fnr"],
        "per_class_iou": {n: float(v) for n, v in zip(names, best_scores["iou"], strict=True)},
        "sweep": rows,
    }
