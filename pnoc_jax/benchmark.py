"""Times the train step and TTA inference on the present devices; prints JSON.

    python -m pnoc_jax.benchmark --backbone resnet101 --batch 16 --size 512 --dtype bfloat16
    python -m pnoc_jax.benchmark --strategy pnoc --backbone tiny --batch 16 --size 96
    python -m pnoc_jax.benchmark --strategy pnoc --backbone resnest269 --compile_only
    python -m pnoc_jax.benchmark --saliency ccamh --backbone resnet101 --batch 32 --size 448
    python -m pnoc_jax.benchmark --saliency detector --backbone resnet50 --batch 8 --size 512

`--saliency ccamh` times the C²AM-H train step (`--size` is the crop), `--saliency detector` the
saliency detector's (PoolNet; `--size` is the canvas, `--head_divisor` narrows its head); both
skip the CAM network's step and TTA.

    python -m pnoc_jax.benchmark --task segmentation --backbone resnet101 --batch 16 --size 512 \
        --dtype bfloat16

`--task segmentation` times DeepLabV3+ (or `--segmentation_model deeplabv2`): its train step
(cross-entropy, SGD) and the multi-scale (0.5, 1, 1.5, 2) + flip dense inference of
`infer_segmentation` (logits on fixed canvases, resized to the image and merged on the host;
softmax and the CPU dense CRF are not included).

Reports images/s, step time (median), peak memory and, on GPU/TPU, the model-FLOPs
utilisation (XLA's FLOP count of the compiled step / step time / the chip's peak). Each
update's compiled memory (XLA's buffer assignment: arguments, outputs, temporaries) is
reported too; `--compile_only` stops there, which says whether a batch fits a device without
running it (compiled for the present backend: a CPU's assignment only approximates a GPU's).
`--profile_dir DIR` traces one more P-NOC/CAM train step (open DIR in TensorBoard's profiler or
the perfetto_trace.json.gz in ui.perfetto.dev) and adds its op time by kind to the JSON.

`launch/benchmark.sh` runs the suite (this module, `cpu_benchmark` and the PyTorch P-NOC step);
the measured figures are in docs/performance.md.
"""

import functools
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from pnoc_jax.cam import infer, strategies
from pnoc_jax.core import aot, distributed, optim, profiling, rng
from pnoc_jax.core.loop import jit_update
from pnoc_jax.core.train_state import create_state
from pnoc_jax.inference import tta
from pnoc_jax.models.ccam import CCAM
from pnoc_jax.models.classifier import CAMClassifier
from pnoc_jax.models.poolnet import PoolNet
from pnoc_jax.saliency import train as saliency_train
from pnoc_jax.saliency import train_detector

_BACKBONE = flags.DEFINE_string("backbone", "resnet101", "Backbone name.")
_STRATEGY = flags.DEFINE_enum("strategy", "cam", list(strategies.STRATEGIES), "Strategy.")
_BATCH = flags.DEFINE_integer("batch", 16, "Global batch size.")
_SIZE = flags.DEFINE_integer("size", 512, "Training crop / inference canvas side at scale 1.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_CLASSES = flags.DEFINE_integer("classes", 20, "Number of classes.")
_STRIDE = flags.DEFINE_integer("output_stride", 16, "Output stride.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after one warm-up step.")
_INFER_IMAGES = flags.DEFINE_integer("infer_images", 0, "Images for TTA timing (0: batch).")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Compile the train updates and report FLOPs and memory; run nothing."
)
# saliency
_SALIENCY = flags.DEFINE_enum(
    "saliency", "", ["", "ccamh", "detector"], "Time a saliency train step instead."
)
_HEAD_DIVISOR = flags.DEFINE_integer("head_divisor", 1, "PoolNet head widths divided by this.")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir",
    "",
    "Trace one more train step into this folder (TensorBoard / Perfetto) and report where its "
    "time goes: the compiled ops' time grouped by kind (convolutions, fusions, copies, ...).",
)
# segmentation
_TASK = flags.DEFINE_enum("task", "cam", ["cam", "segmentation"], "What to time.")
_SEG_MODEL = flags.DEFINE_enum(
    "segmentation_model", "deeplabv3plus", ["deeplabv3plus", "deeplabv2"], "Segmentation model."
)


