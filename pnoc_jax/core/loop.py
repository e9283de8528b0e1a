"""The one training loop: alternates any number of jitted updates over named train states.

A strategy supplies `Update`s; the loop owns everything else: resume, periodic and
preemption checkpoints (SIGTERM, Ctrl-C), the NaN guard, metric averaging and writing, the
progress bar, and the export of the final weights that later stages read.
"""

import dataclasses
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview

from pnoc_jax.core import artifacts, distributed, rng, weights
from pnoc_jax.core import progress as progress_lib
from pnoc_jax.core.checkpoint import Checkpointer
from pnoc_jax.core.train_state import TrainState, create_state, variables
from pnoc_jax.core.writers import MetricWriter

# update(state, others, batch, carry, step) -> (state, metrics, carry)
UpdateFn = Callable[[TrainState, dict, dict, Any, jax.Array], tuple[TrainState, dict, Any]]


class Preempted(Exception):
    """Raised after a stop signal once the current step's checkpoint is committed.

    `signum` is the signal: SIGTERM (preemption, SLURM) or SIGINT (a first Ctrl-C);
    `exit_code` is the shell's convention for it, 128 + signum (143 and 130).
    """

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class NonFiniteLoss(RuntimeError):
    """Raised when a metric or a train state becomes NaN/Inf, before anything non-finite is
    saved; every checkpoint kept is finite. The message says which step is kept."""


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


@dataclasses.dataclass(frozen=True)
class TrainingProgram:
    """A training stage apart from its data: what the runner runs and the plan compiles.

    `make_states()` builds the stage's train states (replicated over the mesh; the stage's
    `run` calls it, `pnoc_jax.plan` calls it under `jax.eval_shape`); `updates` are its jitted
    updates; `transform` and `keys` make one training example (`data.pipeline.section_input`
    batches them by `batch_size`, the global batch).
    """

    make_states: Callable[[], dict[str, TrainState]]
    updates: list[Update]
    transform: Callable[[dict, np.random.Generator], dict]
    keys: tuple[str, ...]
    batch_size: int


def one_network(
    name: str,
    model: Any,
    tx: Any,
    input_shape: tuple[int, ...],
    mesh: Any,
    seed: int,
    step_stats: Any = None,
    init: Callable[[dict], dict] | None = None,
) -> Callable[[], dict[str, TrainState]]:
    """`make_states` of a stage that trains one network: `{name: create_state(...)}` from the
    seed's init key (`init` rewrites the fresh variables: a backbone's start)."""

    def make_states() -> dict[str, TrainState]:
        key = rng.init_key(seed)
        return {name: create_state(model, tx, key, input_shape, mesh, init, step_stats)}

    return make_states


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


class StopSignals:
    """Turns SIGTERM and a first SIGINT (Ctrl-C) into `signum`, checked between units of work
    (training steps, images): the loop finishes the unit, saves (`then`: what the log line says
    happens next) and raises `Preempted`. A SIGINT after that raises KeyboardInterrupt at once.
    Installed on the main thread only."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, then: str = "checkpointing and exiting after this step"):
        self.signum: int | None = None
        self.then = then
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def requested(self) -> bool:
        return self.signum is not None

    def preempted(self, where: str) -> "Preempted":
        """The `Preempted` a per-image stage raises once the signal stopped it at `where` (a
        process not signalled itself stops with the others, as by SIGTERM)."""
        by = signal.Signals(self.signum).name if self.signum else "SIGTERM to another process"
        return Preempted(
            f"{where}: stopped by {by}; what is written is whole and kept: rerun the same "
            f"command to continue",
            self.signum or signal.SIGTERM,
        )

    def agreed(self) -> bool:
        """Whether any process was asked to stop: called once at the end of each split of a
        per-image stage by every process, stopped or finished, so that all leave together
        (a process leaving alone makes JAX's coordination service abort the others)."""
        return distributed.any_process(self.requested())

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt(f"{name} after a stop request: exiting without a checkpoint")
        if self.signum is None:
            self.signum = signum
        logging.warning("%s received: %s (Ctrl-C again exits at once)", name, self.then)

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous = {}


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


@jax.jit
def _finite_leaves(states: dict[str, TrainState]) -> dict[str, jax.Array]:
    """Per state, one bool per floating-point leaf (params, batch_stats, optimizer state):
    whether all its values are finite. One jitted reduction; only the bools leave the device."""
    out = {}
    for name, state in states.items():
        leaves = [x for x in jax.tree.leaves(state) if _is_float(x)]
        out[name] = jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] or [jnp.bool_(True)])
    return out


