"""The driver of every per-image stage: device work in batches, CPU work in `core.pool`.

For each split, the images whose outputs do not all exist are read in order; their device
inputs (TTA maps, boundaries, logits) are computed `runtime.predict_batch_size` images at a
time, as the pool consumes the tasks, so device and CPU work overlap without holding a split
in memory. Images without classes get a task without device work (all background) unless the
stage computes them too. Each process handles its own share of a split (`Dataset.split`) and
meets the others at a barrier; `missing` lists the outputs that do not exist, over the whole
split, for the runner's check that a stage finished.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections
from absl import logging

from pnoc_jax.core import artifacts, distributed, loop, pool, progress
from pnoc_jax.data import datasets

# The files a stage writes for one image: (split, image_id, labelled) -> paths.
Outputs = Callable[[str, str, bool], Sequence[str]]


def _tasks(
    stage: str,
    split: str,
    source: Sequence[dict],
    outputs: Outputs,
    compute: Callable[[list[dict]], list[Any]],
    make_task: Callable[[str, dict, Any], Any],
    batch_size: int,
    compute_unlabelled: bool,
) -> Iterator[Any]:
    pending: list[dict] = []

    def flush() -> Iterator[Any]:
        yield from (make_task(split, e, c) for e, c in zip(pending, compute(pending), strict=True))
        pending.clear()

    for index in progress.iterate(range(len(source)), f"{stage} {split}"):
        example = source[index]
        labelled = bool(example["labels"].sum() > 0)
        if all(artifacts.damage(p) is None for p in outputs(split, example["id"], labelled)):
            continue
        if not labelled and not compute_unlabelled:
            yield make_task(split, example, None)
            continue
        pending.append(example)
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def run(
    stage: str,
    dataset: datasets.Dataset,
    splits: Sequence[str],
    outputs: Outputs,
    compute: Callable[[list[dict]], list[Any]],
    make_task: Callable[[str, dict, Any], Any],
    worker: Callable[[Any], Any],
    *,
    runtime: ml_collections.ConfigDict,
    compute_unlabelled: bool = False,
) -> None:
    """Runs `worker(make_task(split, example, computed))` in `core.pool` for every image of
    `splits` whose `outputs` are missing or damaged; `computed` is the image's entry of
    `compute(examples)` (None for an image without classes unless `compute_unlabelled`).
    `worker` must be a module-level function that writes the image's outputs. `runtime` gives
    the batch size of `compute` (`predict_batch_size`) and the pool's `num_workers`.

    SIGTERM or a first Ctrl-C: the images in flight are finished, then `Preempted` is raised
    (exit 143 or 130); a rerun continues with the images still missing."""
    with loop.StopSignals("finishing the images in flight, then stopping") as stop:
        for split in splits:
            _run_split(stage, dataset, split, outputs, compute, make_task, worker, runtime,
                       compute_unlabelled, stop)  # fmt: skip
    distributed.barrier(stage)


def _run_split(
    stage: str,
    dataset: datasets.Dataset,
    split: str,
    outputs: Outputs,
    compute: Callable[[list[dict]], list[Any]],
    make_task: Callable[[str, dict, Any], Any],
    worker: Callable[[Any], Any],
    runtime: ml_collections.ConfigDict,
    compute_unlabelled: bool,
    stop: loop.StopSignals,
) -> None:
    source = dataset.split(split)
    todo = _tasks(
        stage,
        split,
        source,
        outputs,
        compute,
        make_task,
        runtime.predict_batch_size,
        compute_unlabelled,
    )
    workers = runtime.num_workers
    done = sum(1 for _ in pool.run_tasks(worker, todo, workers, stop=stop.requested))
    if stop.agreed():
        raise stop.preempted(f"{stage}: after {done} more image(s) of {split}")
    logging.info("%s %s: %d computed, %d already there", stage, split, done, len(source) - done)


def device_batches(
    stage: str,
    split: str,
    source: Sequence[dict],
    todo: Sequence[int],
    batch_size: int,
    stop: loop.StopSignals,
) -> Iterator[list[dict]]:
    """The examples `todo` (indices into `source`) in batches of `batch_size`, for a stage that
    predicts them on the accelerator in the main process (no pool): logs how many there are,
    shows progress, and once a stop was requested stops between batches; at the end of the
    split the processes agree (`stop.agreed`) and all raise `stop.preempted` if any stopped."""
    logging.info("%s %s: %d of %d images to do", stage, split, len(todo), len(source))
    bar = progress.bar(len(todo), f"{stage} {split}")
    done = 0
    while done < len(todo) and not stop.requested():
        examples = [source[i] for i in todo[done : done + batch_size]]
        yield examples
        bar.update(len(examples))
        done += len(examples)
    bar.close()
    if stop.agreed():
        raise stop.preempted(f"{stage}: after {done} image(s) of {split}")


def missing(dataset: datasets.Dataset, splits: Sequence[str], outputs: Outputs) -> list[str]:
    """The outputs of every image of `splits` (all processes' shares) that do not exist."""
    return artifacts.missing(
        path
        for split in splits
        for image_id, labelled in dataset.index(split)
        for path in outputs(split, image_id, labelled)
    )
