"""Progress for people: a live bar on a terminal, plain periodic lines in a log file.

On a terminal, `bar` is a tqdm bar and log lines are printed above it (`log_above_bars`), so a
log line is never glued to a stale bar. Elsewhere (SLURM logs, pipes) there are no bars: one
plain line every `every_seconds`, with the rate and the ETA. Only the chief process reports.
"""

import logging as logging_std
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from absl import logging
from tqdm import tqdm

from pnoc_jax.core import distributed

T = TypeVar("T")


def interactive() -> bool:
    return sys.stderr.isatty()


class _LogLines:
    """The non-terminal progress: `desc: 300/625 (48%), 12.3/s, ETA 0:00:27 [key=value]`."""

    def __init__(self, total: int, desc: str, initial: int, every_seconds: float):
        self.total, self.desc, self.n = total, desc, initial
        self.every = every_seconds
        self.start_n, self.start = initial, time.monotonic()
        self.last = self.start
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        first = self.n == self.start_n
        self.n += n
        now = time.monotonic()
        if first or now - self.last >= self.every or self.n == self.total:
            self.last = now
            self.report(now)

    def report(self, now: float) -> None:
        rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
        left = (self.total - self.n) / rate if rate > 0 else float("inf")
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left < 1e7 else "?"
        percent = 100 * self.n / max(self.total, 1)
        logging.info(
            "%s: %d/%d (%.0f%%), %.3g/s, ETA %s%s",
            self.desc, self.n, self.total, percent, rate, eta, self.postfix,
        )  # fmt: skip

    def set_postfix(self, values: dict[str, Any]) -> None:
        self.postfix = " " + ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, initial: int = 0, every_seconds: float = 60.0):
    """A progress reporter with `update(n)`, `set_postfix(dict)` and `close()`."""
    if not distributed.is_chief():
        return _Silent()
    if interactive():
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, smoothing=0.1)
    return _LogLines(total, desc, initial, every_seconds)


def iterate(items: Sequence[T], desc: str) -> Iterator[T]:
    """Yields `items` while reporting progress through them."""
    reporter = bar(len(items), desc)
    for item in items:
        yield item
        reporter.update(1)
    reporter.close()


class _AboveBars:
    """A stream that prints through `tqdm.write`, above any live bar."""

    def write(self, text: str) -> None:
        tqdm.write(text.rstrip("\n"), file=sys.stderr)

    def flush(self) -> None:
        sys.stderr.flush()


def log_above_bars() -> None:
    """On a terminal, route absl's log lines above the live progress bars."""
    if interactive():
        logging.get_absl_handler().python_handler.stream = _AboveBars()


class _QuietLibraries(logging_std.Filter):
    """Drops the INFO chatter of orbax, TFDS, grain and JAX's backend probing (e.g. "Unable to
    initialize backend 'tpu'" on every start); their warnings and errors still show, each once
    and without a traceback (an error that matters reaches `main`, which reports it)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging_std.LogRecord) -> bool:
        libraries = ("orbax", "tensorflow_datasets", "grain", "xla_bridge")
        if not any(lib in record.pathname for lib in libraries):
            return True
        if record.levelno < logging_std.WARNING:
            return False
        message = record.getMessage().splitlines()[0][:300]
        if message in self.seen:
            return False
        self.seen.add(message)
        record.msg, record.args, record.exc_info, record.exc_text = message, None, None, None
        return True


def quiet_libraries() -> None:
    """Installs `_QuietLibraries` on absl's handler: a command's output is its own lines."""
    logging.get_absl_handler().addFilter(_QuietLibraries())
