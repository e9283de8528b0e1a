"""grain pipelines over TFDS data sources.

The training pipeline is a random-access `MapDataset` of batches: batch s is a pure function
of (seed, s). Resuming at step s therefore replays exactly the data an uninterrupted run sees,
with no iterator state to checkpoint.
"""

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags, logging

from pnoc_jax.core import loop, rng

Transform = Callable[[dict, np.random.Generator], dict]


class _ProcessRows(Sequence):
    """This process's rows of the global batches of a stream: its row r of batch s is element
    s·G + p·L + r (G the global batch, L = G / processes, p the process)."""

    def __init__(self, stream: grain.MapDataset, global_batch: int, process: int, processes: int):
        self._stream = stream
        self._global = global_batch
        self._local = global_batch // processes
        self._offset = process * self._local

    def __len__(self) -> int:
        return len(self._stream) // self._global * self._local

    def __getitem__(self, index: int) -> dict:
        step, row = divmod(index, self._local)
        return self._stream[step * self._global + self._offset + row]


class Attached(Sequence):
    """The examples of `source`, each with the fields `attach(example)` returns added: a
    stage's per-image training target read from a file (affinity labels, saliency masks,
    pseudo-labels, hints). Picklable for grain workers when `attach` is (a module-level
    function or a functools.partial of one)."""

    def __init__(self, source: Sequence[dict], attach: Callable[[dict], dict]):
        self._source = source
        self._attach = attach

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        example = dict(self._source[index])
        example.update(self._attach(example))
        return example


class Subset(Sequence):
    """The examples of `source` at `indices`, in that order (picklable, for grain workers)."""

    def __init__(self, source: Sequence[dict], indices: Sequence[int]):
        self._source = source
        self._indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> dict:
        return self._source[int(self._indices[index])]


def labelled_only(source: Sequence[dict]) -> Sequence[dict]:
    """The examples of `source` with at least one class, as the reference's classification
    datasets train on (`IGNORE_BG_IMAGES`: an image without a label is skipped, method.md §2): an
    image without a class has nothing to erase (OC-CSE, P-NOC) nor to localise.
    Reads labels only (`ids_and_labels`) where the source offers it."""
    if hasattr(source, "ids_and_labels"):
        labels = [lab for _, lab in source.ids_and_labels()]
    else:
        labels = [source[i]["labels"] for i in range(len(source))]
    keep = [i for i, lab in enumerate(labels) if np.asarray(lab).sum() > 0]
    return source if len(keep) == len(source) else Subset(source, keep)


