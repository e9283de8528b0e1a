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
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import aot, distributed
from pnoc_jax.data import datasets, pipeline
from tests.collectives import ALLOWED
from tests.conftest import load_config

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason='libtpu is not installed (pip install -e ".[tpu]")',
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
    assert jax.default_backend() == "cpu"  # nothing claimed or ran on a TPU
