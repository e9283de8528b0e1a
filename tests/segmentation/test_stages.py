"""The segmentation stages on a few synthetic images: training with validation and the kept
checkpoint, multi-scale + flip + CRF inference with resume and the server layout, evaluation
against brute force, the fully supervised twin, and the update on 1 vs 8 devices."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from pnoc_jax import config_lib, pipeline
from pnoc_jax.core import artifacts, distributed, fileio, optim, rng, scores, weights
from pnoc_jax.core.masks import IGNORE, PALETTE
from pnoc_jax.core.train_state import create_state
from pnoc_jax.core.writers import read_metrics
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import miou
from pnoc_jax.inference import tta
from pnoc_jax.segmentation import evaluate as seg_evaluate
from pnoc_jax.segmentation import infer as seg_infer
from pnoc_jax.segmentation import model as seg_model
from pnoc_jax.segmentation import train as seg_train
from tests.collectives import collectives, unexpected

NUM_IMAGES = 10


class _Few(list):
    """The first few examples of a split (a plain picklable Sequence)."""


def _blank_truth(example: dict) -> dict:
    """An example as VOC `test` has them: no ground truth (mask all 255) and no labels."""
    return {
        **example,
        "mask": np.full_like(example["mask"], IGNORE),
        "labels": 0 * example["labels"],
    }


@pytest.fixture
def few_images(monkeypatch):
    """Every split is its first NUM_IMAGES examples; the last `val` image has no ground truth."""
    original = datasets.Dataset.split

    def split_of(self, split, whole=False):
        examples = _Few(original(self, split)[:NUM_IMAGES])
        if split == "val":
            examples[-1] = _blank_truth(examples[-1])
        return examples

    monkeypatch.setattr(datasets.Dataset, "split", split_of)


def _fake_pseudo_labels(config, workdir: str) -> None:
    """Pseudo-labels (stands in for the random walk): the GT mask with void -> background and
    a band of wrong pixels, for every split the stages read, with the score file the walk keeps
    for each image with classes; random_walk is marked done."""
    for split in config.rw.splits:
        for example in datasets.resolve(config).split(split):
            label = example["mask"].copy()
            label[label == IGNORE] = 0
            label[:3] = 1  # a wrong stripe: pseudo-labels are not the ground truth
            fileio.write_png(artifacts.pseudo_label_file(workdir, split, example["id"]), label)
            classes = np.flatnonzero(example["labels"] > 0.5)
            if classes.size:
                keys = np.concatenate([[0], classes + 1]).astype(np.int64)
                maps = np.stack([label == k for k in keys[1:]]).astype(np.float32)
                scores.write(artifacts.rw_file(workdir, split, example["id"]), keys, rw=maps)
    done = {"fingerprint": pipeline.stage_fingerprint("random_walk", config)}
    fileio.write_json(artifacts.done_file(workdir, "random_walk"), done)


def _segmentation_config(config):
    config.rw.splits = ("train", "val")
    config.segmentation.update(
        backbone="",
        output_stride=16,
        head_channels=8,
        low_level_channels=4,
        atrous_rates=(1, 2, 3),
        backbone_weights="pretrained",
        batch_size=8,
        epochs=0,
        steps=4,
        validate_every=2,
        lr=0.01,
        crop_size=32,
        min_size=32,
        max_size=48,
    )
    config.segmentation_infer.update(
        splits=("val",), scales=(1.0, 0.5), max_image_size=112, crf_iterations=2
    )
    config.runtime.update(num_workers=2, log_every=1, ckpt_every=2, predict_batch_size=4)
    return config


def _brute_force_confusion(gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    conf = np.zeros((num_labels, num_labels), np.int64)
    for g in range(num_labels):
        for p in range(num_labels):
            conf[g, p] = np.sum((gt == g) & (pred == p))
    return conf


def _iou(conf: np.ndarray) -> np.ndarray:
    out = []
    for c in range(len(conf)):
        tp, fp, fn = conf[c, c], conf[:, c].sum() - conf[c, c], conf[c].sum() - conf[c, c]
        out.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
    return np.array(out)


@pytest.mark.slow
def test_segmentation_stages_end_to_end_and_resume(tiny_config, tmp_path, few_images):
    config, workdir = _segmentation_config(tiny_config), str(tmp_path)
    config.stages = (
        "train_segmentation", "infer_segmentation", "eval_segmentation",
        "train_segmentation_gt", "infer_segmentation_gt", "eval_segmentation_gt",
    )  # fmt: skip
    pipeline.validate(config, config_lib.Topology(jax.device_count()))
    _fake_pseudo_labels(config, workdir)
    pipeline.run_stages(config, workdir)

    # Training: metrics every step, a validation at steps 2 and 4, the best kept.
    stage = "train_segmentation"
    log = read_metrics(artifacts.stage_dir(workdir, stage))
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    schedule = optim.poly_schedule(config.segmentation.lr, 4, config.segmentation.poly_power)
    for r in log:
        assert r["train/lr"] == pytest.approx(float(schedule(r["step"] - 1)), rel=1e-6)
        assert np.isfinite(r["train/loss"]) and r["train/grad_norm"] > 0
    history = seg_train.read_history(artifacts.validation_file(workdir, stage))
    assert [h["step"] for h in history] == [2, 4]
    best = max(history, key=lambda h: (h["miou"], -h["step"]))
    metrics = fileio.read_json(artifacts.metrics_file(workdir, stage))
    assert metrics["best_miou"] == best["miou"] and metrics["best_step"] == best["step"]

    # The kept weights score what the history says, against the val pseudo-labels.
    spec = seg_model.ModelSpec.read(artifacts.model_file(workdir, stage))
    assert spec == seg_model.model_spec(config)
    model = spec.build()
    kept = weights.load(artifacts.segmentation_weights_file(workdir, stage))
    validator = seg_train.Validator(
        model,
        seg_train.labelled_split(datasets.resolve(config), workdir, "pseudo", "val"),
        tta.canvas_size(config.segmentation.crop_size, 1.0),
        spec.num_classes,
        batch_size=3,
    )
    state = type("S", (), {"params": kept["params"], "batch_stats": kept["batch_stats"]})
    assert miou.scores(validator(state))["miou"] == pytest.approx(best["miou"], abs=1e-9)

    # Inference: label maps at the image size, with and without CRF; the image without ground
    # truth also in the server layout, a palette PNG of the VOC colours.
    infer_stage = "infer_segmentation"
    source = datasets.resolve(config).split("val")
    for example in source:
        for crf in (True, False):
            path = artifacts.segmentation_file(workdir, infer_stage, "val", example["id"], crf)
            assert fileio.read_png(path).shape == example["mask"].shape
    blank = source[-1]["id"]
    server = artifacts.server_file(workdir, infer_stage, blank)
    assert server.endswith(f"results/VOC2012/Segmentation/comp6_test_cls/{blank}.png")
    assert os.listdir(artifacts.server_dir(workdir, infer_stage)) == [f"{blank}.png"]
    with Image.open(server) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(
            np.asarray(image.getpalette(), np.uint8).reshape(-1, 3),
            PALETTE[: len(image.getpalette()) // 3],
        )
        final = fileio.read_png(artifacts.segmentation_file(workdir, infer_stage, "val", blank))
        np.testing.assert_array_equal(np.asarray(image), final)

    # Evaluation against brute force, with and without CRF; the blank image counts nowhere.
    result = fileio.read_json(artifacts.metrics_file(workdir, "eval_segmentation"))
    for crf, entry in ((True, result["splits"]["val"]), (False, result["splits"]["val"]["no_crf"])):
        conf = sum(
            _brute_force_confusion(
                e["mask"],
                fileio.read_png(
                    artifacts.segmentation_file(workdir, infer_stage, "val", e["id"], crf)
                ),
                7,
            )
            for e in source
        )
        iou = _iou(conf)
        assert entry["miou"] == pytest.approx(np.nanmean(iou), abs=1e-12)
        names = ["background", *datasets.get_info("synthetic").class_names]
        got = np.array([entry["per_class_iou"][n] for n in names])
        np.testing.assert_allclose(got, iou, atol=1e-12)
    assert result["miou"] == result["splits"]["val"]["miou"] and result["split"] == "val"
    assert result["miou_no_crf"] == result["splits"]["val"]["no_crf"]["miou"]
    assert os.path.getsize(artifacts.confusion_picture(workdir, "eval_segmentation")) > 1000
    assert "with CRF" in seg_evaluate.headline(result)

    # The fully supervised twin trained on the masks, validated against the ground truth.
    gt_metrics = fileio.read_json(artifacts.metrics_file(workdir, "train_segmentation_gt"))
    assert gt_metrics["labels"] == "ground_truth"
    with open(artifacts.summary_files(workdir)[1]) as f:
        assert "weak vs fully supervised" in f.read()
    assert "ratio" in fileio.read_json(artifacts.summary_files(workdir)[0])["weak_vs_supervised"]

    # Per-image inference resumes: only the images with a missing PNG are redone.
    label_dir = artifacts.segmentation_dir(workdir, infer_stage, "val")
    before = {f: os.stat(os.path.join(label_dir, f)).st_mtime_ns for f in os.listdir(label_dir)}
    redo = sorted(before)[:2]
    kept_maps = {f: fileio.read_png(os.path.join(label_dir, f)) for f in redo}
    for f in redo:
        os.remove(os.path.join(label_dir, f))
    config.runtime.num_workers = 1
    seg_infer.infer_segmentation(config, workdir, datasets.resolve(config))
    after = {f: os.stat(os.path.join(label_dir, f)).st_mtime_ns for f in os.listdir(label_dir)}
    assert {f for f in after if after[f] != before[f]} == set(redo)
    for f in redo:
        np.testing.assert_array_equal(fileio.read_png(os.path.join(label_dir, f)), kept_maps[f])
    assert not seg_infer.missing_for("pseudo")(config, workdir, datasets.resolve(config))

    # Everything finished: a rerun skips every stage; resuming training redoes no validation.
    assert not any(pipeline.run_stage(n, config, workdir) for n in config.stages)
    seg_train.train_segmentation(config, workdir, datasets.resolve(config))
    assert seg_train.read_history(artifacts.validation_file(workdir, stage)) == history


@pytest.mark.slow
def test_missing_checkpoint_past_an_unscored_point_is_reported(tiny_config, tmp_path, few_images):
    config, workdir = _segmentation_config(tiny_config), str(tmp_path)
    _fake_pseudo_labels(config, workdir)
    seg_train.train_segmentation(config, workdir, datasets.resolve(config))
    path = artifacts.validation_file(workdir, "train_segmentation")
    rows = seg_train.read_history(path)
    fileio.write_text(path, json.dumps(rows[0]) + "\n")  # step 4 was trained, never scored
    seg_train.train_segmentation(
        config, workdir, datasets.resolve(config)
    )  # restores step 4 and scores it
    assert [r["step"] for r in seg_train.read_history(path)] == [2, 4]
    fileio.write_text(path, "")  # step 2 unscored, but the checkpoint is at step 4
    with pytest.raises(RuntimeError, match="past the unscored validation point 2"):
        seg_train.train_segmentation(config, workdir, datasets.resolve(config))


def _one_step(spec: seg_model.ModelSpec, devices, batch):
    mesh = distributed.make_mesh(devices)
    model = spec.build(frozen_bn=spec.model == "deeplabv2")
    tx, stats = optim.make_optimizer(optim.OptimizerConfig(lr=0.1, total_steps=10, momentum=0.9))
    state = create_state(model, tx, rng.init_key(0), (1, 32, 32, 3), mesh, None, stats)
    update = seg_train.build_update(model, mesh, label_smoothing=0.1, seed=0)
    with jax.set_mesh(mesh):
        args = (state, {}, distributed.to_global(batch, mesh), None, jnp.asarray(3))
        # Only gradients and BN statistics are all-reduced: no image or label moves.
        assert not unexpected(update.fn, *args), collectives(update.fn, *args)
        state, metrics, _ = update.fn(*args)
    return jax.device_get((state.params, state.batch_stats)), float(metrics["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["deeplabv3plus", "deeplabv2"])
def test_one_step_same_on_1_and_8_devices(model):
    """Data parallelism changes nothing: BN statistics and the loss are global-batch, and the
    dropout masks depend on (seed, step) only."""
    assert jax.device_count() == 8
    spec = seg_model.ModelSpec(model, "tiny", 7, 8, (), 8, 4, tuple("bgabcdef"), "synthetic")
    r = np.random.default_rng(0)
    labels = r.integers(0, 7, (8, 32, 32)).astype(np.uint8)
    labels[:, :5] = IGNORE
    batch = {"image": r.normal(size=(8, 32, 32, 3)).astype(np.float32), "mask": labels}
    (p1, l1), (p8, l8) = (
        _one_step(spec, jax.devices()[:1], batch),
        _one_step(spec, jax.devices(), batch),
    )
    assert np.isfinite(l1) and l1 == pytest.approx(l8, rel=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
