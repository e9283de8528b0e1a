"""Orbax checkpointing of one or more named train states, saved together at the same step."""

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
