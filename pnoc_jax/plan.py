r"""Whether a recipe fits an accelerator and how long it takes, compiled here: no data, no weights.

    python -m pnoc_jax.plan --config configs/pnoc_voc.py --topology v5e:4x4 [--json plan.json]
    python -m pnoc_jax.plan --config configs/pnoc_voc.py:backbone=resnet50 --topology v4:2x2x1 \
        --config.train.dtype=bfloat16
    python -m pnoc_jax.plan --config configs/pnoc_coco.py --gpu h100 --gpus 8

Every training stage of `config.stages` is built by its own `program()` (the one its `run`
uses: the same states, jitted updates, mesh and shardings), its states made abstract with
`jax.eval_shape`, its batch's shapes taken from its own transform, and each update compiled
for the TPU slice `--topology` (needs libtpu: `pip install -e ".[tpu]"`; `--num_slices 2` for
two slices). Every per-image stage with a network (CAM, saliency and detector inference, the
random walk's edges, DeepLab's inference) gives its batches through its own `device_programs`
(its run's network function, at the batch its run pads to: `runtime.predict_batch_size`
images, with their flips, on each scale's canvas), compiled on one host's chips as its run
jits them (each host predicts its own images). Per program it prints the global and per-chip
batch, parameters, per-chip memory (XLA's buffer assignment) against the chip's HBM, FLOPs and
bytes per chip per step, the collectives, and a roofline lower bound of the step time (FLOPs
at peak or bytes at full HBM bandwidth, `core.aot.CHIPS`); then per stage the steps (its
epochs on the dataset's full split sizes), the device-time bound, and the host-side CPU time
of the per-image CPU stages from the per-image costs measured in docs/performance.md.
`--gpu h100|h200|a100` compiles for `--gpus` CPU devices instead and prices the FLOPs and
bytes at that GPU's figures: an estimate, since XLA:CPU's program is not the GPU's.

Exit status: 0 when every program fits, 3 when one does not (the table says which, by how
much, and what would make it fit), 2 for a bad command line, config or topology.
"""

import dataclasses
import math
import os
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from pnoc_jax import config_lib, pipeline
from pnoc_jax.affinity import train as affinity_train
from pnoc_jax.affinity import walk
from pnoc_jax.cam import infer as cam_infer
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import aot, distributed, fileio
from pnoc_jax.core.errors import UserError
from pnoc_jax.core.loop import TrainingProgram
from pnoc_jax.data import datasets
from pnoc_jax.data import pipeline as data_pipeline
from pnoc_jax.saliency import infer as saliency_infer
from pnoc_jax.saliency import infer_detector, train_detector
from pnoc_jax.saliency import train as saliency_train
from pnoc_jax.segmentation import infer as segmentation_infer
from pnoc_jax.segmentation import train as segmentation_train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "", "TPU slice, e.g. v5e:4x4, v4:2x2x1, v5p:2x2x2.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices of --topology (multi-slice).")
_GPU = flags.DEFINE_enum("gpu", "", ["", *aot.GPU_CHIPS], "Estimate for this GPU instead.")
_GPUS = flags.DEFINE_integer("gpus", 8, "GPUs of the --gpu estimate (CPU devices compiled for).")
_STAGES = flags.DEFINE_list(
    "stages", [], "Only these training or prediction stages (default: all of config.stages')."
)
_JSON = flags.DEFINE_string("json", "", "Also write the plan as JSON to this file.")
_CORES_PER_HOST = flags.DEFINE_integer(
    "cores_per_host", 96, "CPU cores per host for the host-side stages' wall time."
)