def train_batches(
    source: Sequence[dict],
    transform: Transform,
    global_batch: int,
    seed: int,
    keys: tuple[str, ...] = ("image", "labels"),
    process: int = 0,
    processes: int = 1,
) -> grain.MapDataset:
    """This process's share of the global batches of the shuffled (every epoch), repeated and
    augmented `source` (the whole split).

    Every process sees the same global stream, a pure function of (seed, position), and takes
    its rows of each global batch, computing only those; so a run on P processes trains on
    exactly the batches of a run on one. Only `keys` are batched.
    """

    def augment(example: dict, rng: np.random.Generator) -> dict:
        out = transform(example, rng)
        return {k: out[k] for k in keys}

    stream = grain.MapDataset.source(source).seed(seed).shuffle().repeat().random_map(augment)
    rows = _ProcessRows(stream, global_batch, process, processes)
    return grain.MapDataset.source(rows).batch(global_batch // processes, drop_remainder=True)


def default_input_workers() -> int:
    """Worker processes for `input_workers=-1`: every CPU but two (the training loop and the
    accelerator runtime), at most 32; none on a machine of 4 CPUs or fewer, where a process's
    start-up costs more than it brings."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 4 else min(cpus - 2, 32)


def iterate_from(batches: grain.MapDataset, start: int, workers: int = 0) -> Iterator[dict]:
    """Iterates batches start, start+1, ..., prefetched by `workers` grain worker processes
    (decode and augmentation off the training process), or by threads of this process when
    `workers` is 0; -1: `default_input_workers()`. Batches are a pure function of their index,
    so the worker count never changes them."""
    if workers < 0:
        workers = default_input_workers()
    if workers == 0:
        options = grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)
        return iter(batches[start:].to_iter_dataset(options))
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags (a library or a test)
        flags.FLAGS.mark_as_parsed()
    dataset = batches[start:].to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)
    )
    options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
    return iter(dataset.mp_prefetch(options))


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Iterations per epoch with drop_last, as a torch DataLoader(drop_last=True) counts them."""
    steps = num_examples // global_batch_size
    if steps == 0:
        raise ValueError(
            f"the training split has {num_examples} examples, fewer than one batch "
            f"({global_batch_size})"
        )
    return steps


def total_steps(num_examples: int, batch_size: int, epochs: int, steps: int) -> int:
    """Iterations of a training run: `steps` when > 0, else `epochs` whole epochs."""
    return steps or epochs * steps_per_epoch(num_examples, batch_size)


def section_steps(section: ml_collections.ConfigDict, num_examples: int) -> int:
    """Iterations of a training section (its batch_size, epochs, steps) on `num_examples`."""
    return total_steps(num_examples, section.batch_size, section.epochs, section.steps)


@dataclasses.dataclass(frozen=True)
class TrainingInput:
    """The input plan of a training stage: batches as a pure function of the step, and the
    number of steps. `batches(start)` is what `core.loop.run_training` iterates."""

    dataset: grain.MapDataset
    num_examples: int  # in the split
    steps_per_epoch: int
    total_steps: int

    def batches(self, start: int, workers: int = 0) -> Iterator[dict]:
        return iterate_from(self.dataset, start, workers)


def training_input(
    source: Sequence[dict],
    transform: Transform,
    *,
    batch_size: int,
    epochs: int,
    steps: int,
    seed: int,
    keys: tuple[str, ...] = ("image", "labels"),
) -> TrainingInput:
    """Plans training on `source`, the whole split (`Dataset.split(..., whole=True)`), with the
    global `batch_size`.

    An epoch is the number of full global batches (drop_last, as the reference's DataLoader);
    `steps` > 0 overrides `epochs`. Data order and augmentation depend only on (seed, step),
    whatever the number of processes.
    """
    per_epoch = steps_per_epoch(len(source), batch_size)
    dataset = train_batches(
        source,
        transform,
        batch_size,
        rng.data_seed(seed),
        keys,
        jax.process_index(),
        jax.process_count(),
    )
    total = total_steps(len(source), batch_size, epochs, steps)
    return TrainingInput(dataset, len(source), per_epoch, total)


def section_input(
    stage: str,
    section: ml_collections.ConfigDict,
    source: Sequence[dict],
    transform: Transform,
    *,
    seed: int,
    keys: tuple[str, ...] = ("image", "labels"),
    detail: str = "",
) -> TrainingInput:
    """`training_input` with a training section's `batch_size`, `epochs` and `steps`, and the
    line that says what `stage` will train on (`detail` appended)."""
    plan = training_input(
        source,
        transform,
        batch_size=section.batch_size,
        epochs=section.epochs,
        steps=section.steps,
        seed=seed,
        keys=keys,
    )
    logging.info(
        "%s: %d examples, %d steps/epoch, %d steps%s",
        stage,
        plan.num_examples,
        plan.steps_per_epoch,
        plan.total_steps,
        f", {detail}" if detail else "",
    )
    return plan


def train(
    stage: str,
    section: ml_collections.ConfigDict,
    source: Sequence[dict],
    training: loop.TrainingProgram,
    *,
    config: ml_collections.ConfigDict,
    mesh: Any,
    workdir: str,
    on_step: Callable[[int], Any] | None = None,
    detail: str = "",
) -> dict[str, Any]:
    """Trains `training` (a trainer's `program()`) on `source` with the section's batch size,
    epochs or steps: `section_input`, then `core.loop.run_training`, resuming from the stage's
    checkpoints. Returns the final states."""
    plan = section_input(
        stage, section, source, training.transform, seed=config.seed, keys=training.keys,
        detail=detail,
    )  # fmt: skip
    return loop.run_training(
        workdir=workdir,
        stage=stage,
        states=training.make_states(),
        updates=training.updates,
        plan=plan,
        mesh=mesh,
        runtime=config.runtime,
        on_step=on_step,
    )
