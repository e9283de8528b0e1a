"""Metric writing on the chief process: JSON lines, TensorBoard (tensorboardX) and the log."""

import json
import os
import time
from typing import Any

from absl import logging

from pnoc_jax.core import distributed


class MetricWriter:
    """Appends `{"step": s, "time": t, **scalars}` lines to `<dir>/metrics.jsonl`.

    Also writes TensorBoard events to `<dir>/tensorboard` when tensorboardX is importable.
    A no-op on every process but the chief.
    """

    def __init__(self, directory: str, tensorboard: bool = True):
        self.active = distributed.is_chief()
        self.path = os.path.join(directory, "metrics.jsonl")
        self._tb = None
        if not self.active:
            return
        os.makedirs(directory, exist_ok=True)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                logging.info("tensorboardX not installed: metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.active:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, int(step))
        logging.info(
            "step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items()))
        )

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(directory: str) -> list[dict[str, float]]:
    """Reads back `<dir>/metrics.jsonl` (for notebooks and tests)."""
    path = os.path.join(directory, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
