"""The one training loop: alternates any number of jitted updates over named train states.

A strategy supplies `Update`s; the loop owns everything else: resume, periodic and
preemption checkpoints, the NaN guard, metric averaging and writing, the progress bar, and the
export of the final weights that later stages read.
"""

import dataclasses
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metrics as clu_metrics

from pnoc_jax.core import artifacts, distributed, weights
from pnoc_jax.core import progress as progress_lib
from pnoc_jax.core.checkpoint import Checkpointer
from pnoc_jax.core.train_state import TrainState, variables
from pnoc_jax.core.writers import MetricWriter

# update(state, others, batch, carry, step) -> (state, metrics, carry)
UpdateFn = Callable[[TrainState, dict, dict, Any, jax.Array], tuple[TrainState, dict, Any]]


class Preempted(Exception):
    """Raised after a SIGTERM once the current step's checkpoint is committed."""


class NonFiniteLoss(RuntimeError):
    """Raised when a metric becomes NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class Update:
    """One jitted update of the state `name`, run when (step + 1) % every == 0.

    `fn` receives its own state (donated), the other states read-only, the batch, the carry
    produced by the update before it in the same step (None for the first; a pytree the two
    updates agree on, e.g. `cam.strategies.NocInput`), and the step number.
    """

    name: str
    fn: UpdateFn
    every: int = 1


def jit_update(fn: UpdateFn, mesh: Any) -> UpdateFn:
    """Jits an update: own state donated and replicated, other states replicated, batch
    sharded along "data", carry as it comes, step replicated."""
    repl, data = distributed.replicated(mesh), distributed.data_sharded(mesh)
    return jax.jit(
        fn,
        in_shardings=(repl, repl, data, None, repl),
        out_shardings=(repl, repl, None),
        donate_argnums=0,
    )


class _SigtermFlag:
    """Turns SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: checkpointing and exiting after this step")
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _average(metrics: list[dict[str, jax.Array]]) -> dict[str, clu_metrics.Average]:
    """Merges per-step scalars into clu Averages (on device, no host sync)."""
    merged: dict[str, clu_metrics.Average] = {}
    for m in metrics:
        for k, v in m.items():
            avg = clu_metrics.Average.from_model_output(jnp.asarray(v, jnp.float32))
            merged[k] = merged[k].merge(avg) if k in merged else avg
    return merged


def train_loop(
    *,
    states: dict[str, TrainState],
    updates: list[Update],
    batches: Iterator[dict[str, jax.Array]],
    start_step: int,
    total_steps: int,
    checkpointer: Checkpointer,
    writer: MetricWriter,
    log_every: int,
    description: str = "train",
    on_step: Callable[[int], Any] | None = None,
) -> dict[str, TrainState]:
    """Runs steps `start_step .. total_steps-1`; returns the final states.

    Checkpoints are saved by the checkpointer's policy and always at the end. Each saved
    checkpoint is preceded by a finiteness check of every metric since the previous check, so
    a saved checkpoint is never NaN. `on_step(step)` is a test hook called after each step.
    """
    states = dict(states)
    pending: list[dict[str, jax.Array]] = []
    progress = progress_lib.bar(total_steps, description, initial=start_step)
    with _SigtermFlag() as sigterm:
        for step in range(start_step, total_steps):
            batch = next(batches)
            carry: Any = None
            step_metrics: dict[str, jax.Array] = {}
            step_arr = jnp.asarray(step, jnp.int32)
            for update in updates:
                if (step + 1) % update.every:
                    continue
                others = {k: v for k, v in states.items() if k != update.name}
                states[update.name], m, carry = update.fn(
                    states[update.name], others, batch, carry, step_arr
                )
                step_metrics.update(m)
            pending.append(step_metrics)
            done = step + 1
            progress.update(1)
            if on_step is not None:
                on_step(done)
            is_last = done == total_steps
            preempted = sigterm.raised or checkpointer.manager.reached_preemption(done)
            wants_save = is_last or preempted or checkpointer.manager.should_save(done)
            if done % log_every == 0 or wants_save:
                scalars = {k: float(v.compute()) for k, v in _average(pending).items()}
                pending = []
                bad = [k for k, v in scalars.items() if not np.isfinite(v)]
                if bad:
                    checkpointer.wait()
                    raise NonFiniteLoss(
                        f"{description}: non-finite {', '.join(bad)} at step {done}; stopping. "
                        f"The last good checkpoint (step {checkpointer.latest_step()}) is kept."
                    )
                writer.write(done, {f"train/{k}": v for k, v in scalars.items()})
                progress.set_postfix({k: f"{v:.3f}" for k, v in list(scalars.items())[:3]})
            if wants_save:
                checkpointer.save(done, states, force=is_last or preempted)
            if preempted and not is_last:
                checkpointer.wait()
                progress.close()
                raise Preempted(f"{description}: preempted; checkpoint saved at step {done}")
    progress.close()
    checkpointer.wait()
    writer.flush()
    return states


class InputPlan(Protocol):
    """What a training stage iterates (`data.pipeline.TrainingInput`)."""

    total_steps: int

    def batches(self, start: int) -> Iterator[dict[str, np.ndarray]]:
        """This process's host batches from step `start` on."""


def run_training(
    *,
    workdir: str,
    stage: str,
    states: dict[str, TrainState],
    updates: list[Update],
    plan: InputPlan,
    mesh: Any,
    ckpt_every: int,
    log_every: int,
    on_step: Callable[[int], Any] | None = None,
) -> dict[str, TrainState]:
    """Trains `states` to `plan.total_steps`, resuming from the stage's latest checkpoint.

    Batch s must be a pure function of s, so resuming at step s replays exactly what an
    uninterrupted run would see. At the end the variables of every updated state are exported to
    `<stage>/weights/<state>.npz` (`artifacts.weights_file`), which later stages load.
    """
    ckpt = Checkpointer(artifacts.checkpoint_dir(workdir, stage), save_every=ckpt_every)
    writer = MetricWriter(artifacts.stage_dir(workdir, stage))
    try:
        start = ckpt.latest_step() or 0
        if start:
            logging.info("%s: resuming from step %d", stage, start)
            states = ckpt.restore(start, states)
        global_batches = (distributed.to_global(b, mesh) for b in plan.batches(start))
        with jax.set_mesh(mesh):
            states = train_loop(
                states=states,
                updates=updates,
                batches=global_batches,
                start_step=start,
                total_steps=plan.total_steps,
                checkpointer=ckpt,
                writer=writer,
                log_every=log_every,
                description=stage,
                on_step=on_step,
            )
    finally:
        ckpt.close()
        writer.close()
    if distributed.is_chief():
        for name in dict.fromkeys(u.name for u in updates):
            path = artifacts.weights_file(workdir, stage, name)
            weights.save(distributed.to_host(variables(states[name])), path)
    distributed.barrier(f"{stage}-weights")
    return states
