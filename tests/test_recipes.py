"""The paper's recipes: ResNeSt-269 by default, no silent random initialisation, and
`configs/pnoc_coco.py` end to end on the COCO fixture with a tiny backbone."""

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest

from pnoc_jax import config_lib, pipeline
from pnoc_jax.core import artifacts, fileio
from pnoc_jax.data import datasets
from pnoc_jax.models import backbones
from tests.data.coco_fixture import write_coco
from tests.data.voc_devkit import write_voc

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = config_lib.Topology(8)


def _recipe(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(autouse=True)
def _fresh_identities():
    datasets.clear_identity_cache()
    yield
    datasets.clear_identity_cache()


def test_recipes_default_to_resnest269_and_keep_the_backbone_argument():
    for name in ("pnoc_voc", "pnoc_coco"):
        assert _recipe(name).model.backbone == "resnest269"
        assert _recipe(name, "backbone=resnet101").model.backbone == "resnet101"
    coco = _recipe("pnoc_coco")
    assert coco.data.name == "coco2014" and coco.data.image_size == 640
    assert (coco.train.min_size, coco.train.max_size) == (400, 800)
    assert coco.oc.lr == coco.train.lr == 0.05 and coco.train.accumulate_steps == 2
    assert coco.eval.split == "val" and datasets.get_info("coco2014").num_classes == 80
    voc = _recipe("pnoc_voc")
    assert voc.train.lr == 0.1 and voc.train.accumulate_steps == 2  # summed: no doubling
    # Segmentation: DeepLabV3+ (HEAD runner) by default, the V2 rows by argument;
    # both recipes end with the model and its fully supervised bound, then the class analysis.
    for config in (voc, coco):
        assert config.stages[-1] == "analyze"
        assert config.stages[-7:-1] == (
            "train_segmentation", "infer_segmentation", "eval_segmentation",
            "train_segmentation_gt", "infer_segmentation_gt", "eval_segmentation_gt",
        )  # fmt: skip
    assert (voc.segmentation.model, voc.segmentation.lr, coco.segmentation.lr) == (
        "deeplabv3plus", 0.007, 0.004,
    )  # fmt: skip
    assert voc.segmentation.split == "train_aug" and voc.segmentation.val_split == "val"
    v2 = _recipe("pnoc_voc", "segmentation=deeplabv2").segmentation
    assert (v2.model, v2.backbone, v2.output_stride, v2.batch_size, v2.steps) == (
        "deeplabv2", "resnet101", 8, 10, 10000,
    )  # fmt: skip
    assert (v2.lr, v2.weight_decay, v2.crop_size, v2.frozen_bn) == (2.5e-4, 5e-4, 321, True)
    with pytest.raises(ValueError, match="segmentation='deeplabv4'"):
        _recipe("pnoc_voc", "segmentation=deeplabv4")
    # dtype: every trained network's compute dtype at once (float32 unless asked).
    trained = ("oc", "train", "saliency", "detector", "segmentation")
    for name in ("pnoc_voc", "pnoc_coco"):
        assert {_recipe(name)[s].dtype for s in trained} == {"float32"}
        assert {_recipe(name, "dtype=bfloat16")[s].dtype for s in trained} == {"bfloat16"}
    with pytest.raises(ValueError, match=r"pnoc_voc\.py:dtype='float16': expected one of float32"):
        _recipe("pnoc_voc", "dtype=float16")


@pytest.mark.parametrize("name", ["pnoc_voc", "pnoc_coco"])
def test_real_data_without_weights_stops_in_validation(tmp_path, name):
    if name == "pnoc_voc":
        manual = write_voc(tmp_path / "data").parent
        config = _recipe(name, "train_split=train")
    else:
        manual = write_coco(tmp_path / "coco")
        config = _recipe(name)
    config.data.update(manual_dir=str(manual), data_dir=str(tmp_path / "tfds"))
    url = backbones.IMAGENET_WEIGHTS["resnest269"]
    with pytest.raises(config_lib.ConfigError, match=re.escape(url)) as err:
        pipeline.validate(config, TOPOLOGY)
    message = str(err.value)
    assert message.startswith("config.model.pretrained=''")
    assert "python -m pnoc_jax.models.convert --torch_checkpoint resnest269-0cc87c48.pth" in message
    assert "allow_random_init=True" in message
    config.model.allow_random_init = True
    pipeline.validate(config, TOPOLOGY)
    config.model.allow_random_init = False
    weights_file = tmp_path / "resnest269.npz"
    weights_file.write_bytes(b"")
    config.model.pretrained = str(weights_file)
    # C²AM-H shares the CAM network's backbone and weights; PoolNet needs its ResNet-50's.
    with pytest.raises(config_lib.ConfigError, match="for train_detector") as err:
        pipeline.validate(config, TOPOLOGY)
    assert str(err.value).startswith("config.detector.pretrained=''")
    assert backbones.IMAGENET_WEIGHTS["resnet50"] in str(err.value)
    (tmp_path / "resnet50.npz").write_bytes(b"")
    config.detector.pretrained = str(tmp_path / "resnet50.npz")
    pipeline.validate(config, TOPOLOGY)
    # The affinity net's frozen backbone needs weights too (it never trains them).
    config.model.pretrained = ""
    config.stages = ("train_affinity",)
    with pytest.raises(config_lib.ConfigError, match="for train_affinity"):
        pipeline.validate(config, TOPOLOGY)


@pytest.mark.slow
def test_pnoc_coco_runs_on_the_fixture_with_a_tiny_backbone(tmp_path):
    """Every stage of the COCO recipe on its data, shrunk: CAMs, priors (+ CRF sweep), affinity
    labels, the boundary net, the random walk and the pseudo-labels. The strategy is vanilla
    CAM (`:strategy=cam`): P-NOC's two updates are what the synthetic-data tests train, and
    compiling them here would double this test's ~90 s of CPU for nothing COCO-specific; for the
    same reason the saliency stages (`:saliency=none`) run on the synthetic data only."""
    manual = write_coco(tmp_path / "coco2014")
    config = _recipe("pnoc_coco", "backbone=tiny,strategy=cam,saliency=none")
    config.data.update(manual_dir=str(manual), data_dir=str(tmp_path / "tfds"), image_size=32)
    config.model.update(output_stride=8, allow_random_init=True)
    small = dict(batch_size=8, epochs=0, steps=2, min_size=32, max_size=48)
    config.train.update(small, accumulate_steps=2)
    config.infer.update(scales=(1.0,), max_image_size=64)
    config.eval.crf_iterations = 1
    config.affinity.update(
        batch_size=8, epochs=0, steps=2, crop_size=32, min_size=32, max_size=48, radius=3
    )
    config.rw.update(max_image_size=64, exp_times=2, radius=3)
    config.runtime.update(log_every=1, ckpt_every=100, predict_batch_size=4, num_workers=1)
    # Segmentation: the weak model on its 81 classes (the bound is the same code).
    config.segmentation.update(
        head_channels=8, low_level_channels=4, atrous_rates=(1, 2, 3), batch_size=8, epochs=0,
        steps=2, crop_size=32, min_size=32, max_size=48,
    )  # fmt: skip
    config.segmentation_infer.update(scales=(1.0,), max_image_size=64, crf_iterations=1)
    config.stages = tuple(s for s in config.stages if not s.endswith("_gt"))
    pipeline.validate(config, TOPOLOGY)
    workdir = str(tmp_path / "run")
    pipeline.run_stages(config, workdir)
    for stage in config.stages:
        assert pipeline.is_finished(workdir, stage, config), stage
    prior = fileio.read_json(artifacts.metrics_file(workdir, "eval_cam"))
    assert prior["split"] == "val" and "crf" in prior
    assert len(prior["per_class_iou"]) == 81  # background + 80 classes
    assert os.path.exists(os.path.join(artifacts.stage_dir(workdir, "eval_cam"), "sweep_crf.csv"))
    rw = fileio.read_json(artifacts.metrics_file(workdir, "eval_pseudo_labels"))
    assert rw["crf"]["iterations"] == 1 and 0 <= rw["pseudo_label_miou"] <= 1
    labels = os.listdir(artifacts.pseudo_label_dir(workdir, "val"))
    assert len(labels) == 4 and all(re.fullmatch(r"\d{12}\.png", f) for f in labels)
    pseudo = fileio.read_png(os.path.join(artifacts.pseudo_label_dir(workdir, "val"), labels[0]))
    assert pseudo.dtype == np.uint8 and pseudo.max() <= 80
    segmentation = fileio.read_json(artifacts.metrics_file(workdir, "eval_segmentation"))
    assert segmentation["split"] == "val" and len(segmentation["per_class_iou"]) == 81
    assert 0 <= segmentation["miou"] <= 1 and "miou_no_crf" in segmentation