def peak_flops(device, dtype: str) -> float | None:
    """The chip's dense peak FLOP/s in `dtype` (core.aot.CHIPS), None for an unknown chip."""
    chip = aot.chip_of_device(device)
    if chip is None:
        return None
    return chip.peak_bf16 if dtype == "bfloat16" else chip.peak_f32


def peak_memory_bytes() -> int:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # host RSS on CPU


def _time(fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def _memory(compiled) -> dict:
    """XLA's buffer assignment of a compiled update, in bytes (peak ~ arguments + temporaries,
    the outputs reusing the donated state)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    fields = ("argument", "output", "temp", "alias")
    return {f"{f}_bytes": int(getattr(stats, f"{f}_size_in_bytes", 0)) for f in fields}


def benchmark_train(mesh) -> dict:
    dtype = jnp.dtype(_DTYPE.value)
    model = CAMClassifier(_BACKBONE.value, _CLASSES.value, _STRIDE.value, dtype=dtype)
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(lr=0.01, total_steps=1000))
    shape = (1, _SIZE.value, _SIZE.value, 3)
    states = {"f": create_state(model, tx, rng.init_key(0), shape, mesh)}
    oc_model = None
    if strategies.needs_oc(_STRATEGY.value):
        oc_model = CAMClassifier(_BACKBONE.value, _CLASSES.value, _STRIDE.value, True, dtype)
        states["oc"] = create_state(oc_model, tx, rng.init_key(1), shape, mesh)
    if _COMPILE_ONLY.value:
        return compile_train(mesh, model, oc_model, states, shape)
    cfg = strategies.StrategyConfig(_STRATEGY.value, total_steps=1000, label_smoothing=0.1)
    updates = strategies.build_updates(cfg, model=model, oc_model=oc_model, mesh=mesh, seed=0)
    r = np.random.default_rng(0)
    batch = distributed.to_global(
        {
            "image": r.normal(size=(_BATCH.value, *shape[1:])).astype(np.float32),
            "labels": (r.random((_BATCH.value, _CLASSES.value)) < 0.2).astype(np.float32),
        },
        mesh,
    )
    carries: dict[str, object] = {}

    def step():
        carry = None
        for u in updates:
            others = {k: v for k, v in states.items() if k != u.name}
            carries[u.name] = carry
            states[u.name], _, carry = u.fn(states[u.name], others, batch, carry, jnp.asarray(0))
        return states["f"].params

    with jax.set_mesh(mesh):
        step()  # compile + warm-up; records each update's input carry
        flops, memory = 0.0, {}
        for u in updates:
            others = {k: v for k, v in states.items() if k != u.name}
            lowered = u.fn.lower(states[u.name], others, batch, carries[u.name], jnp.asarray(0))
            compiled = lowered.compile()
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            flops += float((cost or {}).get("flops", 0.0))
            memory[f"update_{u.name}"] = _memory(compiled)
        times = _time(step, _STEPS.value)
        profile = profiling.profile_step(step, _PROFILE_DIR.value) if _PROFILE_DIR.value else {}
    median = statistics.median(times)
    result = {
        **profile,
        "train_step_s": median,
        "train_images_per_s": _BATCH.value / median,
        "train_flops_per_step": flops,
        **memory,
    }
    peak = peak_flops(jax.devices()[0], _DTYPE.value)
    if peak and flops:
        result["train_mfu"] = flops / median / (peak * jax.device_count())
    return result


def compile_train(mesh, model, oc_model, states: dict, shape: tuple[int, ...]) -> dict:
    """FLOPs and compiled memory of each update, from abstract inputs (nothing runs)."""
    cfg = strategies.StrategyConfig(_STRATEGY.value, total_steps=1000, label_smoothing=0.1)
    updates = strategies.build_updates(cfg, model=model, oc_model=oc_model, mesh=mesh, seed=0)
    batch = {
        "image": jax.ShapeDtypeStruct((_BATCH.value, *shape[1:]), jnp.float32),
        "labels": jax.ShapeDtypeStruct((_BATCH.value, _CLASSES.value), jnp.float32),
    }
    result, carry = {}, None
    with jax.set_mesh(mesh):
        for u in updates:
            others = {k: v for k, v in states.items() if k != u.name}
            traced = u.fn.trace(states[u.name], others, batch, carry, jnp.asarray(0))
            carry = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), traced.out_info[2]
            )
            start = time.perf_counter()
            compiled = traced.lower().compile()
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            result[f"update_{u.name}"] = {
                "compile_s": time.perf_counter() - start,
                "flops": float((cost or {}).get("flops", 0.0)),
                **_memory(compiled),
            }
    return result


def benchmark_tta() -> dict:
    dtype = jnp.dtype(_DTYPE.value)
    model = CAMClassifier(_BACKBONE.value, _CLASSES.value, _STRIDE.value, dtype=dtype)
    variables = jax.jit(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )()
    predict, batch_multiple = infer.cam_predictor(model, jax.device_get(variables))
    n = _INFER_IMAGES.value or max(_BATCH.value // 2, 1)
    images = [
        np.random.default_rng(i).integers(0, 255, (_SIZE.value, _SIZE.value, 3), np.uint8)
        for i in range(n)
    ]
    run = lambda: tta.multiscale_flip_sums(
        images, predict, (0.5, 1.0, 1.5, 2.0), _SIZE.value, _STRIDE.value, batch_multiple
    )
    run()  # compile every scale
    times = _time(run, max(_STEPS.value // 2, 1))
    median = statistics.median(times)
    return {"tta_images_per_s": n / median, "tta_batch_s": median, "tta_images_per_batch": n}


# ----------------------------------------------------------------------------------------- saliency
def _time_update(update, state, batch, mesh, name: str) -> dict:
    """Median step time, images/s, XLA FLOPs and MFU of one jitted update."""
    box = {"state": state}

    def step():
        box["state"], metrics, _ = update(box["state"], {}, batch, None, jnp.asarray(0))
        return metrics["loss"]

    with jax.set_mesh(mesh):
        step()
        lowered = update.lower(box["state"], {}, batch, None, jnp.asarray(0))
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float((cost or {}).get("flops", 0.0))
        median = statistics.median(_time(step, _STEPS.value))
    result = {
        f"{name}_step_s": median,
        f"{name}_images_per_s": _BATCH.value / median,
        f"{name}_flops_per_step": flops,
    }
    peak = peak_flops(jax.devices()[0], _DTYPE.value)
    if peak and flops:
        result[f"{name}_mfu"] = flops / median / (peak * jax.device_count())
    return result


def benchmark_saliency(mesh) -> dict:
    """The C²AM-H (hint loss included) or detector train step on random data."""
    dtype = jnp.dtype(_DTYPE.value)
    b, size = _BATCH.value, _SIZE.value
    r = np.random.default_rng(0)
    image = r.normal(size=(b, size, size, 3)).astype(np.float32)
    if _SALIENCY.value == "ccamh":
        model = CCAM(_BACKBONE.value, _STRIDE.value, dtype=dtype)
        section = ml_collections.ConfigDict(
            dict(lr=0.001, accumulate_steps=1, weight_decay=1e-4, momentum=0.0, poly_power=0.9,
                 lr_mult=(1.0, 2.0, 10.0, 20.0))
        )  # fmt: skip
        tx, stats = saliency_train.make_optimizer(section, 1000)
        fn = functools.partial(
            saliency_train.ccam_update, model=model, alpha=0.25, hint_weight=1.0,
            hint_threshold=0.4, label_smoothing=0.1, hints=True,
        )  # fmt: skip
        batch = {"image": image, "hint": r.uniform(0, 1, (b, size, size)).astype(np.float32)}
    else:
        model = PoolNet(_BACKBONE.value, dtype=dtype, head_divisor=_HEAD_DIVISOR.value)
        section = ml_collections.ConfigDict(dict(lr=5e-5, accumulate_steps=1, weight_decay=5e-4))
        tx, stats = train_detector.make_optimizer(section)
        fn = functools.partial(train_detector.detector_update, model=model)
        batch = {
            "image": image,
            "target": r.uniform(0, 1, (b, size, size)).astype(np.float32),
            "valid": np.ones((b, size, size), np.float32),
        }
    state = create_state(model, tx, rng.init_key(0), (1, size, size, 3), mesh, None, stats)
    update = jit_update(fn, mesh)
    return _time_update(update, state, distributed.to_global(batch, mesh), mesh, _SALIENCY.value)


# ------------------------------------------------------------------------------------- segmentation
def _compiled_flops(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", 0.0))


def _segmentation_spec():
    from pnoc_jax.segmentation import model as seg_model

    names = ("background", *(f"c{i}" for i in range(_CLASSES.value)))
    return seg_model.ModelSpec(
        _SEG_MODEL.value, _BACKBONE.value, _CLASSES.value + 1, _STRIDE.value, (), 256, 48,
        names, "benchmark",
    )  # fmt: skip


def benchmark_segmentation_train(mesh) -> dict:
    """The DeepLab train step (CE with label smoothing, SGD) on random images and labels."""
    from pnoc_jax.segmentation import train as seg_train

    spec = _segmentation_spec()
    model = spec.build(frozen_bn=spec.model == "deeplabv2", dtype=_DTYPE.value)
    tx, stats = optim.make_optimizer(optim.OptimizerConfig(lr=0.007, total_steps=1000))
    shape = (1, _SIZE.value, _SIZE.value, 3)
    state = create_state(model, tx, rng.init_key(0), shape, mesh, None, stats)
    update = seg_train.build_update(model, mesh, label_smoothing=0.1, seed=0)
    r = np.random.default_rng(0)
    batch = {
        "image": r.normal(size=(_BATCH.value, *shape[1:])).astype(np.float32),
        "mask": r.integers(0, spec.num_classes, (_BATCH.value, *shape[1:3])).astype(np.uint8),
    }
    return _time_update(update.fn, state, distributed.to_global(batch, mesh), mesh, "train")


def benchmark_segmentation_inference() -> dict:
    """Scales 0.5/1/1.5/2 x flip on `--size`² images, as infer_segmentation runs them."""
    from pnoc_jax.inference import dense, predictor
    from pnoc_jax.segmentation import model as seg_model

    spec = _segmentation_spec()
    model = spec.build(dtype=_DTYPE.value)
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))()
    forward = seg_model.inference_fn(model)
    predict, multiple = predictor.local_predictor(forward, jax.device_get(variables))
    n = _INFER_IMAGES.value or max(_BATCH.value // 2, 1)
    images = [
        np.random.default_rng(i).integers(0, 255, (_SIZE.value, _SIZE.value, 3), np.uint8)
        for i in range(n)
    ]
    scales = (0.5, 1.0, 1.5, 2.0)
    run = lambda: dense.multiscale_logits(images, predict, scales, _SIZE.value, multiple, True)
    run()  # compile every scale
    times = _time(run, max(_STEPS.value // 2, 1))
    median = statistics.median(times)
    flops = 0.0  # per image: both views at every scale
    jitted = jax.jit(forward)
    for scale in scales:
        canvas = tta.canvas_size(_SIZE.value, scale)
        views = dense.on_canvas([tta.resize_image(images[0], scale)], canvas, 1, flip=True)
        flops += _compiled_flops(jitted, variables, views)
    result = {
        "ms_flip_images_per_s": n / median,
        "ms_flip_batch_s": median,
        "ms_flip_images_per_batch": n,
        "ms_flip_flops_per_image": flops,
    }
    peak = peak_flops(jax.devices()[0], _DTYPE.value)
    if peak and flops:
        result["ms_flip_mfu"] = flops * n / median / (peak * jax.local_device_count())
    return result


def main(argv) -> None:
    del argv
    mesh = distributed.make_mesh()
    result = {
        "backbone": _BACKBONE.value,
        "strategy": _STRATEGY.value,
        "batch": _BATCH.value,
        "size": _SIZE.value,
        "dtype": _DTYPE.value,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
    }
    if _SALIENCY.value:
        result.update(saliency=_SALIENCY.value, head_divisor=_HEAD_DIVISOR.value)
        result.update(benchmark_saliency(mesh))
        result["peak_memory_bytes"] = peak_memory_bytes()
        print(json.dumps(result, indent=2))
        return
    if _TASK.value == "segmentation":
        result.update(task="segmentation", model=_SEG_MODEL.value)
        del result["strategy"]
        result.update(benchmark_segmentation_train(mesh))
        result.update(benchmark_segmentation_inference())
        result["peak_memory_bytes"] = peak_memory_bytes()
        print(json.dumps(result, indent=2))
        return
    result.update(benchmark_train(mesh))
    if not _COMPILE_ONLY.value:
        result.update(benchmark_tta())
    result["peak_memory_bytes"] = peak_memory_bytes()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
