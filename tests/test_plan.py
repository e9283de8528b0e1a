"""`pnoc_jax.plan`: a recipe's training programs compiled for a TPU slice that is not here.

The batch a plan compiles is the batch the runner feeds (checked against the real input
pipeline on the synthetic data); every stage family compiles for `v5e:2x2` through its own
`program()`, with memory figures and only all-reduces; a batch too large for a chip is reported
as not fitting, with advice; a bad topology name is one line. The TPU tests need libtpu
(`pip install -e ".[tpu]"`) and are skipped without it.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from pnoc_jax import plan
from pnoc_jax.affinity import walk
from pnoc_jax.cam import infer as cam_infer
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import aot, distributed
from pnoc_jax.data import datasets, pipeline
from pnoc_jax.inference import dense, tta
from pnoc_jax.saliency import infer as saliency_infer
from pnoc_jax.saliency import infer_detector, train_detector
from pnoc_jax.segmentation import infer as segmentation_infer
from tests.collectives import ALLOWED
from tests.conftest import load_config

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason='libtpu is not installed (pip install -e ".[tpu]")',
)
# The suite's persistent compilation cache (conftest) is on for the CPU tests, and JAX decides
# once per process whether to use it; so the TPU programs compiled here are stored in it too,
# and the next run cannot load them without a TPU client: JAX says so and compiles again.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Error reading persistent compilation cache entry:UserWarning"
)
# C²AM's contrastive losses compare every pair of images of the batch (B x B similarities), so
# its data-parallel step gathers the batch's embeddings: an all-gather, by the method's design.
CONTRASTIVE = {"all-gather"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_example_batch_is_the_pipelines_batch(tiny_config):
    """The shapes and dtypes the plan compiles are those of a real training batch."""
    config = tiny_config
    mesh = distributed.make_mesh()
    training = cam_train.program(config, "train", mesh, total_steps=6)
    info = datasets.get_info(config.data.name)
    expected = plan.example_batch(training, info)
    source = datasets.resolve(config).split(config.train.split, whole=True)
    real = pipeline.section_input(
        "train_cam", config.train, source, training.transform, seed=0, keys=training.keys
    )
    batch = next(real.batches(0))
    assert {k: (v.shape, v.dtype) for k, v in expected.items()} == {
        k: (np.shape(v), np.asarray(v).dtype) for k, v in batch.items()
    }


def test_collectives_of_hlo_text():
    hlo = (
        "%a = f32[2] all-reduce(f32[2] %x), replica_groups={}\n"
        "%b = (f32[4], f32[4]) all-gather-start(f32[2] %y)\n"
        "%c = f32[4] all-gather-done((f32[4], f32[4]) %b)\n"
        "%d = f32[2] all-reduce-start(f32[2] %z)\n"
    )
    assert aot.collectives(hlo) == {"all-reduce": 2, "all-gather": 1}


def test_roofline_is_the_slower_of_compute_and_memory():
    chip = aot.CHIPS["v5e"]
    assert aot.roofline_s(197e12, 0.0, chip, "bfloat16") == pytest.approx(1.0)
    assert aot.roofline_s(0.0, 819e9 * 2, chip, "bfloat16") == pytest.approx(2.0)


def test_unknown_chip_name_is_one_line():
    with pytest.raises(aot.TopologyError, match="expected <chip>:<shape>"):
        aot.tpu_devices("v9x:2x2")


def test_host_work_prices_deeplabs_crf_by_the_datasets_classes():
    """DeepLab's test-time CRF row names its softmax's classes (background included) and is
    priced at their measured per-image cost, scaled by the dataset's image pixels."""
    for name, classes, pixels, images in (
        ("pnoc_voc", 21, 375 * 500, 1_449),  # val
        ("pnoc_coco", 81, 480 * 640, 40_504),  # val2014
    ):
        row = {r["stage"]: r for r in plan.host_work(load_config(name))}["infer_segmentation"]
        assert row["what"] == f"CRF, {classes}-class softmax, t 10"
        assert row["images"] == images
        expected = plan.SEGMENTATION_CRF_S[classes] * pixels / plan.VOC_PIXELS
        assert row["cpu_s"] / images == pytest.approx(expected)
    voc, coco = plan.SEGMENTATION_CRF_S[21], plan.SEGMENTATION_CRF_S[81]
    assert plan.segmentation_crf_seconds(51) == pytest.approx((voc + coco) / 2)
    assert plan.segmentation_crf_seconds(3) == voc


