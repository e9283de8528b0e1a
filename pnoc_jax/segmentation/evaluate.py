"""Stages `eval_segmentation` and `eval_segmentation_gt`: the predicted label maps against the
ground truth, with and without the CRF.

For every split of `config.segmentation_infer.splits` that has ground truth: mIoU, per-class
IoU, FPR and FNR (`evaluation.miou.scores`) of the final (CRF) maps and of the maps before the
CRF, from confusion matrices summed over the split and over processes. A split without ground
truth (VOC `test`: every mask 255) is listed as such; its predictions are in the evaluation
server's layout. Writes `<stage>/metrics.json` and `<stage>/confusion.png` (the headline
split's row-normalised confusion matrix). The headline split is `config.segmentation.val_split`
when evaluated, else the first evaluated split; the weak model's metrics also carry the
pseudo-labels' mIoU on that split (from `eval_pseudo_labels`) for comparison.
"""

import os
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax.core import artifacts, distributed, fileio, progress
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import miou
from pnoc_jax.evaluation.confusion import ConfusionSum, class_summary
from pnoc_jax.segmentation import train as seg_train


def confusions(
    source: Sequence[dict], label_dirs: Sequence[str], num_labels: int, desc: str
) -> ConfusionSum:
    """[len(label_dirs), L, L]: per folder, the confusion matrix of its `<id>.png` maps against
    this process's share of a split (rows ground truth, columns prediction)."""
    total = ConfusionSum(num_labels, (len(label_dirs),))
    for index in progress.iterate(range(len(source)), desc):
        example = source[index]
        for k, folder in enumerate(label_dirs):
            path = os.path.join(folder, f"{example['id']}.png")
            label = fileio.read_png(path)
            if label.shape != example["mask"].shape:
                raise ValueError(
                    f"{path}: prediction {label.shape} does not match the mask "
                    f"{example['mask'].shape}"
                )
            total.add(miou.confusion(example["mask"], label, num_labels), k)
    return total


def confusion_figure(conf: np.ndarray, names: Sequence[str], title: str, path: str) -> None:
    """The confusion matrix, each row divided by its ground-truth pixels (%), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = conf.sum(axis=1, keepdims=True)
    share = 100 * conf / np.maximum(rows, 1)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if n <= 24:
        for i in range(n):
            for j in range(n):
                if share[i, j] >= 0.5:
                    color = "white" if share[i, j] > 50 else "black"
                    ax.text(j, i, f"{share[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color=color)  # fmt: skip
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset, *, labels: str
) -> None:
    _, infer_stage, stage = seg_train.STAGES[labels]
    crf = config.segmentation_infer.crf_iterations > 0
    names = ["background", *dataset.class_names]
    splits: dict[str, dict] = {}
    matrices: dict[str, np.ndarray] = {}
    for split in config.segmentation_infer.splits:
        folders = [artifacts.segmentation_dir(workdir, infer_stage, split)]
        if crf:
            folders.append(artifacts.segmentation_dir(workdir, infer_stage, split, crf=False))
        conf = confusions(dataset.split(split), folders, len(names), stage).total()
        if conf[0].sum() == 0:
            splits[split] = {"ground_truth": False}
            continue
        entry = {"ground_truth": True, **class_summary(conf[0], names)}
        if crf:
            entry["no_crf"] = class_summary(conf[1], names)
        splits[split] = entry
        matrices[split] = conf[0]
    evaluated = [s for s, e in splits.items() if e["ground_truth"]]
    metrics: dict = {"labels": labels, "crf_iterations": config.segmentation_infer.crf_iterations}
    if evaluated:
        val = config.segmentation.val_split
        split = val if val in evaluated else evaluated[0]
        head = splits[split]
        metrics.update(split=split, miou=head["miou"], fpr=head["fpr"], fnr=head["fnr"])
        metrics["per_class_iou"] = head["per_class_iou"]
        if crf:
            metrics["miou_no_crf"] = head["no_crf"]["miou"]
        pseudo_path = artifacts.metrics_file(workdir, "eval_pseudo_labels")
        if labels == "pseudo" and fileio.exists(pseudo_path):
            pseudo = fileio.read_json(pseudo_path)
            if pseudo.get("split") == split:
                metrics["pseudo_label_miou"] = pseudo["pseudo_label_miou"]
    metrics["splits"] = splits
    if distributed.is_chief():
        fileio.write_json(artifacts.metrics_file(workdir, stage), metrics)
        if evaluated:
            title = f"{stage} ({metrics['split']}, mIoU {100 * metrics['miou']:.1f})"
            confusion_figure(
                matrices[metrics["split"]],
                names,
                title,
                artifacts.confusion_picture(workdir, stage),
            )
    distributed.barrier(stage)
    logging.info("%s: %s", stage, headline(metrics))


def eval_segmentation(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> None:
    run(config, workdir, dataset, labels="pseudo")


def eval_segmentation_gt(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> None:
    run(config, workdir, dataset, labels="ground_truth")


def headline(metrics: dict) -> str:
    name = "segmentation" if metrics["labels"] == "pseudo" else "fully supervised segmentation"
    if "miou" not in metrics:
        return f"{name}: no split with ground truth (predictions in the server layout)"
    line = f"{name} mIoU ({metrics['split']}): {100 * metrics['miou']:.2f}"
    if "miou_no_crf" in metrics:
        line += f" with CRF, {100 * metrics['miou_no_crf']:.2f} without"
    if "pseudo_label_miou" in metrics:
        line += f"; pseudo-labels {100 * metrics['pseudo_label_miou']:.2f}"
    return line


def missing_for(labels: str):
    stage = seg_train.STAGES[labels][2]

    def missing(
        config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
    ) -> list[str]:
        del config, dataset
        metrics = artifacts.metrics_file(workdir, stage)
        found = artifacts.missing([metrics])
        if found or "miou" not in fileio.read_json(metrics):
            return found
        return artifacts.missing([artifacts.confusion_picture(workdir, stage)])

    return missing


def weak_vs_supervised(weak: dict, supervised: dict) -> str | None:
    """'66.10 of 72.00 (91.8 %)' when both were evaluated on the same split, else None."""
    if "miou" not in weak or "miou" not in supervised or weak["split"] != supervised["split"]:
        return None
    ratio = weak["miou"] / supervised["miou"] if supervised["miou"] else float("nan")
    return (
        f"{100 * weak['miou']:.2f} of {100 * supervised['miou']:.2f} mIoU ({weak['split']}): "
        f"weak supervision reaches {100 * ratio:.1f} % of full supervision"
    )


def summary_rows(
    config: ml_collections.ConfigDict, workdir: str
) -> list[tuple[str, str, str, dict]]:
    """The summary row (key, title, line, numbers) that says how much of the fully supervised
    bound the weakly supervised model reaches, when both were evaluated on the same split."""
    weak_stage, full_stage = seg_train.STAGES["pseudo"][2], seg_train.STAGES["ground_truth"][2]
    paths = [artifacts.metrics_file(workdir, s) for s in (weak_stage, full_stage)]
    if weak_stage not in config.stages or artifacts.missing(paths):
        return []
    weak, full = (fileio.read_json(p) for p in paths)
    line = weak_vs_supervised(weak, full)
    if not line:
        return []
    ratio = weak["miou"] / full["miou"]
    return [("weak_vs_supervised", "weak vs fully supervised", line, {"ratio": ratio})]