def _key_name(key: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def nonfinite_states(states: dict[str, TrainState]) -> list[str]:
    """One line per train state holding a NaN/Inf: which parts and which arrays; [] if none."""
    flags = jax.device_get(_finite_leaves(states))
    report = []
    for name, state in states.items():
        paths = [
            "/".join(_key_name(k) for k in path)
            for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
            if _is_float(x)
        ]
        bad = [p for p, ok in zip(paths, flags[name][: len(paths)], strict=True) if not ok]
        if not bad:
            continue
        parts = {p.split("/")[0] for p in bad}
        counts = ", ".join(
            f"{part} {sum(b.startswith(part + '/') for b in bad)} of "
            f"{sum(p.startswith(part + '/') for p in paths)} arrays"
            for part in sorted(parts)
        )
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        report.append(f"state {name!r} ({counts}: {', '.join(bad[:3])}{more})")
    return report


def _divergence_message(
    description: str,
    step: int,
    bad_metrics: list[str],
    bad_states: list[str],
    checkpointer: Checkpointer,
) -> str:
    """What went non-finite, which step is kept, and how to go on."""
    what = []
    if bad_metrics:
        plural = "s" if len(bad_metrics) > 1 else ""
        what.append(f"metric{plural} {', '.join(bad_metrics)} (mean since the last log)")
    what.extend(bad_states)
    kept = checkpointer.latest_step()
    if kept is None:
        keep = (
            f"No checkpoint had been saved yet, so rerunning the same config starts {description} "
            f"from scratch"
        )
    else:
        keep = (
            f"Kept: the checkpoint of step {kept} in {checkpointer.directory} (a checkpoint is "
            f"saved only once its states and metrics pass this check). Rerunning the same config "
            f"resumes from step {kept}"
        )
    return (
        f"{description}: non-finite values at step {step}: {'; '.join(what)}. Stopped without "
        f"saving step {step}. {keep}, and will most likely diverge again: training is "
        f"deterministic. To train with other settings (e.g. a lower learning rate), rerun with "
        f"them: a changed config changes the stage's fingerprint, so {description} is retrained "
        f"from step 0 in a fresh folder and this one, checkpoints included, is kept aside as "
        f"{description}.stale-N."
    )


def _average(metrics: list[dict[str, jax.Array]]) -> dict[str, float]:
    """The mean of each scalar over the steps of a logging window.

    Read from this process's replicas, so no device computation runs: in a multi-process run
    an eager op on a global array is a collective every process must issue in the same order.
    """
    host = distributed.to_host(metrics)
    names = dict.fromkeys(k for m in host for k in m)
    return {k: float(np.mean([m[k] for m in host if k in m], dtype=np.float64)) for k in names}


# Steps between the processes' agreement on a stop request (at most; log steps too).
AGREE_EVERY = 10


def _stop_agreed(stop: StopSignals, checkpointer: Checkpointer, done: int, log_every: int) -> bool:
    """Whether to checkpoint and stop after step `done`: a stop signal here, or a preemption
    notice (Orbax's sync point). With several processes the signals arrive at different
    moments, so every `min(log_every, AGREE_EVERY)` steps the processes gather their flags and
    all stop at the same step if any was asked to (one tiny all-gather; between those steps
    none stops, so none waits in a checkpoint while another waits in the next step)."""
    if checkpointer.manager.reached_preemption(done):  # the same answer on every process
        return True
    if jax.process_count() == 1:
        return stop.requested()
    if done % min(log_every, AGREE_EVERY):
        return False
    return distributed.any_process(stop.requested())


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

    Checkpoints are saved by the checkpointer's policy, at the end, and after SIGTERM or a first
    Ctrl-C (then `Preempted` is raised; a second Ctrl-C raises KeyboardInterrupt at once). Every
    log checks the metrics since the previous one, and every save also checks every leaf of
    every state, so a saved checkpoint is never NaN/Inf (`NonFiniteLoss` instead). The writer
    first drops what was logged after `start_step` by an interrupted run. `on_step(step)` is a
    test hook called after each step.
    """
    states = dict(states)
    pending: list[dict[str, jax.Array]] = []
    writer.restart(start_step)
    progress = progress_lib.bar(total_steps, description, initial=start_step)
    with StopSignals() as stop:
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
            preempted = _stop_agreed(stop, checkpointer, done, log_every)
            wants_save = is_last or preempted or checkpointer.manager.should_save(done)
            if done % log_every == 0 or wants_save:
                scalars = _average(pending)
                pending = []
                bad = [k for k, v in scalars.items() if not np.isfinite(v)]
                bad_states = nonfinite_states(states) if bad or wants_save else []
                if bad or bad_states:
                    checkpointer.wait()
                    progress.close()
                    raise NonFiniteLoss(
                        _divergence_message(description, done, bad, bad_states, checkpointer)
                    )
                writer.write(done, {f"train/{k}": v for k, v in scalars.items()})
                progress.set_postfix({k: f"{v:.3f}" for k, v in list(scalars.items())[:3]})
            if wants_save:
                checkpointer.save(done, states, force=is_last or preempted)
            if preempted and not is_last:
                checkpointer.wait()
                progress.close()
                signum = stop.signum or signal.SIGTERM
                raise Preempted(
                    f"{description}: stopped by {signal.Signals(signum).name}; checkpoint saved "
                    f"at step {done} in {checkpointer.directory}; rerun the same command to "
                    f"resume from it",
                    signum,
                )
    progress.close()
    checkpointer.wait()
    writer.flush()
    return states


class InputPlan(Protocol):
    """What a training stage iterates (`data.pipeline.TrainingInput`)."""

    total_steps: int

    def batches(self, start: int, workers: int) -> Iterator[dict[str, np.ndarray]]:
        """This process's host batches from step `start` on, prepared by `workers` processes."""


def run_training(
    *,
    workdir: str,
    stage: str,
    states: dict[str, TrainState],
    updates: list[Update],
    plan: InputPlan,
    mesh: Any,
    runtime: ml_collections.ConfigDict,
    on_step: Callable[[int], Any] | None = None,
) -> dict[str, TrainState]:
    """Trains `states` to `plan.total_steps`, resuming from the stage's latest checkpoint.
    `runtime` (`config.runtime`) gives `ckpt_every`, `log_every` and `input_workers` (processes
    preparing batches: `plan.batches`; 0: threads, -1: automatic).

    Batch s must be a pure function of s, so resuming at step s replays exactly what an
    uninterrupted run would see. At the end the variables of every updated state are exported to
    `<stage>/weights/<state>.npz` (`artifacts.weights_file`), which later stages load.
    """
    for name, state in states.items():
        count = parameter_overview.count_parameters(state.params)
        logging.info("%s: network %r has %s parameters", stage, name, f"{count:,}")
    ckpt = Checkpointer(artifacts.checkpoint_dir(workdir, stage), save_every=runtime.ckpt_every)
    writer = MetricWriter(artifacts.stage_dir(workdir, stage))
    try:
        start, states = ckpt.restore_newest(states, stage)
        if start:
            logging.info("%s: resuming from step %d", stage, start)
        global_batches = (
            distributed.to_global(b, mesh) for b in plan.batches(start, runtime.input_workers)
        )
        with jax.set_mesh(mesh):
            states = train_loop(
                states=states,
                updates=updates,
                batches=global_batches,
                start_step=start,
                total_steps=plan.total_steps,
                checkpointer=ckpt,
                writer=writer,
                log_every=runtime.log_every,
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