# Training stage -> (its section, the config key of its split, its program).
Build = Callable[[ml_collections.ConfigDict, object, int], TrainingProgram]
TRAINING: dict[str, tuple[str, str, Build]] = {
    "train_oc": ("oc", "oc.split", lambda c, m, n: cam_train.program(c, "oc", m, n)),
    "train_cam": ("train", "train.split", lambda c, m, n: cam_train.program(c, "train", m, n)),
    "train_saliency": ("saliency", "saliency.split", saliency_train.program),
    "train_detector": ("detector", "detector.split", train_detector.program),
    "train_affinity": ("affinity", "affinity_labels.split", affinity_train.program),
    "train_segmentation": ("segmentation", "segmentation.split", segmentation_train.program),
    "train_segmentation_gt": (
        "segmentation",
        "segmentation.split",
        lambda c, m, n: segmentation_train.program(c, m, n, stage="train_segmentation_gt"),
    ),
}

# Per-image stage -> (the config key of its splits, its device programs for a host's chips).
# The two segmentation inferences predict with the same network (the config's DeepLab).
PREDICTORS: dict[str, tuple[str, Callable[[ml_collections.ConfigDict, int], list]]] = {
    "infer_cam": ("infer.splits", cam_infer.device_programs),
    "infer_saliency": ("saliency_infer.splits", saliency_infer.device_programs),
    "infer_detector": ("detector_infer.splits", infer_detector.device_programs),
    "random_walk": ("rw.splits", walk.device_programs),
    "infer_segmentation": ("segmentation_infer.splits", segmentation_infer.device_programs),
    "infer_segmentation_gt": ("segmentation_infer.splits", segmentation_infer.device_programs),
}

# Host CPU seconds per image of the per-image CPU work, one core, VOC-sized images (~500x375),
# measured in docs/performance.md ("The benchmark suite", "The dense CRF on real photographs":
# means over the five photographs): stage -> (the config key of its splits, what, seconds);
# None: DeepLab's CRF, whose cost depends on the dataset's classes (`segmentation_crf_seconds`).
DEEPLAB_CRF = ("segmentation_infer.splits", "CRF, {classes}-class softmax, t 10", None)
HOST_WORK: dict[str, tuple[str, str, float | None]] = {
    "eval_cam": ("eval.split", "CRF sweep, 16 thresholds, t 10", 1.47),
    "infer_saliency": ("saliency_infer.splits", "CRF masks, 2 labels, t 10", 0.33),
    "affinity_labels": ("affinity_labels.split", "2 CRFs, 3 labels, t 10", 2 * 0.25),
    "random_walk": ("rw.splits", "random walk 2^8 steps + CRF, 3 labels, t 1", 0.20 + 0.11),
    "infer_segmentation": DEEPLAB_CRF,
    "infer_segmentation_gt": DEEPLAB_CRF,
}
# DeepLab's test-time CRF per image as above, by the classes of its softmax (background
# included): VOC's 21, and COCO's 81 at 3.65 times that, their ratio in one run of the photo
# benchmark (3.23 s against 0.885 s).
SEGMENTATION_CRF_S = {21: 1.26, 81: 4.60}


def segmentation_crf_seconds(classes: int) -> float:
    """DeepLab's CRF seconds per VOC-sized image for a `classes`-way softmax: linear between the
    measured class counts (the mean field's work grows with the classes, the lattices' not),
    clamped outside them."""
    counts = sorted(SEGMENTATION_CRF_S)
    return float(np.interp(classes, counts, [SEGMENTATION_CRF_S[c] for c in counts]))


VOC_PIXELS = 500 * 375
# Training input per core (JPEG decode + transform to a 512 crop), images/s, by augmentation.
INPUT_PER_CORE = {"": 122.0, "colorjitter": 60.0, "randaugment": 118.0}


