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


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm statistics."""

    batch_stats: Any = struct.field(default_factory=dict)


def create_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    input_shape: tuple[int, ...],
    mesh: Mesh,
    init_variables: Callable[[dict], dict] | None = None,
) -> TrainState:
    """Initialises a TrainState replicated over the mesh (jit with out_shardings).

    `init_variables` may replace the freshly initialised variables (a pretrained backbone, a
    trained checkpoint). It runs outside jit, so large weights are transferred, not compiled in.
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
        )

    return jax.jit(create, out_shardings=repl)(variables)


def variables(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}
