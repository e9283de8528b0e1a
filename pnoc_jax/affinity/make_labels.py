"""Stage `affinity_labels`: CAMs (`infer_cam`) -> affinity labels (method.md §8).

Writes `affinity_labels/<split>/<id>.png` (palette PNG: 0 background, 1..C class, 255 uncertain)
for every labelled image of `config.affinity_labels.split`, with conventional labels (CAM + CRF)
or saliency-based ones: with the saliency PNGs of the stage `saliency` names (infer_saliency's
C²AM(-H) masks, infer_detector's maps) or of the folder `saliency_dir`; and
`affinity_labels/metrics.json`: their precision and coverage against the ground truth.
Per-image work runs in `core.pool`; images whose PNG exists are counted, not redone. Each
process labels its own shard of the split.
"""

import os
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.affinity import tasks
from pnoc_jax.core import artifacts, distributed, fileio, loop, pool, progress, scores
from pnoc_jax.data import datasets


def saliency_dir(cfg: ml_collections.ConfigDict, workdir: str) -> str:
    """The folder of `<id>.png` saliency maps the labels use: those the stage named by
    `saliency` made for the split, or the user's `saliency_dir`; "" = conventional labels."""
    if cfg.saliency:
        return artifacts.saliency_png_dir(workdir, cfg.saliency, cfg.split)
    return fileio.expand(cfg.saliency_dir) if cfg.saliency_dir else ""


def check_saliency_maps(dataset: datasets.Dataset, split: str, directory: str) -> None:
    """Every labelled image of the split has its saliency PNG, before any label is written."""
    ids = [i for i, labelled in dataset.index(split) if labelled]
    absent = [i for i in ids if not fileio.exists(os.path.join(directory, f"{i}.png"))]
    if absent:
        raise fileio.SaliencyMapError(
            f"affinity_labels: {len(absent)} of the {len(ids)} saliency maps of split {split!r} "
            f"are missing in {directory} (e.g. {', '.join(f'{i}.png' for i in absent[:3])}); "
            "every labelled image needs <id>.png"
        )


def deps(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The CAMs, and the stage whose saliency the labels use (`affinity_labels.saliency`)."""
    saliency = config.affinity_labels.saliency
    return ("infer_cam", *((saliency,) if saliency else ()))


def label_tasks(
    source: Sequence[dict], cfg: ml_collections.ConfigDict, workdir: str
) -> Iterator[tasks.LabelTask]:
    """One task per labelled image of `source` (images without classes have no label)."""
    params = config_lib.from_section(tasks.LabelParams, cfg)
    sal_dir = saliency_dir(cfg, workdir)
    cam_dir = artifacts.cam_dir(workdir, cfg.split)
    for index in progress.iterate(range(len(source)), f"affinity_labels {cfg.split}"):
        example = source[index]
        if example["labels"].sum() == 0:
            continue
        image_id = example["id"]
        yield tasks.LabelTask(
            image=example["image"],
            gt=example["mask"],
            cam_path=scores.locate(cam_dir, image_id),
            out_path=artifacts.affinity_label_file(workdir, cfg.split, image_id),
            saliency_path=os.path.join(sal_dir, f"{image_id}.png") if sal_dir else "",
            params=params,
        )


def label_metrics(counts: np.ndarray, split: str) -> dict:
    """Precision and coverage of the labels from summed `tasks.label_counts`."""
    labelled, agree, gt_valid, labelled_fg, agree_fg = (int(v) for v in counts)
    labelled_bg, agree_bg = labelled - labelled_fg, agree - agree_fg
    return {
        "split": split,
        "precision": agree / max(labelled, 1),
        "coverage": labelled / max(gt_valid, 1),
        "fg_precision": agree_fg / max(labelled_fg, 1),
        "bg_precision": agree_bg / max(labelled_bg, 1),
        "pixels": {"labelled": labelled, "agreeing": agree, "gt_valid": gt_valid},
    }


def run(config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset) -> None:
    cfg = config.affinity_labels
    if saliency_dir(cfg, workdir):
        check_saliency_maps(dataset, cfg.split, saliency_dir(cfg, workdir))
    source = dataset.split(cfg.split)
    counts, computed, total = np.zeros(5, np.int64), 0, 0
    todo = label_tasks(source, cfg, workdir)
    with loop.StopSignals("finishing the images in flight, then stopping") as stop:
        for image_counts, was_computed in pool.run_tasks(
            tasks.affinity_label, todo, config.runtime.num_workers, stop=stop.requested
        ):
            counts += image_counts
            computed += was_computed
            total += 1
        if stop.requested():
            raise stop.preempted(f"affinity_labels: after {computed} more image(s) of {cfg.split}")
    logging.info(
        "affinity_labels %s: %d written, %d already there", cfg.split, computed, total - computed
    )
    counts = distributed.allgather(counts).sum(axis=0)
    if distributed.is_chief():
        metrics = label_metrics(counts, cfg.split)
        fileio.write_json(artifacts.metrics_file(workdir, "affinity_labels"), metrics)
    distributed.barrier("affinity_labels")


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    """The label PNGs of labelled images, and metrics.json, that do not exist."""
    split = config.affinity_labels.split
    labels = (
        artifacts.affinity_label_file(workdir, split, image_id)
        for image_id, labelled in dataset.index(split)
        if labelled
    )
    return artifacts.missing([*labels, artifacts.metrics_file(workdir, "affinity_labels")])


def headline(metrics: dict) -> str:
    return (
        f"affinity labels ({metrics['split']}): precision {100 * metrics['precision']:.1f}%, "
        f"coverage {100 * metrics['coverage']:.1f}% "
        f"(foreground precision {100 * metrics['fg_precision']:.1f}%)"
    )


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.affinity_labels`: CAMs of its split must be inferred."""
    del topology
    key = "affinity_labels"
    config_lib.check_choice(config, f"{key}.split", tuple(config.infer.splits))
    for name in ("fg_threshold", "bg_threshold", "saliency_threshold"):
        config_lib.check_number(config, f"{key}.{name}", low=0, high=1)
    config_lib.check_number(config, f"{key}.crf_iterations", low=0, integer=True)
    config_lib.check_number(
        config, f"{key}.crf_gt_prob", low=0, high=1, low_open=True, high_open=True
    )
    cfg = config.affinity_labels
    config_lib.check(
        not cfg.saliency_dir or fileio.isdir(fileio.expand(cfg.saliency_dir)),
        f"{key}.saliency_dir",
        cfg.saliency_dir,
        "a folder of <id>.png saliency maps, or ''",
    )
    config_lib.check_choice(config, f"{key}.saliency", ("", *artifacts.SALIENCY_STAGES))
    config_lib.check(
        not (cfg.saliency and cfg.saliency_dir),
        f"{key}.saliency",
        cfg.saliency,
        f"'' when config.{key}.saliency_dir is set (one source of saliency)",
    )
    if cfg.saliency:
        section = "saliency_infer" if cfg.saliency == "infer_saliency" else "detector_infer"
        made = tuple(config[section].splits)
        config_lib.check(
            cfg.split in made,
            f"{key}.split",
            cfg.split,
            f"a split whose saliency {cfg.saliency} makes (config.{section}.splits={made})",
        )