@dataclasses.dataclass
class Program:
    """One compiled update of a training stage, per chip."""

    stage: str
    update: str
    global_batch: int
    per_chip_batch: float
    parameters: int
    compiled: aot.Compiled
    step_bound_s: float
    fits: bool

    def row(self, hbm: int) -> dict:
        c = self.compiled
        return {
            "stage": self.stage,
            "update": self.update,
            "global_batch": self.global_batch,
            "per_chip_batch": self.per_chip_batch,
            "parameters": self.parameters,
            "argument_bytes": c.argument_bytes,
            "output_bytes": c.output_bytes,
            "alias_bytes": c.alias_bytes,
            "temp_bytes": c.temp_bytes,
            "code_bytes": c.code_bytes,
            "total_bytes": c.total_bytes,
            "hbm_bytes": hbm,
            "fits": self.fits,
            "flops_per_chip": c.flops,
            "bytes_accessed_per_chip": c.bytes_accessed,
            "collectives": c.collectives,
            "step_bound_s": self.step_bound_s,
            "images_per_s_bound": self.global_batch / self.step_bound_s
            if self.step_bound_s
            else None,
            "compile_s": round(c.compile_s, 1),
            "out_of_memory": c.out_of_memory,
        }


def example_batch(
    training: TrainingProgram, info: datasets.DatasetInfo
) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch's shapes and dtypes: the stage's own transform run on one example of
    the dataset's typical size holding every field a transform reads (a black image, one
    class), batched."""
    height, width = info.typical_size
    labels = np.zeros(info.num_classes, np.float32)
    labels[0] = 1.0
    example = {
        "id": "plan",
        "image": np.zeros((height, width, 3), np.uint8),
        "labels": labels,
        "mask": np.zeros((height, width), np.uint8),
        "aff_label": np.zeros((height, width), np.uint8),
        "hint": np.zeros((height, width), np.float32),
        "saliency": np.zeros((height, width), np.float32),
    }
    out = training.transform(example, np.random.default_rng(0))
    return {
        k: jax.ShapeDtypeStruct((training.batch_size, *np.shape(out[k])), np.asarray(out[k]).dtype)
        for k in training.keys
    }


def compile_stage(
    config: ml_collections.ConfigDict,
    stage: str,
    mesh,
    chip: aot.Chip,
) -> tuple[list[Program], int]:
    """Compiles every update of a training stage on `mesh`; returns them and the stage's steps."""
    section_name, split_key, build = TRAINING[stage]
    section = config[section_name]
    info = datasets.get_info(config.data.name)
    split = config_lib.get(config, split_key)
    steps = data_pipeline.section_steps(section, info.split_sizes[split])
    training = build(config, mesh, steps)
    states = jax.eval_shape(training.make_states)
    batch = example_batch(training, info)
    step = jax.ShapeDtypeStruct((), jnp.int32)
    dtype = section.get("dtype", "float32")
    chips = len(mesh.devices.flat)
    programs, carry = [], None
    with jax.set_mesh(mesh):
        for update in training.updates:
            others = {k: v for k, v in states.items() if k != update.name}
            traced = update.fn.trace(states[update.name], others, batch, carry, step)
            carry = aot.abstract(traced.out_info[2])
            compiled = aot.compile_traced(traced)
            logging.info(
                "plan: %s/%s compiled in %.0f s: %.2f GiB per chip, %.1f GFLOP and %.1f GB "
                "accessed per chip", stage, update.name, compiled.compile_s,
                compiled.total_bytes / aot.GIB, compiled.flops / 1e9, compiled.bytes_accessed / 1e9,
            )  # fmt: skip
            parameters = sum(
                int(np.prod(x.shape)) for x in jax.tree.leaves(states[update.name].params)
            )
            programs.append(
                Program(
                    stage=stage,
                    update=update.name,
                    global_batch=training.batch_size,
                    per_chip_batch=training.batch_size / chips,
                    parameters=parameters,
                    compiled=compiled,
                    step_bound_s=aot.roofline_s(
                        compiled.flops, compiled.bytes_accessed, chip, dtype
                    ),
                    fits=not compiled.out_of_memory and compiled.total_bytes <= chip.hbm_bytes,
                )
            )
    return programs, steps


