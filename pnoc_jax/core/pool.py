"""The per-image CPU process pool of every NumPy stage (CRF, random walk, file I/O).

No jax import: workers are started with forkserver (or spawn) and import only the module of the
task function, never a process that has initialised JAX.
"""

import collections
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def _worker_init() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides (it lets the
    # tasks in flight finish), so a worker never dies half-way through writing a file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One BLAS/OpenMP thread per worker: the pool already uses every core.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    import cv2

    cv2.setNumThreads(1)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: Iterable[Any],
    num_workers: int,
    max_pending: int = 0,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Any]:
    """Runs `fn` over `tasks` and yields the results in task order.

    num_workers 0 = one per CPU; 1 = in this process (no pool). Otherwise a `forkserver` pool
    with at most `max_pending` (default 4·workers) tasks in flight, so a producer that computes
    task inputs lazily (e.g. edges on the accelerator) overlaps with the CPU work without
    queueing the whole split in memory. `fn` must be a module-level function (picklable).
    Once `stop()` is true no task is started; those in flight finish and are yielded.
    """
    num_workers = num_workers or default_workers()
    if num_workers == 1:
        for task in tasks:
            if stop():
                return
            yield fn(task)
        return
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    max_pending = max_pending or 4 * num_workers
    with ctx.Pool(num_workers, initializer=_worker_init) as pool:
        pending: collections.deque = collections.deque()
        for task in tasks:
            if stop():
                break
            pending.append(pool.apply_async(fn, (task,)))
            while len(pending) >= max_pending:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
