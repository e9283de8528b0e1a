"""MetricWriter: JSON lines and TensorBoard events (tensorboard package only), and restarts."""

import os

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_accumulator import (
    EventAccumulator as ServerAccumulator,
)
from tensorboard.util import tensor_util

from pnoc_jax.core import writers


def tensorboard_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard reads `<directory>/tensorboard/` (purges
    included): the EventAccumulator of tensorboard's Python API, checked against the one the
    TensorBoard server uses (scalars as tensors; it ignores a folder's first SessionLog START)."""
    logdir = os.path.join(directory, "tensorboard")
    accumulator = EventAccumulator(logdir)
    accumulator.Reload()
    scalars = {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }
    server = ServerAccumulator(logdir)
    server.Reload()
    tensors = {
        tag: [
            (e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in server.Tensors(tag)
        ]
        for tag in server.Tags()["tensors"]
    }
    assert tensors == scalars
    return scalars


def test_events_match_the_json_lines(tmp_path):
    writer = writers.MetricWriter(str(tmp_path))
    writer.restart(0)
    for step in (1, 2, 3):
        writer.write(step, {"train/loss": 1.0 / step, "train/lr": 0.1})
    writer.close()
    rows = writers.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3]
    events = tensorboard_scalars(str(tmp_path))
    assert set(events) == {"train/loss", "train/lr"}
    for tag, points in events.items():
        assert points == [(r["step"], np.float32(r[tag])) for r in rows]


def test_restart_drops_later_rows_and_events(tmp_path):
    crashed = writers.MetricWriter(str(tmp_path))
    crashed.restart(0)
    for step in range(1, 6):
        crashed.write(step, {"train/loss": float(step)})
    crashed.close()
    with open(os.path.join(tmp_path, "metrics.jsonl"), "a") as f:
        f.write('{"step": 6, "ti')  # a line cut short by the crash

    resumed = writers.MetricWriter(str(tmp_path))
    resumed.restart(3)  # the checkpoint resumed from is at step 3
    assert [r["step"] for r in writers.read_metrics(str(tmp_path))] == [1, 2, 3]
    for step in (4, 5):
        resumed.write(step, {"train/loss": 10.0 * step})
    resumed.close()

    rows = writers.read_metrics(str(tmp_path))
    assert [(r["step"], r["train/loss"]) for r in rows] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)
    ]  # fmt: skip
    assert tensorboard_scalars(str(tmp_path))["train/loss"] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)
    ]  # fmt: skip
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # atomic rewrite


def test_event_files_sort_in_the_order_they_were_made(tmp_path):
    """TensorBoard reads a folder's event files in name order (file 10 after file 9)."""
    paths = [writers.EventFile(str(tmp_path)).path for _ in range(12)]
    assert sorted(paths) == paths