def compile_predictors(
    config: ml_collections.ConfigDict, stage: str, devices: list, chip: aot.Chip
) -> tuple[list[Program], float]:
    """Compiles a per-image stage's batch predictions on one host's chips (each host predicts
    its own images); returns them and the stage's device time (all hosts in parallel)."""
    splits_key, build = PREDICTORS[stage]
    local = [d for d in devices if d.process_index == devices[0].process_index]
    hosts = len({d.process_index for d in devices})
    mesh = distributed.make_mesh(local)
    info = datasets.get_info(config.data.name)
    splits = config_lib.get(config, splits_key)
    images_per_host = math.ceil(sum(info.split_sizes[s] for s in splits) / hosts)
    calls = math.ceil(images_per_host / config.runtime.predict_batch_size)
    programs, device_s = [], 0.0
    for device_program in build(config, len(local)):
        jitted = distributed.jit_predictor(device_program.fn, mesh)
        compiled = aot.compile_traced(jitted.trace(device_program.variables, device_program.images))
        logging.info(
            "plan: %s/%s compiled in %.0f s: %.2f GiB per chip",
            stage, device_program.name, compiled.compile_s, compiled.total_bytes / aot.GIB,
        )  # fmt: skip
        rows = device_program.rows
        bound = aot.roofline_s(compiled.flops, compiled.bytes_accessed, chip, "float32")
        device_s += calls * bound
        parameters = sum(
            int(np.prod(x.shape)) for x in jax.tree.leaves(device_program.variables["params"])
        )
        programs.append(
            Program(stage, device_program.name, rows, rows / len(local), parameters, compiled,
                    bound, not compiled.out_of_memory and compiled.total_bytes <= chip.hbm_bytes)
        )  # fmt: skip
    return programs, device_s


def advice(program: Program, chip: aot.Chip, remat: bool) -> str:
    """What would make a program that does not fit fit: recomputing the backbone's blocks in
    the backward pass (when `remat` is off), a smaller per-chip batch (more chips, or
    accumulation), or a chip with more HBM."""
    c = program.compiled
    over = c.total_bytes - chip.hbm_bytes
    per_example = c.temp_bytes / max(program.per_chip_batch, 1e-9)
    room = chip.hbm_bytes - (c.total_bytes - c.temp_bytes)
    fitting = math.floor(room / per_example) if per_example and room > 0 else 0
    lines = [
        f"{program.stage}/{program.update} needs {_gib(c.total_bytes)} GiB per chip, "
        f"{_gib(over)} GiB over the {chip.name}'s {chip.hbm_bytes / aot.GIB:.0f} GiB"
        + (f" (the TPU compiler: {c.out_of_memory})" if c.out_of_memory else "")
    ]
    if fitting >= 1:
        need = math.ceil(program.global_batch / fitting)
        lines.append(
            f"about {fitting} images per chip fit (temporaries scale with the batch): "
            f"{need}+ chips keep the global batch {program.global_batch}; or a smaller "
            "batch_size with more accumulate_steps (this changes BatchNorm's batch, and a "
            "section that sums accumulated gradients needs its lr and weight decay rescaled)"
        )
    else:
        lines.append(
            "even one image per chip does not fit: the parameters and optimizer state alone "
            "are too large"
        )
    if not remat:
        lines.insert(
            1,
            "--config.runtime.remat=True recomputes each backbone block in the backward pass "
            "(activation memory of a few blocks instead of all, about a third more FLOPs, the "
            "same values up to float rounding): plan again with it",
        )
    larger = [
        k for k in (*aot.TPU_CHIPS, *aot.GPU_CHIPS) if aot.CHIPS[k].hbm_bytes >= c.total_bytes
    ]
    if larger:
        lines.append(f"chips with enough HBM at this per-chip batch: {', '.join(larger)}")
    return "; ".join(lines)


