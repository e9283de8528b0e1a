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
    """Initialises a replicated TrainState directly on the mesh (jit with out_shardings).

    `init_variables` may rewrite the freshly initialised variables, e.g. to load pretrained
    backbone weights or a trained checkpoint.
    """

    def init() -> TrainState:
        variables = model.init(key, jnp.zeros(input_shape, jnp.float32), train=False)
        variables = dict(variables)
        if init_variables is not None:
            variables = init_variables(variables)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            tx=tx,
        )

    return jax.jit(init, out_shardings=distributed.replicated(mesh))()


def abstract_state(state_fn: Callable[[], TrainState]) -> TrainState:
    return jax.eval_shape(state_fn)


def variables(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}
