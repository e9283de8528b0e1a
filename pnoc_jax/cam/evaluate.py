"""Stage `eval_cam`: background-threshold sweep of the CAMs against the ground truth (spec §6).

Writes `<workdir>/eval_cam/{metrics.json, sweep.csv, sweep.png}`.
"""

import os

import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from pnoc_jax.cam import inference
from pnoc_jax.core import distributed, fileio
from pnoc_jax.data import datasets, pipeline
from pnoc_jax.evaluation import miou


def accumulate_sweep(
    source, cams_dir: str, thresholds, num_labels: int, desc: str, key: str = "hr_cam"
) -> np.ndarray:
    """Sums the per-threshold confusion matrices over a split (one read per image).

    `key` names the full-resolution [K, H, W] scores in each `.npy` ("hr_cam" for CAM files,
    "rw" for random-walk files).
    """
    total = np.zeros((len(thresholds), num_labels, num_labels), np.int64)
    for index in tqdm(range(len(source)), desc=desc, disable=not distributed.is_chief()):
        example = source[index]
        gt = example["mask"]
        if example["labels"].sum() == 0:
            keys, cams = np.zeros(1, np.int64), np.zeros((0, *gt.shape), np.float32)
        else:
            path = os.path.join(cams_dir, f"{example['id']}.npy")
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: score file missing; run its stage first")
            record = fileio.read_npy_dict(path)
            keys, cams = record["keys"], record[key]
            if cams.shape[1:] != gt.shape:
                raise ValueError(
                    f"{path}: {key} {cams.shape[1:]} does not match the mask {gt.shape}"
                )
        total += miou.sweep_confusions(gt, cams, keys, thresholds, num_labels)
    return total


def write_report(out_dir: str, summary: dict) -> None:
    """metrics.json, sweep.csv and sweep.png (mIoU, FPR and FNR against the threshold)."""
    fileio.write_json(os.path.join(out_dir, "metrics.json"), summary)
    lines = ["threshold,miou,fpr,fnr"]
    lines += [
        f"{r['threshold']:.2f},{r['miou']:.6f},{r['fpr']:.6f},{r['fnr']:.6f}"
        for r in summary["sweep"]
    ]
    fileio.write_text(os.path.join(out_dir, "sweep.csv"), "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["threshold"] for r in summary["sweep"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("miou", "-o"), ("fpr", "--"), ("fnr", ":")):
        ax.plot(t, [100 * r[key] for r in summary["sweep"]], style, label=key.upper())
    ax.axvline(summary["best_threshold"], color="grey", lw=0.8)
    ax.set_xlabel("background threshold")
    ax.set_ylabel("%")
    ax.set_title(f"best mIoU {100 * summary['miou']:.1f} at t={summary['best_threshold']:.2f}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with fileio.atomic_path(os.path.join(out_dir, "sweep.png")) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    cfg = config.eval
    info = datasets.get_info(config.data.name)
    source = pipeline.open_split(config, cfg.split)
    thresholds = np.asarray(cfg.thresholds, np.float64)
    num_labels = info.num_classes + 1
    local = accumulate_sweep(
        source,
        inference.output_dir(workdir, cfg.split),
        thresholds,
        num_labels,
        f"eval_cam {cfg.split}",
    )
    confs = distributed.allgather(local).sum(axis=0)
    if not distributed.is_chief():
        return
    summary = miou.sweep_scores(confs, thresholds, list(info.class_names))
    summary["split"] = cfg.split
    out_dir = os.path.join(workdir, "eval_cam")
    write_report(out_dir, summary)
    logging.info(
        "eval_cam %s: mIoU %.2f at threshold %.2f (FPR %.3f, FNR %.3f)",
        cfg.split,
        100 * summary["miou"],
        summary["best_threshold"],
        summary["fpr"],
        summary["fnr"],
    )
    print(
        f"prior mIoU ({cfg.split}): {100 * summary['miou']:.2f} "
        f"at threshold {summary['best_threshold']:.2f}"
    )