def host_work(config: ml_collections.ConfigDict) -> list[dict]:
    """CPU seconds of the per-image CPU stages of `config.stages` (one core, scaled from VOC's
    image size by pixels)."""
    info = datasets.get_info(config.data.name)
    height, width = info.typical_size
    scale = height * width / VOC_PIXELS
    rows = []
    for stage in config.stages:
        if stage not in HOST_WORK:
            continue
        if stage == "eval_cam" and not config.eval.crf_iterations:
            continue
        if stage.startswith("infer_segmentation") and not config.segmentation_infer.crf_iterations:
            continue
        key, what, seconds = HOST_WORK[stage]
        if seconds is None:
            classes = info.num_classes + 1
            what, seconds = what.format(classes=classes), segmentation_crf_seconds(classes)
        splits = config_lib.get(config, key)
        splits = (splits,) if isinstance(splits, str) else tuple(splits)
        images = sum(info.split_sizes[s] for s in splits)
        rows.append(
            {"stage": stage, "what": what, "images": images, "cpu_s": images * seconds * scale}
        )
    return rows


def _gib(n: float) -> str:
    return f"{n / aot.GIB:.2f}"


def print_table(plan: dict) -> None:
    chip = plan["chip"]
    print(
        f"plan: {plan['config']} on {plan['target']} ({plan['devices']} devices, "
        f"{plan['hosts']} hosts; {chip['name']}: {chip['hbm_bytes'] / aot.GIB:.0f} GiB HBM, "
        f"{chip['peak_bf16'] / 1e12:.0f} TFLOP/s bf16, {chip['hbm_bandwidth'] / 1e9:.0f} GB/s)"
        + ("  ESTIMATE from an XLA:CPU compile" if plan["estimate"] else "")
    )
    header = (
        "stage", "update", "batch", "/chip", "params", "args GiB", "out GiB", "temp GiB",
        "total GiB", "fits", "GFLOP/chip", "GB/chip", "collectives", "step ms>=", "img/s<=",
        "compile s",
    )  # fmt: skip
    rows = []
    for p in plan["programs"]:
        rows.append((
            p["stage"], p["update"], str(p["global_batch"]), f"{p['per_chip_batch']:g}",
            f"{p['parameters'] / 1e6:.1f}M", _gib(p["argument_bytes"]), _gib(p["output_bytes"]),
            _gib(p["temp_bytes"]), _gib(p["total_bytes"]), "yes" if p["fits"] else "NO",
            f"{p['flops_per_chip'] / 1e9:.1f}", f"{p['bytes_accessed_per_chip'] / 1e9:.2f}",
            " ".join(f"{k} {v}" for k, v in sorted(p["collectives"].items())) or "none",
            f"{1e3 * p['step_bound_s']:.1f}" if p["fits"] else "-",
            f"{p['images_per_s_bound']:.0f}" if p["images_per_s_bound"] else "-",
            f"{p['compile_s']:.0f}",
        ))  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |")
    print()
    print("| stage | steps | device time >= | host CPU |")
    print("|---|---|---|---|")
    for s in plan["stages"]:
        device = f"{s['device_s'] / 3600:.2f} h" if "device_s" in s else "-"
        host = f"{s['cpu_s'] / 3600:.1f} CPU-h ({s['what']})" if "cpu_s" in s else "-"
        print(f"| {s['stage']} | {s.get('steps', '-')} | {device} | {host} |")
    total = plan["total"]
    print(
        f"\nwhole recipe: device time >= {total['device_s'] / 3600:.2f} h (roofline bound of the "
        f"compiled programs), host CPU {total['cpu_s'] / 3600:.1f} CPU-h = "
        f"{total['host_wall_s'] / 3600:.2f} h on {plan['hosts']} hosts x "
        f"{plan['cores_per_host']} cores"
    )
    for line in plan["advice"]:
        print(f"DOES NOT FIT: {line}")


