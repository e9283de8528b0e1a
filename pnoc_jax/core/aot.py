"""Ahead-of-time compilation for accelerators that are not here: TPU topologies and chip figures.

With `jax[tpu]` installed (libtpu), `jax.experimental.topologies` describes the chips of a named
TPU slice ("v5e:4x4") on a machine without a TPU; a mesh over them and abstract arguments
(`jax.ShapeDtypeStruct`, built with `jax.eval_shape`) compile a jitted function for that TPU.
The compiled program gives per-chip memory (XLA's buffer assignment), FLOPs and bytes, and its
HLO text, whose collectives say what the chips exchange. Nothing runs: no array may be placed
on these devices.
"""

import collections
import dataclasses
import os
import re
import time
from typing import Any

import jax
import numpy as np

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """Public per-chip figures: HBM, peak dense bf16 and f32 FLOP/s, HBM bandwidth (bytes/s)."""

    name: str
    device_kind: str  # as `jax.Device.device_kind` names it
    hbm_bytes: int
    peak_bf16: float
    peak_f32: float
    hbm_bandwidth: float
    source: str


# TPU figures: Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
# /v6e): HBM per chip, peak bf16 compute per chip, HBM bandwidth. TPU matrix units take f32
# operands through bf16 passes, so the f32 peak is the bf16 one (an upper bound, hence a lower
# bound of time). GPU figures: NVIDIA's H100 SXM, H200 SXM and A100 80GB SXM datasheets, dense
# (without sparsity); their f32 matmuls run as TF32.
CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, 275e12, 275e12, 1200e9, "cloud.google.com/tpu/docs/v4"),
    "v5e": Chip(
        "v5e", "TPU v5 lite", 16 * GIB, 197e12, 197e12, 819e9, "cloud.google.com/tpu/docs/v5e"
    ),
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, 459e12, 459e12, 2765e9, "cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip(
        "v6e", "TPU v6 lite", 32 * GIB, 918e12, 918e12, 1640e9, "cloud.google.com/tpu/docs/v6e"
    ),
    "h100": Chip("h100", "H100", 80 * 10**9, 989e12, 495e12, 3.35e12, "NVIDIA H100 SXM datasheet"),
    "h200": Chip("h200", "H200", 141 * 10**9, 989e12, 495e12, 4.8e12, "NVIDIA H200 SXM datasheet"),
    "a100": Chip("a100", "A100", 80 * 10**9, 312e12, 156e12, 2.039e12, "NVIDIA A100 datasheet"),
}
TPU_CHIPS = ("v4", "v5e", "v5p", "v6e")
GPU_CHIPS = ("h100", "h200", "a100")


def chip_of_device(device: Any) -> Chip | None:
    """The chip of a device: a TPU's device_kind exactly ("TPU v5" is v5p, "TPU v5 lite" v5e),
    a GPU's by its model name within the device_kind ("NVIDIA H100 80GB HBM3")."""
    for chip in CHIPS.values():
        tpu = chip.name in TPU_CHIPS
        if device.device_kind == chip.device_kind or (
            not tpu and chip.device_kind in device.device_kind
        ):
            return chip
    return None


class TopologyError(ValueError):
    """A topology name libtpu does not know, or libtpu missing; the message is one line."""


def tpu_devices(name: str, num_slices: int = 1) -> list:
    """The abstract devices of the TPU slice `name` ("v5e:2x2", "v4:2x2x1", "v5p:2x2x2"),
    `num_slices` of them for a multi-slice run. Needs libtpu (`pip install -e ".[tpu]"`)."""
    chip_name = name.split(":")[0]
    if chip_name not in TPU_CHIPS or ":" not in name:
        raise TopologyError(
            f"--topology {name!r}: expected <chip>:<shape> with chip one of "
            f"{', '.join(TPU_CHIPS)}, e.g. v5e:2x2, v5e:4x4, v4:2x2x1, v5p:2x2x2"
        )
    # Several processes may compile at once (nothing claims a chip); without this libtpu
    # refuses a second process with its lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(
            topology_name=name, platform="tpu", num_slices=num_slices
        )
    except Exception as error:  # libtpu's errors are long and vary by version
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, ImportError) or "unknown backend" in first.lower():
            raise TopologyError(
                f"--topology {name!r}: compiling for TPUs needs libtpu "
                f'(pip install -e ".[tpu]"): {first}'
            ) from None
        raise TopologyError(
            f"--topology {name!r} (num_slices {num_slices}) is not a TPU slice libtpu knows "
            f"({first[:200]}); e.g. v5e:2x2, v5e:4x4, v4:2x2x1, v5p:2x2x2"
        ) from None
    return list(topology.devices)


