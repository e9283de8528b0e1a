"""Stages `affinity_labels`, `random_walk` and `eval_pseudo_labels` (spec §8, §9, runner 3).

* affinity_labels: CAMs (`infer_cam`) -> index PNGs 0 bg / 1..C / 255 uncertain, plus their
  precision and coverage against the GT masks in `affinity_labels/metrics.json`.
* random_walk: boundaries of the trained AffinityNet (flip-averaged, on device) -> IRN random
  walk of the stride-4 CAMs and dCRF pseudo-labels (NumPy, in a process pool). Resumable:
  images whose outputs exist are skipped.
* eval_pseudo_labels: the prior evaluator's threshold sweep over the RW scores, plus the mIoU
  of the pseudo-label PNGs, on `config.eval.split` (the split the priors are evaluated on).

Each JAX process handles its own shard of every split.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from pnoc_jax.affinity import train as aff_train
from pnoc_jax.affinity import workers
from pnoc_jax.cam import evaluate, inference
from pnoc_jax.core import distributed, fileio
from pnoc_jax.data import datasets, pipeline
from pnoc_jax.evaluation import miou

# Config keys that determine each stage's output (fingerprints; worker counts excluded).
LABEL_KEYS = tuple(
    f"affinity.{k}"
    for k in (
        "split",
        "fg_threshold",
        "bg_threshold",
        "saliency_dir",
        "saliency_threshold",
        "crf_iterations",
        "crf_gt_prob",
    )
)
RW_KEYS = tuple(
    f"rw.{k}"
    for k in (
        "splits",
        "beta",
        "exp_times",
        "radius",
        "bg_threshold",
        "crf_iterations",
        "crf_gt_prob",
        "max_image_size",
    )
)


def rw_dir(workdir: str, split: str) -> str:
    return os.path.join(workdir, "random_walk", split)


def pseudo_label_dir(workdir: str, split: str) -> str:
    return os.path.join(workdir, "random_walk", f"{split}_pseudo")


def _cam_path(workdir: str, split: str, example_id: str) -> str:
    path = os.path.join(inference.output_dir(workdir, split), f"{example_id}.npy")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: CAM file missing; add {split!r} to config.infer.splits and run infer_cam"
        )
    return path


# ------------------------------------------------------------------------------ affinity labels


def affinity_labels(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `<workdir>/affinity_labels/<split>/<id>.png` and `affinity_labels/metrics.json`."""
    cfg = config.affinity
    split = cfg.split
    source = pipeline.open_split(config, split)
    out_dir = aff_train.label_dir(workdir, split)
    os.makedirs(out_dir, exist_ok=True)
    params = {
        k: cfg[k]
        for k in (
            "fg_threshold",
            "bg_threshold",
            "saliency_threshold",
            "crf_iterations",
            "crf_gt_prob",
        )
    }
    counts = np.zeros(5, np.int64)
    done = [0, 0]  # images labelled now, images found finished

    def tasks() -> Iterator[dict]:
        for index in tqdm(
            range(len(source)), desc=f"affinity_labels {split}", disable=not distributed.is_chief()
        ):
            example = source[index]
            if example["labels"].sum() == 0:
                continue
            out_path = os.path.join(out_dir, f"{example['id']}.png")
            if os.path.exists(out_path):
                counts[:] += workers.label_counts(fileio.read_png(out_path), example["mask"])
                done[1] += 1
                continue
            saliency = ""
            if cfg.saliency_dir:
                saliency = os.path.join(
                    os.path.expanduser(cfg.saliency_dir), f"{example['id']}.png"
                )
            done[0] += 1
            yield {
                "image": example["image"],
                "gt": example["mask"],
                "cam_path": _cam_path(workdir, split, example["id"]),
                "out_path": out_path,
                "saliency_path": saliency,
                "params": params,
            }

    for result in workers.run_tasks(workers.affinity_label_task, tasks(), cfg.num_workers):
        counts[:] += result
    logging.info("affinity_labels %s: %d written, %d already there", split, *done)
    total = distributed.allgather(counts).sum(axis=0)
    if distributed.is_chief():
        labelled, agree, gt_valid, labelled_fg, agree_fg = (int(v) for v in total)
        labelled_bg, agree_bg = labelled - labelled_fg, agree - agree_fg
        metrics = {
            "split": split,
            "precision": agree / max(labelled, 1),
            "coverage": labelled / max(gt_valid, 1),
            "fg_precision": agree_fg / max(labelled_fg, 1),
            "bg_precision": agree_bg / max(labelled_bg, 1),
            "pixels": {"labelled": labelled, "agreeing": agree, "gt_valid": gt_valid},
        }
        fileio.write_json(os.path.join(workdir, "affinity_labels", "metrics.json"), metrics)
        print(
            f"affinity labels ({split}): precision {100 * metrics['precision']:.1f}%, "
            f"coverage {100 * metrics['coverage']:.1f}% "
            f"(foreground precision {100 * metrics['fg_precision']:.1f}%)"
        )
    distributed.barrier("affinity_labels")