def make_plan(
    config: ml_collections.ConfigDict,
    devices: list,
    chip: aot.Chip,
    target: str,
    stages: list[str],
    cores_per_host: int,
    estimate: bool,
) -> dict:
    """Compiles the programs of `stages` (training updates and device predictors; all of
    config.stages' when empty) on a mesh over `devices`; the plan as a JSON-ready dict."""
    hosts = len({d.process_index for d in devices})
    config.model.allow_random_init = True  # no weights are read: fresh variables compile alike
    pipeline.validate(config, config_lib.Topology(len(devices), hosts, reads_data=False))
    mesh = distributed.make_mesh(devices)
    chosen = stages or [s for s in config.stages if s in TRAINING or s in PREDICTORS]
    unknown = [s for s in chosen if s not in TRAINING and s not in PREDICTORS]
    if unknown:
        raise UserError(
            f"--stages: {unknown} are not stages the plan compiles "
            f"({', '.join([*TRAINING, *PREDICTORS])})"
        )
    programs, stage_rows, done = [], [], {}

    def once(key: object, stage: str, compile_stage_programs: Callable[[], tuple]) -> tuple:
        """The programs of `stage`, compiled once per `key`: the *_gt stages train and predict
        with the same programs as their weak twins."""
        if key not in done:
            done[key] = compile_stage_programs()
        compiled, extent = done[key]
        return [dataclasses.replace(p, stage=stage) for p in compiled], extent

    for stage in chosen:
        if stage in PREDICTORS:
            compiled, device_s = once(
                PREDICTORS[stage][1], stage,
                lambda: compile_predictors(config, stage, devices, chip),  # noqa: B023
            )  # fmt: skip
            programs += compiled
            stage_rows.append({"stage": stage, "device_s": device_s})
            continue
        compiled, steps = once(
            TRAINING[stage][0], stage,
            lambda: compile_stage(config, stage, mesh, chip),  # noqa: B023
        )  # fmt: skip
        programs += compiled
        stage_rows.append({"stage": stage, "steps": steps,
                           "device_s": steps * sum(p.step_bound_s for p in compiled)})  # fmt: skip
    host = host_work(config)
    stage_rows += host
    total_cpu = sum(r["cpu_s"] for r in host)
    advice_lines = [advice(p, chip, config.runtime.remat) for p in programs if not p.fits]
    return {
        "config": config_lib.get(config, "data.name"),
        "target": target,
        "estimate": estimate,
        "devices": len(devices),
        "hosts": hosts,
        "cores_per_host": cores_per_host,
        "chip": dataclasses.asdict(chip),
        "programs": [p.row(chip.hbm_bytes) for p in programs],
        "stages": stage_rows,
        "total": {
            "device_s": sum(r.get("device_s", 0.0) for r in stage_rows),
            "cpu_s": total_cpu,
            "host_wall_s": total_cpu / (hosts * cores_per_host),
        },
        "advice": advice_lines,
        "jax": jax.__version__,
    }


def fail(message: str, code: int) -> None:
    print(f"plan: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}", 2)
    if bool(_TOPOLOGY.value) == bool(_GPU.value):
        fail("give one of --topology (a TPU slice, e.g. v5e:4x4) or --gpu (h100|h200|a100)", 2)
    config = _CONFIG.value
    try:
        if _TOPOLOGY.value:
            jax.config.update("jax_platforms", "cpu")  # never claim a TPU of this machine
            devices = aot.tpu_devices(_TOPOLOGY.value, _NUM_SLICES.value)
            chip = aot.per_device(aot.CHIPS[_TOPOLOGY.value.split(":")[0]], devices)
            target = _TOPOLOGY.value + (
                f" x {_NUM_SLICES.value} slices" if _NUM_SLICES.value > 1 else ""
            )
        else:
            jax.config.update("jax_platforms", "cpu")
            jax.config.update("jax_num_cpu_devices", _GPUS.value)
            devices = jax.devices()[: _GPUS.value]
            chip = aot.CHIPS[_GPU.value]
            target = f"{_GPUS.value} x {_GPU.value}"
        plan = make_plan(
            config, devices, chip, target, _STAGES.value, _CORES_PER_HOST.value, bool(_GPU.value)
        )
    except aot.TopologyError as error:
        fail(str(error).splitlines()[0], 2)
    except (UserError, ValueError) as error:
        fail(f"{str(error).splitlines()[0]} (planning for {_TOPOLOGY.value or _GPU.value})", 2)
    print_table(plan)
    if _JSON.value:
        fileio.write_json(_JSON.value, plan)
    if plan["advice"]:
        sys.exit(3)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
