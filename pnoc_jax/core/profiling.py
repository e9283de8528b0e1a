"""Where a compiled step's time goes: trace it with the JAX profiler and sum its op events.

Used by `python -m pnoc_jax.benchmark --profile_dir DIR`; the trace in DIR opens in
TensorBoard's profiler, or its perfetto_trace.json.gz in ui.perfetto.dev.
"""

import glob
import gzip
import json
from collections import Counter

import jax


def op_kind(name: str) -> str:
    """An XLA op's kind from its name: `ynn_fusion.12` -> `ynn_fusion`, `%convolution.3` ->
    `convolution`."""
    return name.lstrip("%").split(".")[0].rstrip("0123456789_") or name


def profile_step(fn, folder: str, top: int = 12) -> dict:
    """Runs `fn` (one train step) under `jax.profiler.trace` into `folder`, then sums the
    trace's compiled-op events (those naming an `hlo_op`): [seconds, share of the ops' total]
    per op kind and for the `top` ops. Ops on parallel threads overlap, so the total may exceed
    the step's wall time."""
    with jax.profiler.trace(folder, create_perfetto_trace=True):
        jax.block_until_ready(fn())
    files = sorted(glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True))
    if not files:
        return {"profile_dir": folder, "profile_error": "no perfetto trace written"}
    with gzip.open(files[-1]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ops: Counter = Counter()
    for event in events:  # the compiled ops' events name their HLO op; host events do not
        if event.get("ph") == "X" and "hlo_op" in event.get("args", {}):
            ops[event["name"]] += event.get("dur", 0) / 1e6
    total = sum(ops.values()) or 1.0
    kinds: Counter = Counter()
    for name, seconds in ops.items():
        kinds[op_kind(name)] += seconds
    return {
        "profile_dir": folder,
        "profile_ops_s": round(total, 4),
        "profile_by_kind": {k: [round(v, 4), round(v / total, 3)] for k, v in kinds.most_common()},
        "profile_top_ops": {k: [round(v, 4), round(v / total, 3)] for k, v in ops.most_common(top)},
    }
