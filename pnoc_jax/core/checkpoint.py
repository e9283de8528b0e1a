"""Orbax checkpointing of one or more named train states, saved together at the same step."""

import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from pnoc_jax.core import distributed, fileio
from pnoc_jax.core.errors import UserError, first_line
from pnoc_jax.core.train_state import TrainState


class Checkpointer:
    """Saves `{name: TrainState}` every `save_every` steps (and when forced); keeps the last `keep`.

    A checkpoint at step s holds the states after s completed steps. Saving is asynchronous;
    `wait()` blocks until the last save is committed.
    """

    def __init__(self, directory: str, save_every: int, keep: int = 2):
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.AnySavePolicy(
                [
                    policies.FixedIntervalPolicy(max(save_every, 1)),
                    policies.PreemptionCheckpointingPolicy(),
                ]
            ),
            preservation_policy=policies.LatestN(keep),
            enable_async_checkpointing=True,
        )
        self.directory = directory
        self.manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, states: dict[str, TrainState], force: bool = False) -> bool:
        items = {name: ocp.args.StandardSave(state) for name, state in states.items()}
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, like: dict[str, TrainState]) -> dict[str, TrainState]:
        """Restores into the structure, dtypes and shardings of `like` (concrete or abstract)."""
        abstract = {
            name: jax.tree.map(ocp.utils.to_shape_dtype_struct, s) for name, s in like.items()
        }
        items = {name: ocp.args.StandardRestore(a) for name, a in abstract.items()}
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {name: restored[name] for name in like}

    def restore_newest(
        self, like: dict[str, TrainState], what: str
    ) -> tuple[int, dict[str, TrainState]]:
        """(step, states) of the newest checkpoint that restores; (0, like) when there is none.

        A checkpoint that cannot be restored (files missing or damaged) is reported and moved
        out of the way, to `<ckpt>.damaged-<step>` (the training would otherwise save that
        step again on top of it), and the one before it is tried. When every kept checkpoint is
        damaged: a UserError naming the folder and what to do.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                restored = self.restore(step, like)
            except Exception as e:  # a damaged checkpoint fails in Orbax, TensorStore or JSON
                failures.append(step)
                logging.warning(
                    "%s: checkpoint step %d in %s cannot be restored (%s); trying an older one",
                    what, step, self.directory, first_line(e, 200),
                )  # fmt: skip
                continue
            if failures:
                self._set_aside(failures)
                logging.warning(
                    "%s: resuming from step %d, the newest checkpoint that restores; the damaged "
                    "ones are moved to %s.damaged-<step>", what, step, self.directory,
                )  # fmt: skip
            return step, restored
        if steps:
            raise UserError(
                f"{what}: no checkpoint in {self.directory} can be restored (steps "
                f"{', '.join(map(str, failures))} are damaged); delete that folder to train the "
                f"stage from the start"
            )
        return 0, like

    def _set_aside(self, steps: list[int]) -> None:
        """Moves checkpoint folders that do not restore to `<ckpt>.damaged-<step>`."""
        distributed.barrier("checkpoint-set-aside")
        if distributed.is_chief():
            for step in steps:
                source = os.path.join(self.directory, str(step))
                fileio.move_tree(source, f"{self.directory}.damaged-{step}")
        distributed.barrier("checkpoint-set-aside-done")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
