"""The training input: batches are a pure function of (seed, step), the same for any number of
processes (each computes only its rows of every global batch)."""

import numpy as np

from pnoc_jax.data import pipeline


def _source(n: int) -> list[dict]:
    return [
        {"image": np.full((2, 2, 3), i, np.float32), "labels": np.eye(3)[i % 3]} for i in range(n)
    ]


def _noisy(example: dict, rng: np.random.Generator) -> dict:
    """A transform whose output depends on its random numbers, as augmentations do."""
    return {**example, "image": example["image"] + rng.random()}


def test_process_rows_make_the_single_process_batches():
    source, global_batch = _source(37), 8
    whole = pipeline.train_batches(source, _noisy, global_batch, seed=5)
    parts = [
        pipeline.train_batches(source, _noisy, global_batch, 5, process=p, processes=4)
        for p in range(4)
    ]
    for step in (0, 1, 4, 9):  # 4 steps an epoch: 9 is in the third epoch, reshuffled
        expected = whole[step]
        got = [part[step] for part in parts]
        assert all(g["image"].shape[0] == 2 for g in got)
        for key in ("image", "labels"):
            np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), expected[key])
    first_epoch = np.concatenate([whole[s]["image"][:, 0, 0, 0] for s in range(4)])
    assert len(np.unique(np.floor(first_epoch))) == 32  # no example twice within an epoch


def test_steps_per_epoch_drop_the_last_partial_batch():
    assert pipeline.steps_per_epoch(37, 8) == 4


def test_worker_processes_prepare_the_same_batches_as_threads():
    """`runtime.input_workers` never changes what is trained on, resumed mid-stream included."""
    batches = pipeline.train_batches(_source(37), _noisy, 8, seed=5)
    threads = pipeline.iterate_from(batches, 3, workers=0)
    workers = pipeline.iterate_from(batches, 3, workers=2)
    for step in range(3, 9):
        expected, got = next(threads), next(workers)
        np.testing.assert_array_equal(got["image"], batches[step]["image"])
        np.testing.assert_array_equal(got["image"], expected["image"])
