"""Per-image CPU work of the affinity stages (CRF, random walk, file I/O) and its process pool.

No jax import: the pool's workers are started with the spawn/forkserver method and import only
this module (never fork a process that has initialised JAX).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cv2
import numpy as np

from pnoc_jax.affinity import labels as aff_labels
from pnoc_jax.affinity import random_walk as rw_lib
from pnoc_jax.core import fileio

IGNORE = 255


def label_counts(label: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """[labelled, agreeing, gt_valid, labelled_fg, agreeing_fg] pixel counts vs the GT mask.

    Only pixels with GT != 255 count. labelled = label != 255 (precision = agreeing / labelled,
    coverage = labelled / gt_valid); the _fg counts restrict to labels 1..C.
    """
    gt_valid = gt != IGNORE
    labelled = (label != IGNORE) & gt_valid
    agree = labelled & (label == gt)
    fg = label != 0
    return np.array(
        [labelled.sum(), agree.sum(), gt_valid.sum(), (labelled & fg).sum(), (agree & fg).sum()],
        np.int64,
    )


def affinity_label_task(task: dict[str, Any]) -> np.ndarray:
    """Computes and writes one affinity-label PNG (spec §8); returns its `label_counts`."""
    record = fileio.read_npy_dict(task["cam_path"])
    image = task["image"]
    p = task["params"]
    if task.get("saliency_path"):
        saliency = fileio.read_png(task["saliency_path"]).astype(np.float32) / 255.0
        label = aff_labels.affinity_labels_saliency(
            image,
            record["hr_cam"],
            record["keys"],
            saliency,
            fg_threshold=p["fg_threshold"],
            saliency_threshold=p["saliency_threshold"],
            crf_iterations=p["crf_iterations"],
            crf_gt_prob=p["crf_gt_prob"],
        )
    else:
        label = aff_labels.affinity_labels_conventional(
            image,
            record["hr_cam"],
            record["keys"],
            fg_threshold=p["fg_threshold"],
            bg_threshold=p["bg_threshold"],
            crf_iterations=p["crf_iterations"],
            crf_gt_prob=p["crf_gt_prob"],
        )
    fileio.write_png(task["out_path"], label)
    return label_counts(label, task["gt"])


def random_walk_task(task: dict[str, Any]) -> None:
    """Random walk of one image's CAMs on its boundary map; writes the rw `.npy` and the PNG.

    task: image uint8[H, W, 3], edge float32[⌈H/4⌉, ⌈W/4⌉] (σ of the boundary logits), cam_path,
    rw_path, png_path and params (beta, exp_times, radius, bg_threshold, crf_*).
    """
    p = task["params"]
    image = task["image"]
    record = fileio.read_npy_dict(task["cam_path"])
    keys, cams = np.asarray(record["keys"]), np.asarray(record["cam"], np.float32)
    rw = rw_lib.random_walk(
        cams, task["edge"], beta=p["beta"], exp_times=p["exp_times"], radius=p["radius"]
    )
    rw_hr = rw_lib.rw_to_image(rw, image.shape[:2])
    fileio.write_npy_dict(task["rw_path"], {"keys": keys, "rw": rw_hr})
    label = rw_lib.pseudo_label_from_rw(
        rw_hr,
        keys.astype(np.int64),
        image,
        bg_threshold=p["bg_threshold"],
        crf_iterations=p["crf_iterations"],
        crf_gt_prob=p["crf_gt_prob"],
    )
    fileio.write_png(task["png_path"], label)


def _worker_init() -> None:
    # One BLAS/OpenMP thread per worker: the pool already uses every core.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    cv2.setNumThreads(1)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_tasks(
    fn: Callable[[dict], Any], tasks: Iterable[dict], num_workers: int, max_pending: int = 0
) -> Iterator[Any]:
    """Runs `fn` over `tasks` and yields the results in task order.

    num_workers 0 = one per CPU; 1 = in this process (no pool). Otherwise a `forkserver` pool
    (never fork after JAX initialised) with at most `max_pending` (default 4·workers) tasks in
    flight, so a producer that computes task inputs lazily (e.g. edges on the accelerator)
    overlaps with the CPU work without queueing the whole split in memory.
    """
    num_workers = num_workers or default_workers()
    if num_workers == 1:
        for task in tasks:
            yield fn(task)
        return
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    max_pending = max_pending or 4 * num_workers
    with ctx.Pool(num_workers, initializer=_worker_init) as pool:
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(fn, (task,)))
            while len(pending) >= max_pending:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