def per_device(chip: Chip, devices: list) -> Chip:
    """The share of a chip each device has. libtpu describes a v4 slice by its TensorCores
    (two per chip, `core_on_chip` 0 and 1), where a run on v4 sees one device per chip
    (megacore): each core then gets half the chip's HBM, FLOP/s and bandwidth."""
    cores = len({getattr(d, "core_on_chip", 0) for d in devices})
    if cores == 1:
        return chip
    return dataclasses.replace(
        chip,
        name=f"{chip.name} TensorCore",
        hbm_bytes=chip.hbm_bytes // cores,
        peak_bf16=chip.peak_bf16 / cores,
        peak_f32=chip.peak_f32 / cores,
        hbm_bandwidth=chip.hbm_bandwidth / cores,
    )


@dataclasses.dataclass(frozen=True)
class Compiled:
    """What a compiled program costs one chip: XLA's buffer assignment (bytes), FLOPs and bytes
    accessed per call, and the collectives of its optimised HLO."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments
    temp_bytes: int
    code_bytes: int
    flops: float
    bytes_accessed: float
    collectives: dict[str, int]
    compile_s: float
    # The compiler's refusal when the program cannot fit the chip (its temporaries then are
    # the bytes it said it needs; the other figures are unknown, 0).
    out_of_memory: str = ""

    @property
    def total_bytes(self) -> int:
        """Peak resident bytes per chip: arguments, outputs not aliasing a donated argument,
        temporaries and the program itself."""
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.code_bytes
        )


_COLLECTIVE = re.compile(
    r"\b(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter|ragged-all-to-all)"
    r"(?:-start)?\("
)


def collectives(hlo_text: str) -> dict[str, int]:
    """Counts of each collective op in an HLO module's text (async pairs counted once)."""
    return dict(collections.Counter(_COLLECTIVE.findall(hlo_text)))


_OUT_OF_MEMORY = re.compile(r"Ran out of memory in memory space hbm|Ran out of memory on HBM")
_REQUIRED = re.compile(r"required for HLO temporaries \(([\d.]+)G\)")


def compile_traced(traced: Any) -> Compiled:
    """Lowers and compiles a `jax.jit(...).trace(...)` result; reads its cost and memory. A
    program the TPU compiler refuses for want of HBM comes back with `out_of_memory` set."""
    start = time.perf_counter()
    lowered = traced.lower()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        message = str(error)
        if not _OUT_OF_MEMORY.search(message):
            raise
        required = _REQUIRED.search(message)
        return Compiled(
            argument_bytes=0,
            output_bytes=0,
            alias_bytes=0,
            temp_bytes=int(float(required.group(1)) * GIB) if required else 0,
            code_bytes=0,
            flops=0.0,
            bytes_accessed=0.0,
            collectives={},
            compile_s=time.perf_counter() - start,
            out_of_memory=message.strip().splitlines()[0],
        )
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}

    def size(field: str) -> int:
        return int(getattr(memory, f"{field}_size_in_bytes", 0)) if memory is not None else 0

    return Compiled(
        argument_bytes=size("argument"),
        output_bytes=size("output"),
        alias_bytes=size("alias"),
        temp_bytes=size("temp"),
        code_bytes=size("generated_code"),
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        collectives=collectives(compiled.as_text()),
        compile_s=seconds,
    )


def abstract(tree: Any) -> Any:
    """ShapeDtypeStructs of a tree of arrays or ShapeDtypeStructs (shardings dropped: the
    jitted functions name their own)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def roofline_s(flops: float, bytes_accessed: float, chip: Chip, dtype: str) -> float:
    """Lower bound of a program's time on `chip`: its FLOPs at peak or its bytes at full HBM
    bandwidth, whichever takes longer (collectives and host input not counted)."""
    peak = chip.peak_bf16 if dtype == "bfloat16" else chip.peak_f32
    return max(flops / peak, bytes_accessed / chip.hbm_bandwidth)
