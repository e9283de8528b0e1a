"""Metric writing on the chief process: JSON lines, TensorBoard event files and the log.

TensorBoard events are written with the `tensorboard` package alone (its record writer and
protos; no TensorFlow). Every run, resumed at step K or started at K = 0, first calls
`MetricWriter.restart(K)`: rows of `metrics.jsonl` after K (logged after the checkpoint it
resumes from) are dropped, and a SessionLog START at step K + 1 makes TensorBoard discard the
events of steps >= K + 1 read before it (it ignores the first START of a run folder, so the
fresh start writes one too).

Both go through `core.fileio`, so the stage folder may be on an object store (gs://): there an
append rewrites the object whole (`fileio.append_bytes`), which TensorBoard reads like a file
that grew.
"""

import io
import itertools
import json
import os
import socket
import time
from typing import Any

from absl import logging
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from pnoc_jax.core import distributed, fileio

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class EventFile:
    """One TensorBoard event file, appended to synchronously: each event is on disk when `add`
    returns.

    TensorBoard reads a folder's event files in name order, so a file must sort after those
    written before it: its name holds the time in seconds, host, pid and a zero-padded
    per-process counter (tensorboard's EventFileWriter puts file 10 of a second before file 9).
    """

    _counter = itertools.count()

    def __init__(self, logdir: str):
        fileio.makedirs(logdir)
        stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, f"events.out.tfevents.{stamp}.{next(self._counter):06d}")
        self.add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add(self, event: event_pb2.Event) -> None:
        record = io.BytesIO()
        RecordWriter(record).write(event.SerializeToString())
        fileio.append_bytes(self.path, record.getvalue())


class MetricWriter:
    """Appends `{"step": s, "time": t, **scalars}` lines to `<dir>/metrics.jsonl` and writes
    the same scalars as TensorBoard events under `<dir>/tensorboard/`.

    A no-op on every process but the chief. Each write reaches the files before `write`
    returns, so a killed run loses no logged row or event.
    """

    def __init__(self, directory: str, tensorboard: bool = True):
        self.active = distributed.is_chief()
        self.path = os.path.join(directory, METRICS_FILE)
        self.tensorboard_dir = os.path.join(directory, TENSORBOARD_DIR)
        self._tb: EventFile | None = None
        if not self.active:
            return
        fileio.makedirs(directory)
        if tensorboard:
            self._tb = EventFile(self.tensorboard_dir)

    def restart(self, step: int) -> None:
        """Marks the (re)start of training at `step`: drops the rows of `metrics.jsonl` with a
        larger step (rewritten atomically; lines cut by a crash go too) and writes a SessionLog
        START at `step + 1`, which makes TensorBoard purge the earlier events after `step`."""
        if not self.active:
            return
        if fileio.exists(self.path):
            lines = [line for line in fileio.read_text(self.path).splitlines() if line.strip()]
            steps = [_step_of(line) for line in lines]
            kept = [line for line, s in zip(lines, steps) if s is not None and s <= step]
            if len(kept) < len(lines):
                fileio.write_text(self.path, "".join(f"{line}\n" for line in kept))
                logging.info(
                    "%s: dropped %d rows after step %d (logged after the checkpoint resumed from)",
                    self.path,
                    len(lines) - len(kept),
                    step,
                )
        if self._tb is not None:
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            event = event_pb2.Event(wall_time=time.time(), step=int(step) + 1, session_log=start)
            self._tb.add(event)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.active:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        fileio.append_text(
            self.path, json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n"
        )
        if self._tb is not None:
            values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
            summary = summary_pb2.Summary(value=values)
            event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
            self._tb.add(event)
        logging.info(
            "step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items()))
        )

    def flush(self) -> None:
        """Nothing to do: every write is already on disk (kept for callers)."""

    def close(self) -> None:
        self._tb = None


def _step_of(line: str) -> int | None:
    """The step of a `metrics.jsonl` line; None for a line a crash cut short."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(directory: str) -> list[dict[str, float]]:
    """Reads back `<dir>/metrics.jsonl` (for notebooks and tests)."""
    path = os.path.join(directory, METRICS_FILE)
    return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]
