"""Train state: one per network (P-NOC has two), each with its own optax state."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh

from pnoc_jax.core import distributed
from pnoc_jax.core.optim import StepStats


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm statistics and what its updates log about the optimizer."""

    batch_stats: Any = struct.field(default_factory=dict)
    # The optimizer's StepStats (from optim.make_optimizer); None logs grad_norm over every
    # parameter and no lr. Static: not a pytree leaf, never checkpointed.
    step_stats: StepStats | None = struct.field(pytree_node=False, default=None)

    def apply_gradients_with_stats(
        self, *, grads: Any, prefix: str = "", **kwargs: Any
    ) -> tuple["TrainState", dict[str, jax.Array]]:
        """`apply_gradients`, plus the metrics `{prefix}lr` (the base learning rate of this
        optimizer step, when `step_stats` is set) and `{prefix}grad_norm`."""
        if self.step_stats is None:
            stats = {f"{prefix}grad_norm": optax.tree.norm(grads)}
        else:
            stats = {
                f"{prefix}lr": self.step_stats.lr(self.step),
                f"{prefix}grad_norm": self.step_stats.grad_norm(grads),
            }
        return self.apply_gradients(grads=grads, **kwargs), stats


def create_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    input_shape: tuple[int, ...],
    mesh: Mesh,
    init_variables: Callable[[dict], dict] | None = None,
    step_stats: StepStats | None = None,
) -> TrainState:
    """Initialises a TrainState replicated over the mesh (jit with out_shardings).

    `init_variables` may replace the freshly initialised variables (a pretrained backbone, a
    trained checkpoint). It runs outside jit, so large weights are transferred, not compiled in.
    `step_stats` (the second result of `optim.make_optimizer`) lets the updates log `lr`.
    """
    repl = distributed.replicated(mesh)
    dummy = jnp.zeros(input_shape, jnp.float32)
    variables = jax.jit(lambda k: dict(model.init(k, dummy, train=False)), out_shardings=repl)(key)
    if init_variables is not None:
        variables = jax.device_put(init_variables(variables), repl)

    def create(variables: dict) -> TrainState:
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            tx=tx,
            step_stats=step_stats,
        )

    return jax.jit(create, out_shardings=repl)(variables)


def variables(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}
