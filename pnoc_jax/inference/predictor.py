"""Jitted batch prediction on this process's devices, for every per-image inference stage."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from pnoc_jax.core import distributed

Predict = Callable[[np.ndarray], np.ndarray]


def local_predictor(
    fn: Callable[[Any, jax.Array], jax.Array], variables: Any
) -> tuple[Predict, int]:
    """`images -> np.ndarray` running jitted `fn(variables, images)` on this process's devices.

    Each process predicts its own images, so the mesh is local: the batch is sharded over the
    local devices and the variables (host arrays, e.g. from `core.weights.load`) replicated on
    them. Returns the predictor and the batch multiple (the local device count): every batch
    must be padded to a multiple of it.
    """
    mesh = distributed.make_mesh(jax.local_devices())
    variables = jax.device_put(variables, distributed.replicated(mesh))
    return distributed.batch_predictor(fn, variables, mesh), len(jax.local_devices())


@dataclasses.dataclass(frozen=True)
class DeviceProgram:
    """One jitted batch prediction a per-image stage runs, as shapes (what `pnoc_jax.plan`
    compiles): `fn(variables, images)` on batches of `images`' shapes, [N, canvas, canvas, 3]
    (or a tuple of arrays with N rows, e.g. DeepLab's images and valid masks)."""

    name: str
    fn: Callable[[Any, Any], jax.Array]
    variables: Any  # ShapeDtypeStructs of the network's variables
    images: Any  # a jax.ShapeDtypeStruct, or a tuple of them

    @property
    def rows(self) -> int:
        """N: the batch's rows (views, flips included, padded to the batch multiple)."""
        return jax.tree.leaves(self.images)[0].shape[0]
