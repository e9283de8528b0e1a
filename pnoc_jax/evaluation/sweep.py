"""Evaluation of a split's per-image outputs against its ground truth, and the report files.

Three evaluators share one aggregation (confusion matrices summed over the split and over
processes): `sweep` for score maps thresholded against a background plane (CAMs, random-walk
scores; method.md §6), `crf_sweep` for the same with every thresholded map refined by the dense CRF
(the variant the reference reports beside it; per image in `core.pool`, `crf_tasks.py`), and
`label_maps` for finished label PNGs (pseudo-labels, segmentations). `write_report` writes
`metrics.json`, `sweep.csv`, `sweep.png` and, with the CRF variant, `sweep_crf.csv`.
"""

import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from pnoc_jax import config_lib
from pnoc_jax.core import fileio, pool, progress, scores
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import crf_tasks, miou
from pnoc_jax.evaluation.confusion import ConfusionSum, class_summary


def _examples(source: Sequence[dict], desc: str):
    for index in progress.iterate(range(len(source)), desc):
        yield source[index]


def _scores(
    score_dir: str, image_id: str, key: str, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(keys [K+1], scores [K, H, W]) of one image's score file (`core.scores`, either format)."""
    path = scores.locate(score_dir, image_id)
    record = scores.read(path, (key,))
    if record[key].shape[1:] != shape:
        raise ValueError(f"{path}: {key} {record[key].shape[1:]} does not match the mask {shape}")
    return record["keys"], record[key]


def sweep_confusions(
    source: Sequence[dict], score_dir: str, key: str, thresholds: np.ndarray, num_labels: int
) -> ConfusionSum:
    """Per-threshold confusion matrices [T, L, L] of this process's share of a split.

    `key` names the full-resolution [K, H, W] scores in the image's score file in `score_dir`
    (`core.scores`: "hr_cam" for CAM files, "rw" for random-walk files). Images without
    classes predict background everywhere.
    """
    total = ConfusionSum(num_labels, (len(thresholds),))
    for example in _examples(source, f"sweep {os.path.basename(score_dir)}"):
        gt = example["mask"]
        if example["labels"].sum() == 0:
            keys, maps = np.zeros(1, np.int64), np.zeros((0, *gt.shape), np.float32)
        else:
            keys, maps = _scores(score_dir, example["id"], key, gt.shape)
        total.add(miou.sweep_confusions(gt, maps, keys, thresholds, num_labels))
    return total


def label_map_confusion(source: Sequence[dict], label_dir: str, num_labels: int) -> ConfusionSum:
    """Confusion matrix [L, L] of the label PNGs `<label_dir>/<id>.png` on this process's share."""
    total = ConfusionSum(num_labels)
    for example in _examples(source, f"evaluate {os.path.basename(label_dir)}"):
        label = fileio.read_png(os.path.join(label_dir, f"{example['id']}.png"))
        total.add(miou.confusion(example["mask"], label, num_labels))
    return total


def sweep(
    source: Sequence[dict],
    score_dir: str,
    key: str,
    thresholds: Sequence[float],
    class_names: Sequence[str],
) -> dict:
    """The threshold sweep of a split's score files, summed over processes (`miou.sweep_scores`)."""
    thresholds = np.asarray(thresholds, np.float64)
    confs = sweep_confusions(source, score_dir, key, thresholds, len(class_names) + 1).total()
    return miou.sweep_scores(confs, thresholds, list(class_names))


def crf_sweep(
    source: Sequence[dict],
    score_dir: str,
    key: str,
    thresholds: Sequence[float],
    class_names: Sequence[str],
    iterations: int,
    gt_prob: float,
    num_workers: int = 0,
) -> dict:
    """The threshold sweep with each thresholded map refined by the dense CRF (`crf_tasks.py`;
    `iterations`, `gt_prob` as the reference's `--crf_t`, `--crf_gt_prob`), summed over
    processes; the images of this process's share run in `core.pool` (`num_workers`)."""
    thresholds = tuple(float(t) for t in thresholds)

    def tasks():
        for example in _examples(source, f"CRF sweep {os.path.basename(score_dir)}"):
            labelled = example["labels"].sum() > 0
            yield crf_tasks.CrfSweepTask(
                image=example["image"],
                gt=example["mask"],
                score_path=scores.locate(score_dir, example["id"]) if labelled else "",
                key=key,
                thresholds=thresholds,
                num_labels=len(class_names) + 1,
                iterations=iterations,
                gt_prob=gt_prob,
            )

    total = ConfusionSum(len(class_names) + 1, (len(thresholds),))
    for confs in pool.run_tasks(crf_tasks.crf_confusions, tasks(), num_workers):
        total.add(confs)
    summary = miou.sweep_scores(total.total(), np.asarray(thresholds), list(class_names))
    return {"iterations": iterations, "gt_prob": gt_prob, **summary}


def evaluate_split(
    config: ml_collections.ConfigDict,
    dataset: datasets.Dataset,
    score_dir: str,
    key: str,
    label_dir: str = "",
    crf: tuple[int, float] = (0, 0.7),
) -> dict:
    """The sweep of `config.eval.split`'s score files (and, if `label_dir`, its label PNGs);
    with `crf` = (iterations > 0, gt_prob) also its CRF variant, under "crf"."""
    split = config.eval.split
    class_names = dataset.class_names
    source = dataset.split(split)
    summary = {"split": split, **sweep(source, score_dir, key, config.eval.thresholds, class_names)}
    iterations, gt_prob = crf
    if iterations > 0:
        summary["crf"] = crf_sweep(
            source,
            score_dir,
            key,
            config.eval.thresholds,
            class_names,
            iterations,
            gt_prob,
            config.runtime.num_workers,
        )
    if label_dir:
        labels = label_maps(source, label_dir, class_names)
        summary["labels_miou"] = labels["miou"]
        summary["labels_per_class_iou"] = labels["per_class_iou"]
    return summary


def label_maps(source: Sequence[dict], label_dir: str, class_names: Sequence[str]) -> dict:
    """mIoU, FPR, FNR and per-class IoU of a split's label PNGs, summed over processes."""
    conf = label_map_confusion(source, label_dir, len(class_names) + 1).total()
    return class_summary(conf, ["background", *class_names])


def headline(name: str, metrics: dict) -> str:
    """ "<name> mIoU (<split>): 62.71 at threshold 0.10", the line a sweep's stage prints;
    with the CRF variant ", with CRF (t=10): 64.02 at 0.15" follows."""
    line = (
        f"{name} mIoU ({metrics['split']}): {100 * metrics['miou']:.2f} "
        f"at threshold {metrics['best_threshold']:.2f}"
    )
    if "crf" in metrics:
        crf = metrics["crf"]
        line += (
            f", with CRF (t={crf['iterations']}): {100 * crf['miou']:.2f} "
            f"at {crf['best_threshold']:.2f}"
        )
    return line


def validate_eval(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.eval`: strictly increasing thresholds in (0, 1); the CRF variant's
    iterations (0 = none) and label confidence in (0, 1)."""
    del topology
    config_lib.check_number(config, "eval.crf_iterations", low=0, integer=True)
    config_lib.check_number(
        config, "eval.crf_gt_prob", low=0, high=1, low_open=True, high_open=True
    )
    value = tuple(config.eval.thresholds)
    t = np.asarray(value, np.float64)
    ok = t.ndim == 1 and len(t) > 0 and bool(np.all((t > 0) & (t < 1) & np.isfinite(t)))
    config_lib.check(
        ok and bool(np.all(np.diff(t) > 0)),
        "eval.thresholds",
        value,
        "strictly increasing thresholds in (0, 1)",
    )


def _sweep_csv(rows: list[dict]) -> str:
    lines = ["threshold,miou,fpr,fnr"]
    lines += [f"{r['threshold']:.2f},{r['miou']:.6f},{r['fpr']:.6f},{r['fnr']:.6f}" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, summary: dict) -> None:
    """metrics.json, sweep.csv and sweep.png (mIoU, FPR and FNR against the threshold); with a
    CRF variant also sweep_crf.csv, and its mIoU curve in sweep.png."""
    fileio.write_json(os.path.join(out_dir, "metrics.json"), summary)
    fileio.write_text(os.path.join(out_dir, "sweep.csv"), _sweep_csv(summary["sweep"]))
    if "crf" in summary:
        crf_csv = _sweep_csv(summary["crf"]["sweep"])
        fileio.write_text(os.path.join(out_dir, "sweep_crf.csv"), crf_csv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["threshold"] for r in summary["sweep"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("miou", "-o"), ("fpr", "--"), ("fnr", ":")):
        ax.plot(t, [100 * r[key] for r in summary["sweep"]], style, label=key.upper())
    if "crf" in summary:
        crf = summary["crf"]
        label = f"MIOU, CRF t={crf['iterations']}"
        ax.plot(t, [100 * r["miou"] for r in crf["sweep"]], "-s", ms=3, label=label)
    ax.axvline(summary["best_threshold"], color="grey", lw=0.8)
    ax.set_xlabel("background threshold")
    ax.set_ylabel("%")
    ax.set_title(f"best mIoU {100 * summary['miou']:.1f} at t={summary['best_threshold']:.2f}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with fileio.atomic_write(os.path.join(out_dir, "sweep.png")) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
