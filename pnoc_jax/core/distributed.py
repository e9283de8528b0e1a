"""Process and device set-up: one 1-D ("data",) mesh; parameters replicated, batches sharded.

Everything that places arrays on devices goes through this module, so the sharding rules
live in one place.
"""

import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize(
    force: bool = False,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins the processes of a multi-process run: `jax.distributed.initialize()`.

    Automatic on Cloud TPU pods and under SLURM `srun`; explicit with a coordinator address
    (`host:port`), the number of processes and this one's id (e.g. N processes on one machine,
    `launch/local_multiprocess.sh`). Must run before any device access.
    """
    on_slurm = "SLURM_JOB_ID" in os.environ and "SLURM_STEP_NODELIST" in os.environ
    on_tpu_pod = (
        "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
    )
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif force or on_slurm or on_tpu_pod:
        jax.distributed.initialize()
    else:
        return
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's slice of a batch into global arrays sharded along the batch axis."""
    sharding = data_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def is_chief() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (one tiny all-gather; every process must call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(allgather(np.asarray(flag, np.int32)).any())


def allgather(x: np.ndarray) -> np.ndarray:
    """Stacks a host array from every process along a new leading axis."""
    if jax.process_count() == 1:
        return np.asarray(x)[None]
    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def to_host(tree):
    """NumPy copy of a tree of replicated arrays; in multi-process runs, this process's replica."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def batch_predictor(fn, variables, mesh: Mesh):
    """`images -> np.ndarray` running jitted `fn(variables, images)` with the batch sharded
    along "data" over `mesh` and the variables replicated (inference on fixed canvases).

    `mesh` holds this process's devices (each process predicts its own images), so the batch
    is placed on them explicitly: jit refuses host arrays with a sharding in multi-process runs.
    """
    data = data_sharded(mesh)
    jitted = jit_predictor(fn, mesh)
    return lambda images: np.asarray(jitted(variables, jax.device_put(images, data)))


def jit_predictor(fn, mesh: Mesh):
    """`fn(variables, images)` jitted with the variables replicated over `mesh` and the batch
    (and the output) sharded along "data"."""
    data = data_sharded(mesh)
    return jax.jit(fn, in_shardings=(replicated(mesh), data), out_shardings=data)