def tiny_plan_config():
    """The quickstart at 32-pixel crops: every training stage family, compiled fast."""
    config = load_config()
    config.data.image_size = 32
    for name in ("oc", "train", "segmentation"):
        config[name].update(batch_size=8, min_size=32, max_size=48)
    config.segmentation.crop_size = 32
    config.saliency.update(batch_size=8, resize_size=40, crop_size=32)
    config.affinity.update(batch_size=8, crop_size=48, min_size=40, max_size=56, radius=5)
    return config


def recording_predictor(seen: list, channels: tuple[int, ...]):
    """A predictor that records the shapes and dtypes of each batch it is given and returns
    zeros of [N, canvas, canvas, *channels] (what the stages crop their outputs from)."""

    def predict(batch):
        seen.append(jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), batch))
        first = jax.tree.leaves(batch)[0]
        return np.zeros((*first.shape[:3], *channels), np.float32)

    return predict


def test_predictor_batches_are_the_runners():
    """Per per-image stage, the batches the plan compiles are those its run feeds the
    network: `predict_batch_size` images of the largest side, through the stage's own
    batching (every scale's canvas, flips, padding to the host's chips)."""
    config = tiny_plan_config()
    config.runtime.predict_batch_size = 3
    multiple = 4
    stride = config.model.output_stride

    def images(side: int) -> list[np.ndarray]:
        return [np.zeros((side, side, 3), np.uint8)] * config.runtime.predict_batch_size

    def fed(run) -> list:
        seen = []
        run(seen)
        return seen

    cfg = config.infer
    runs = {
        cam_infer.device_programs: lambda seen: tta.multiscale_flip_sums(
            images(cfg.max_image_size), recording_predictor(seen, (2,)), cfg.scales,
            cfg.max_image_size, stride, multiple,
        ),
        saliency_infer.device_programs: lambda seen: tta.multiscale_flip_sums(
            images(config.saliency_infer.max_image_size), recording_predictor(seen, ()),
            config.saliency_infer.scales, config.saliency_infer.max_image_size,
            config.saliency.output_stride, multiple,
        ),
        walk.device_programs: lambda seen: walk.edge_maps(
            images(config.rw.max_image_size), recording_predictor(seen, ()),
            tta.canvas_size(config.rw.max_image_size, 1.0), multiple,
        ),
        infer_detector.device_programs: lambda seen: infer_detector.saliency_maps(
            images(config.detector.max_image_size), recording_predictor(seen, ()),
            train_detector.canvas(config), config.detector.input_scale, multiple,
        ),
        segmentation_infer.device_programs: lambda seen: dense.multiscale_logits(
            images(config.segmentation_infer.max_image_size), recording_predictor(seen, (2,)),
            config.segmentation_infer.scales, config.segmentation_infer.max_image_size,
            multiple, config.segmentation_infer.flip,
        ),
    }  # fmt: skip
    assert set(runs) == {build for _, build in plan.PREDICTORS.values()}
    for build, run in runs.items():
        compiled = [
            jax.tree.map(lambda s: (tuple(s.shape), np.dtype(s.dtype)), p.images)
            for p in build(config, multiple)
        ]
        assert compiled and compiled == fed(run), build.__module__


