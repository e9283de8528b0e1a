"""The saliency stages end to end on a few synthetic images, their files, and bad input."""

import copy
import functools
import os
import shutil

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from pnoc_jax import config_lib, pipeline
from pnoc_jax.core import artifacts, fileio, scores, weights
from pnoc_jax.core.weights import WeightsError
from pnoc_jax.core.writers import read_metrics
from pnoc_jax.data import datasets
from pnoc_jax.data import pipeline as data_pipeline
from pnoc_jax.evaluation import miou
from pnoc_jax.inference import tta
from pnoc_jax.saliency import infer as saliency_infer
from pnoc_jax.saliency import train as saliency_train
from pnoc_jax.saliency import train_detector
from tests.conftest import make_tiny_config

pytestmark = pytest.mark.slow  # end-to-end runs: minutes

STAGES = ("train_saliency", "infer_saliency", "train_detector", "infer_detector", "eval_saliency")


class _Few(list):
    """The first few examples of a split (a plain picklable Sequence)."""


def _fake_priors(config, workdir: str, split: str) -> None:
    """CAM files from blurred GT masks (stands in for train_cam + infer_cam)."""
    for example in datasets.resolve(config).split(split):
        mask, (h, w) = example["mask"], example["mask"].shape
        classes = np.flatnonzero(example["labels"] > 0.5)
        keys = np.concatenate([[0], classes + 1]).astype(np.int64)
        planes = [cv2.GaussianBlur((mask == c + 1).astype(np.float32), (0, 0), 3) for c in classes]
        maps = np.stack(planes, axis=-1)
        hr = tta.resize_maps(maps, h, w)
        cam = tta.resize_maps(maps, -(-h // 4), -(-w // 4))
        hr /= hr.max(axis=(1, 2), keepdims=True) + 1e-5
        cam /= cam.max(axis=(1, 2), keepdims=True) + 1e-5
        scores.write(artifacts.cam_file(workdir, split, example["id"]), keys, cam=cam, hr_cam=hr)
    fp = pipeline.stage_fingerprint("infer_cam", config)
    fileio.write_json(artifacts.done_file(workdir, "infer_cam"), {"fingerprint": fp})


def _config(tiny_config):
    config = tiny_config
    config.infer.splits = ("val",)
    config.eval.split = "val"
    config.saliency.update(
        method="ccamh", split="val", output_stride=8, batch_size=8, steps=3,
        backbone_weights="pretrained",
        resize_size=40, crop_size=32, lr=0.01, momentum=0.9,
    )  # fmt: skip
    config.saliency_infer.update(
        splits=("val",), scales=(1.0, 0.5), max_image_size=112, crf_iterations=2
    )
    config.detector.update(
        split="val", backbone="tiny", head_divisor=8, batch_size=8, steps=2, lr=1e-3,
        backbone_weights="pretrained",
        max_image_size=112,
    )  # fmt: skip
    config.detector_infer.splits = ("val",)
    config.affinity_labels.update(split="val", saliency="infer_detector", crf_iterations=2)
    config.runtime.update(num_workers=1, log_every=1, ckpt_every=2, predict_batch_size=4)
    config.stages = (*STAGES, "affinity_labels")
    return config


def _few(monkeypatch) -> None:
    original = datasets.Dataset.split
    monkeypatch.setattr(
        datasets.Dataset, "split", lambda self, split, whole=False: _Few(original(self, split)[:8])
    )


@pytest.fixture
def few(monkeypatch):
    _few(monkeypatch)


@pytest.fixture(scope="module")
def finished_run(synthetic_data_dir, tmp_path_factory):
    """The five saliency stages and saliency-guided affinity labels, once for the module."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _few(monkeypatch)
        config = _config(make_tiny_config(synthetic_data_dir))
        workdir = str(tmp_path_factory.mktemp("saliency"))
        pipeline.validate(config, config_lib.Topology(jax.device_count()))
        _fake_priors(config, workdir, "val")
        pipeline.run_stages(config, workdir)
        yield config, workdir


@pytest.fixture
def finished(finished_run, few):
    """The finished run with a copy of its config the test may change."""
    config, workdir = finished_run
    return copy.deepcopy(config), workdir


def test_saliency_stages_end_to_end(finished):
    config, workdir = finished
    examples = list(datasets.resolve(config).split("val"))
    orientation = fileio.read_json(artifacts.orientation_file(workdir))
    assert orientation["method"] == "ccamh" and orientation["applied"] is False
    assert orientation["images"] == 8 and 0 <= orientation["border_foreground"] <= 1
    log = read_metrics(artifacts.stage_dir(workdir, "train_saliency"))
    assert [r["step"] for r in log] == [1, 2, 3] and np.isfinite(log[-1]["train/loss_hint"])

    for example in examples:
        h, w = example["image"].shape[:2]
        record = scores.read(
            artifacts.saliency_map_file(workdir, "val", example["id"]), ("hr_cam",)
        )
        np.testing.assert_array_equal(record["keys"], [0, 1])
        assert record["hr_cam"].shape == (1, h, w) and record["hr_cam"].max() < 1
        mask_path = artifacts.saliency_png_file(workdir, "infer_saliency", "val", example["id"])
        with Image.open(mask_path) as image:
            assert image.mode == "L" and image.size == (w, h)
        assert set(np.unique(fileio.read_png(mask_path))) <= {0, 255}
        detected = artifacts.saliency_png_file(workdir, "infer_detector", "val", example["id"])
        with Image.open(detected) as image:
            assert image.mode == "L" and image.size == (w, h)

    log = read_metrics(artifacts.stage_dir(workdir, "train_detector"))
    assert [r["step"] for r in log] == [1, 2]
    assert all(r["train/lr"] == pytest.approx(1e-3) for r in log)  # constant (spec)
    assert os.path.exists(train_detector.weights_path(workdir))

    # eval_saliency against an independent count: the C²AM masks are 0/255, so every
    # threshold gives the same 2-class confusion.
    metrics = fileio.read_json(artifacts.metrics_file(workdir, "eval_saliency"))
    assert metrics["source"] == "infer_detector" and set(metrics["sources"]) == {
        "infer_saliency", "infer_detector"
    }  # fmt: skip
    for key in ("saliency_miou", "priors_miou", "priors_with_saliency_miou", "oracle_miou"):
        assert 0 <= metrics[key] <= 1
    conf = np.zeros((2, 2), np.int64)
    for example in examples:
        gt = example["mask"]
        path = artifacts.saliency_png_file(workdir, "infer_saliency", "val", example["id"])
        predicted = fileio.read_png(path) == 255
        for g, p in zip(gt.ravel(), predicted.ravel(), strict=True):
            if g != 255:
                conf[int(g != 0), int(p)] += 1
    expected = miou.scores(conf)["miou"]
    assert metrics["sources"]["infer_saliency"]["saliency_miou"] == pytest.approx(expected)
    eval_cam_like = fileio.read_json(artifacts.metrics_file(workdir, "eval_saliency"))
    assert eval_cam_like["priors_miou"] > 0.5  # blurred GT priors

    # Saliency-guided affinity labels from the detector's maps; its fingerprint reads them.
    assert pipeline.deps_of("affinity_labels", config) == ("infer_cam", "infer_detector")
    for example in examples:
        label = fileio.read_png(artifacts.affinity_label_file(workdir, "val", example["id"]))
        assert label.shape == example["mask"].shape
    assert not any(pipeline.run_stage(name, config, workdir) for name in config.stages)
    config.detector_infer.splits = ("val", "train")  # reruns what reads the detector's maps
    assert (
        pipeline.stage_fingerprint("affinity_labels", config)
        != fileio.read_json(artifacts.done_file(workdir, "affinity_labels"))["fingerprint"]
    )


def test_plain_ccam_orientation_is_applied_at_inference(finished):
    """An inverted plain C²AM's maps are ReLU(-z): the foreground is where z < 0."""
    config, workdir = finished
    config.saliency.method = "ccam"
    model = saliency_train.build_model(config)
    variables = weights.load(artifacts.weights_file(workdir, "train_saliency"))
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    z = np.asarray(model.apply(variables, jnp.asarray(x))[0])
    path = artifacts.orientation_file(workdir)
    recorded = fileio.read_json(path)
    try:
        for applied, sign in ((False, 1.0), (True, -1.0)):
            fileio.write_json(path, {**recorded, "applied": applied})
            predict, _ = saliency_infer.map_predictor(config, workdir)
            np.testing.assert_allclose(predict(x), np.maximum(sign * z, 0), rtol=1e-5, atol=1e-6)
        os.remove(path)
        with pytest.raises(FileNotFoundError, match=r"orientation\.json missing"):
            saliency_infer.map_predictor(config, workdir)
    finally:
        fileio.write_json(path, recorded)
    assert pipeline.deps_of("train_saliency", config) == ()  # no hints: no priors needed


def test_affinity_labels_refuse_missing_or_mis_sized_saliency(finished, tmp_path):
    config, workdir = finished
    folder = tmp_path / "user_saliency"
    folder.mkdir()
    examples = list(datasets.resolve(config).split("val"))
    config.affinity_labels.update(saliency="", saliency_dir=str(folder))
    shutil.rmtree(artifacts.stage_dir(workdir, "affinity_labels"))
    for example in examples[:3]:  # only 3 of 8 maps
        fileio.write_saliency(str(folder / f"{example['id']}.png"), example["mask"] * 0 + 255)
    with pytest.raises(fileio.SaliencyMapError, match=r"5 of the 8 saliency maps .* missing in"):
        pipeline.run_stage("affinity_labels", config, workdir)
    assert not os.path.exists(artifacts.affinity_label_dir(workdir, "val"))  # nothing written
    for example in examples:  # every map present, but of another size
        fileio.write_saliency(str(folder / f"{example['id']}.png"), np.zeros((7, 9), np.uint8))
    with pytest.raises(fileio.SaliencyMapError, match=r"\.png: saliency map of size 7x9 for an"):
        pipeline.run_stage("affinity_labels", config, workdir)
    assert not pipeline.is_finished(workdir, "affinity_labels", config)
    assert not os.path.exists(artifacts.affinity_label_dir(workdir, "val"))
    # Both a stage and a folder: refused before anything runs.
    config.affinity_labels.saliency = "infer_saliency"
    with pytest.raises(config_lib.ConfigError, match=r"config\.affinity_labels\.saliency="):
        pipeline.validate(config, config_lib.Topology(jax.device_count()))


def test_detector_refuses_other_architectures_and_bad_masks(finished, tmp_path):
    config, workdir = finished
    # A detector checkpoint of another architecture (head widths / 4, not / 8).
    wide = train_detector.build_model(config).clone(head_divisor=4)
    shape = train_detector.input_shape(config)
    other = jax.jit(lambda: wide.init(jax.random.key(0), jnp.zeros(shape)))()
    path = str(tmp_path / "other.npz")
    weights.save(jax.device_get(other), path)
    config.detector_infer.weights = path
    shutil.rmtree(artifacts.stage_dir(workdir, "infer_detector"))
    with pytest.raises(WeightsError, match=r"other\.npz: not a PoolNet with a tiny backbone"):
        pipeline.run_stage("infer_detector", config, workdir)
    assert not os.path.exists(artifacts.saliency_png_dir(workdir, "infer_detector", "val"))
    # C²AM weights as a pretrained detector backbone of another architecture.
    config.detector.update(backbone="resnet18", backbone_weights="pretrained")
    config.detector.pretrained = artifacts.weights_file(workdir, "train_saliency")
    with pytest.raises(WeightsError, match=r"f\.npz: not a resnet18 backbone"):
        train_detector.run(config, str(tmp_path / "elsewhere"), datasets.resolve(config))
    # A mis-sized training mask: the error names it.
    config.detector.update(backbone="tiny", backbone_weights="pretrained", pretrained="")
    examples = list(datasets.resolve(config).split("val"))
    mask = artifacts.saliency_png_file(workdir, "infer_saliency", "val", examples[0]["id"])
    fileio.write_saliency(mask, np.zeros((5, 5), np.uint8))
    source = data_pipeline.Attached(
        datasets.resolve(config).split("val"),
        functools.partial(train_detector.attach_target, os.path.dirname(mask)),
    )
    with pytest.raises(fileio.SaliencyMapError, match="saliency map of size 5x5"):
        source[0]


def test_hints_need_priors(tiny_config, tmp_path, few):
    config = _config(tiny_config)
    config.stages = ("train_saliency",)
    with pytest.raises(pipeline.StageError, match="needs stage infer_cam"):
        pipeline.run_stages(config, str(tmp_path))
    assert not os.path.exists(artifacts.stage_dir(str(tmp_path), "train_saliency"))
    config.infer.splits = ("train",)  # no CAMs of saliency.split = val
    with pytest.raises(config_lib.ConfigError, match=r"config\.saliency\.split='val'.*hints"):
        pipeline.validate(config, config_lib.Topology(jax.device_count()))