# ------------------------------------------------------------------------------ random walk


def make_edge_fn(model, variables, mesh):
    """Jitted boundary logits [B, S/4, S/4] for a batch sharded over this process's devices."""
    return distributed.batch_predictor(lambda v, x: model.apply(v, x), variables, mesh)


def edge_maps(
    images: list[np.ndarray], predict, canvas: int, batch_multiple: int
) -> list[np.ndarray]:
    """σ((e(x) + hflip e(hflip x)) / 2) at stride 4, [⌈H/4⌉, ⌈W/4⌉] float32 per image.

    Each image and its flip are normalised and zero-padded bottom/right to `canvas`², so the
    network compiles once.
    """
    logits = predict(inference.flip_pairs_on_canvas(images, canvas, batch_multiple))
    out = []
    for i, image in enumerate(images):
        h, w = math.ceil(image.shape[0] / 4), math.ceil(image.shape[1] / 4)
        mean = (logits[2 * i, :h, :w] + logits[2 * i + 1, :h, :w][:, ::-1]) / 2
        out.append((1.0 / (1.0 + np.exp(-mean))).astype(np.float32))
    return out


def random_walk(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `random_walk/<split>/<id>.npy` ({"keys", "rw"}) and `<split>_pseudo/<id>.png`."""
    cfg = config.rw
    local_mesh = distributed.make_mesh(jax.local_devices())
    model = aff_train.build_model(config)
    variables = aff_train.load_variables(config, workdir, distributed.make_mesh())
    variables = jax.device_put(jax.device_get(variables), distributed.replicated(local_mesh))
    predict = make_edge_fn(model, variables, local_mesh)
    batch_multiple = len(jax.local_devices())
    canvas = inference.canvas_size(cfg.max_image_size, 1.0)
    params = {
        k: cfg[k]
        for k in ("beta", "exp_times", "radius", "bg_threshold", "crf_iterations", "crf_gt_prob")
    }
    for split in cfg.splits:
        source = pipeline.open_split(config, split)
        npy_dir, png_dir = rw_dir(workdir, split), pseudo_label_dir(workdir, split)
        os.makedirs(npy_dir, exist_ok=True)
        os.makedirs(png_dir, exist_ok=True)
        done = [0, 0]

        def tasks(source=source, split=split, npy_dir=npy_dir, png_dir=png_dir, done=done):
            pending: list[dict] = []

            def flush() -> Iterator[dict]:
                images = [e["image"] for e in pending]
                for example, edge in zip(
                    pending, edge_maps(images, predict, canvas, batch_multiple), strict=True
                ):
                    yield {
                        "image": example["image"],
                        "edge": edge,
                        "cam_path": _cam_path(workdir, split, example["id"]),
                        "rw_path": os.path.join(npy_dir, f"{example['id']}.npy"),
                        "png_path": os.path.join(png_dir, f"{example['id']}.png"),
                        "params": params,
                    }
                pending.clear()

            for index in tqdm(
                range(len(source)), desc=f"random_walk {split}", disable=not distributed.is_chief()
            ):
                example = source[index]
                png_path = os.path.join(png_dir, f"{example['id']}.png")
                if example["labels"].sum() == 0:  # no classes: all background, no RW file
                    if not os.path.exists(png_path):
                        fileio.write_png(png_path, np.zeros(example["mask"].shape, np.uint8))
                    continue
                npy_path = os.path.join(npy_dir, f"{example['id']}.npy")
                if os.path.exists(npy_path) and os.path.exists(png_path):
                    done[1] += 1
                    continue
                if max(example["image"].shape[:2]) > cfg.max_image_size:
                    raise ValueError(
                        f"image {example['id']} is larger than config.rw.max_image_size="
                        f"{cfg.max_image_size}; raise it"
                    )
                done[0] += 1
                pending.append(example)
                if len(pending) == cfg.batch_size:
                    yield from flush()
            if pending:
                yield from flush()

        for _ in workers.run_tasks(workers.random_walk_task, tasks(), cfg.num_workers):
            pass
        logging.info("random_walk %s: %d computed, %d already there", split, *done)
    distributed.barrier("random_walk")


# ------------------------------------------------------------------------------ evaluation


def eval_pseudo_labels(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Threshold sweep of the RW scores and mIoU of the pseudo-label PNGs on config.eval.split.

    Writes `<workdir>/eval_pseudo_labels/{metrics.json, sweep.csv, sweep.png}`.
    """
    split = config.eval.split
    if split not in config.rw.splits:
        raise ValueError(
            f"config.eval.split={split!r} is not in config.rw.splits={tuple(config.rw.splits)}"
        )
    info = datasets.get_info(config.data.name)
    num_labels = info.num_classes + 1
    thresholds = np.asarray(config.eval.thresholds, np.float64)
    source = pipeline.open_split(config, split)
    sweep = evaluate.accumulate_sweep(
        source, rw_dir(workdir, split), thresholds, num_labels, f"eval rw {split}", key="rw"
    )
    conf = np.zeros((num_labels, num_labels), np.int64)
    png_dir = pseudo_label_dir(workdir, split)
    for index in tqdm(
        range(len(source)), desc=f"eval pseudo {split}", disable=not distributed.is_chief()
    ):
        example = source[index]
        label = fileio.read_png(os.path.join(png_dir, f"{example['id']}.png"))
        conf += miou.confusion(example["mask"], label, num_labels)
    sweep = distributed.allgather(sweep).sum(axis=0)
    conf = distributed.allgather(conf).sum(axis=0)
    if not distributed.is_chief():
        return
    summary = miou.sweep_scores(sweep, thresholds, list(info.class_names))
    summary["split"] = split
    pseudo = miou.scores(conf)
    names = ["background", *info.class_names]
    summary["pseudo_label_miou"] = pseudo["miou"]
    summary["pseudo_label_per_class_iou"] = {
        n: float(v) for n, v in zip(names, pseudo["iou"], strict=True)
    }
    prior_path = os.path.join(workdir, "eval_cam", "metrics.json")
    if os.path.exists(prior_path):
        prior = fileio.read_json(prior_path)
        if prior.get("split") == split:
            summary["prior_miou"] = prior["miou"]
    evaluate.write_report(os.path.join(workdir, "eval_pseudo_labels"), summary)
    prior_text = f", prior {100 * summary['prior_miou']:.2f}" if "prior_miou" in summary else ""
    print(
        f"RW mIoU ({split}): {100 * summary['miou']:.2f} at threshold "
        f"{summary['best_threshold']:.2f}; pseudo-label mIoU {100 * pseudo['miou']:.2f}"
        f"{prior_text}"
    )