@needs_libtpu
def test_bad_topology_is_one_line():
    """The command line names the topology and what is expected, in one line, exit 2."""
    result = subprocess.run(
        [sys.executable, "-m", "pnoc_jax.plan", "--config", "configs/quickstart.py",
         "--topology", "v5e:3x7"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    line = [x for x in result.stderr.splitlines() if x.startswith("plan:")]
    assert len(line) == 1 and "'v5e:3x7'" in line[0] and "v5e:2x2" in line[0], result.stderr


@needs_libtpu
@pytest.mark.slow
def test_every_stage_family_compiles_for_a_tpu_slice():
    """train_oc, P-NOC's two updates, C²AM-H, AffinityNet and DeepLab compiled for v5e:2x2
    (4 chips): memory figures, FLOPs, only all-reduces (and C²AM-H's all-gather), all fit; CAM
    inference on the host's chips, without collectives. One program per family: the detector
    (43 s of TPU compilation alone, the saliency family's second trainer), the ground-truth
    DeepLab (the same program as train_segmentation's) and the other CAM scales are left to the
    full-size plans (`launch/tpu/plan.sh`)."""
    config = tiny_plan_config()
    config.infer.scales = (1.0,)
    devices = aot.tpu_devices("v5e:2x2")
    assert len(devices) == 4 and devices[0].device_kind == "TPU v5 lite"
    stages = [
        "train_oc", "train_cam", "train_saliency", "train_affinity", "train_segmentation",
        "infer_cam",
    ]  # fmt: skip
    result = plan.make_plan(config, devices, aot.CHIPS["v5e"], "v5e:2x2", stages, 1, False)
    compiled = {(p["stage"], p["update"]) for p in result["programs"]}
    assert compiled == {
        ("train_oc", "f"), ("train_cam", "f"), ("train_cam", "oc"), ("train_saliency", "f"),
        ("train_affinity", "aff"), ("train_segmentation", "f"), ("infer_cam", "scale 1.0"),
    }  # fmt: skip
    saliency = [p for p in result["programs"] if p["stage"] == "train_saliency"]
    assert saliency and "all-gather" in saliency[0]["collectives"], saliency
    for p in result["programs"]:
        assert p["argument_bytes"] > 0 and p["output_bytes"] > 0 and p["temp_bytes"] >= 0, p
        assert p["total_bytes"] >= p["argument_bytes"] + p["temp_bytes"], p
        assert p["flops_per_chip"] > 0 and p["step_bound_s"] > 0 and p["fits"], p
        if p["stage"] == "infer_cam":  # predict_batch_size images and their flips
            assert p["per_chip_batch"] == 2 * config.runtime.predict_batch_size / 4, p
            assert not p["collectives"], p
        else:
            assert p["per_chip_batch"] == 2, p
            allowed = ALLOWED | CONTRASTIVE if p["stage"] == "train_saliency" else ALLOWED
            assert set(p["collectives"]) <= allowed and "all-reduce" in p["collectives"], p
    assert not result["advice"]
    steps = {s["stage"]: s.get("steps") for s in result["stages"]}
    assert steps["train_oc"] == config.oc.epochs * (1000 // 8)  # synthetic train: 1000 images


@needs_libtpu
@pytest.mark.slow
def test_device_predictors_compile_for_a_tpu_slice():
    """C²AM-H's saliency maps, AffinityNet's edges for the random walk and DeepLab's logits
    (the ground-truth DeepLab's are the same program) compiled for one host's chips of
    v5e:2x2 at the runner's batches: memory figures, FLOPs, all fit, no collectives (each host
    predicts its own images). One scale each, on 32-pixel canvases. The detector (its canvas
    is 128 pixels at least: about 30 s of TPU compilation) and CAM inference (compiled by
    test_every_stage_family_compiles_for_a_tpu_slice) are left out."""
    config = tiny_plan_config()
    config.runtime.predict_batch_size = 2
    for name in ("saliency_infer", "segmentation_infer"):
        config[name].update(scales=(1.0,), max_image_size=32)
    config.rw.max_image_size = 32
    devices = aot.tpu_devices("v5e:2x2")
    stages = ["infer_saliency", "random_walk", "infer_segmentation", "infer_segmentation_gt"]
    result = plan.make_plan(config, devices, aot.CHIPS["v5e"], "v5e:2x2", stages, 1, False)
    assert [(p["stage"], p["update"]) for p in result["programs"]] == [
        (stage, "scale 1.0") for stage in stages
    ]
    for p in result["programs"]:
        assert p["global_batch"] == 4 and p["per_chip_batch"] == 1, p  # 2 images + flips
        assert p["argument_bytes"] > 0 and p["output_bytes"] > 0 and p["temp_bytes"] >= 0, p
        assert p["total_bytes"] >= p["argument_bytes"] + p["temp_bytes"], p
        assert p["parameters"] > 0 and p["flops_per_chip"] > 0 and p["fits"], p
        assert not p["collectives"], p
    assert not result["advice"]
    device = {s["stage"]: s["device_s"] for s in result["stages"] if "device_s" in s}
    assert set(device) == set(stages) and all(v > 0 for v in device.values()), device


@needs_libtpu
@pytest.mark.slow
def test_a_batch_too_large_for_a_chip_is_reported():
    """A 512² batch of 8192 (2048 per chip: 6 GiB of input alone) does not fit a v5e's
    16 GiB: the plan says by how much and what would fit."""
    config = tiny_plan_config()
    config.data.image_size = 512
    config.oc.update(batch_size=8192, steps=1, min_size=320, max_size=640)
    devices = aot.tpu_devices("v5e:2x2")
    result = plan.make_plan(config, devices, aot.CHIPS["v5e"], "v5e:2x2", ["train_oc"], 1, False)
    (program,) = result["programs"]
    assert not program["fits"] and program["total_bytes"] > 16 * aot.GIB
    (advice,) = result["advice"]
    assert "GiB over the v5e's 16 GiB" in advice and "images per chip fit" in advice, advice
    assert "--config.runtime.remat=True recomputes each backbone block" in advice
    assert jax.default_backend() == "cpu"  # nothing claimed or ran on a TPU
