"""AffinityNet, its loss, and the stages from priors to pseudo-labels on a few synthetic images."""

import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax import stages
from pnoc_jax.affinity import labels as aff_labels
from pnoc_jax.affinity import loss as aff_loss
from pnoc_jax.affinity import stages as aff_stages
from pnoc_jax.affinity import train as aff_train
from pnoc_jax.affinity.paths import PathIndex
from pnoc_jax.cam import inference
from pnoc_jax.core import distributed, fileio, optim
from pnoc_jax.core.writers import read_metrics
from pnoc_jax.data import pipeline
from pnoc_jax.models import convert
from pnoc_jax.models.affinity import AffinityNet, tap_strides
from pnoc_jax.models.resnet import build_backbone


@pytest.mark.parametrize("output_stride", [16, 8])
def test_affinity_net_shape_and_stride(output_stride):
    model = AffinityNet("tiny", output_stride=output_stride)
    x = jax.ShapeDtypeStruct((2, 50, 72, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (2, 13, 18) and out.dtype == jnp.float32  # ⌈50/4⌉, ⌈72/4⌉
    strides = tap_strides("tiny", output_stride)
    assert strides == {
        "stem": 4,
        "layer1": 4,
        "layer2": 8,
        "layer3": output_stride,
        "layer4": output_stride,
    }
    params = variables["params"]
    edge = {f"edge{i}" for i in range(1, 6)} | {f"gn{i}" for i in range(1, 6)} | {"edge_out"}
    assert set(params) - {"backbone"} == edge
    assert params["edge1"]["kernel"].shape == (1, 1, 16, 32) and "bias" not in params["edge1"]
    assert params["edge_out"]["kernel"].shape == (1, 1, 160, 1) and "bias" in params["edge_out"]
    groups = optim.param_labels(params, frozen=("backbone",))
    assert set(jax.tree.leaves(groups["backbone"])) == {"frozen"}
    assert "frozen" not in jax.tree.leaves({k: v for k, v in groups.items() if k != "backbone"})


def _numpy_loss(edge_logits, label_maps, radius, num_labels):
    """Independent NumPy version: per direction, path max over IRN's path indices."""
    index = PathIndex(radius)
    sums = np.zeros(3)
    counts = np.zeros(3)
    for logits, label in zip(edge_logits, label_maps, strict=True):
        h, w = label.shape
        prob = (1 / (1 + np.exp(-logits.astype(np.float64)))).ravel()
        aff = np.stack([1 - prob[p].max(axis=0) for p in index.path_indices(h, w)])
        bg, fg, neg = aff_labels.pair_labels(label, radius, num_labels)
        pos_loss, neg_loss = -np.log(aff + 1e-5), -np.log(1 + 1e-5 - aff)
        for i, (mask, values) in enumerate(((bg, pos_loss), (fg, pos_loss), (neg, neg_loss))):
            sums[i] += values[mask].sum()
            counts[i] += mask.sum()
    bg, fg, neg = sums / (counts + 1e-5)
    return 0.5 * (0.5 * bg + 0.5 * fg + neg), (bg, fg, neg)


def test_affinity_loss_matches_numpy():
    rs = np.random.default_rng(0)
    h, w, radius, num_labels = 12, 17, 5, 4
    labels = rs.choice([0, 0, 1, 2, 3, 255], size=(2, h, w)).astype(np.uint8)
    labels[0, :6, :8] = 1  # some large uniform regions so every pair kind occurs
    labels[1, 4:, 5:] = 0
    logits = rs.normal(0, 2, size=(2, h, w)).astype(np.float32)
    want, (bg, fg, neg) = _numpy_loss(logits, labels, radius, num_labels)
    got = aff_loss.affinity_loss(jnp.asarray(logits), jnp.asarray(labels), radius, num_labels)
    np.testing.assert_allclose(float(got["loss"]), want, rtol=1e-5)
    np.testing.assert_allclose(
        [float(got[k]) for k in ("loss_bg_pos", "loss_fg_pos", "loss_neg")],
        [bg, fg, neg],
        rtol=1e-5,
    )


class _Few(list):
    """The first few examples of a split (a plain picklable Sequence)."""


def _fake_priors(config, workdir: str, split: str) -> list[str]:
    """CAM files from blurred, shrunk GT masks (stands in for train_cam + infer_cam)."""
    out_dir = inference.output_dir(workdir, split)
    ids = []
    for example in pipeline.open_split(config, split):
        mask, h, w = example["mask"], *example["mask"].shape
        classes = np.flatnonzero(example["labels"] > 0.5)
        keys = np.concatenate([[0], classes + 1]).astype(np.int64)
        maps = np.stack(
            [
                cv2.GaussianBlur(cv2.erode((mask == c + 1).astype(np.float32), None), (0, 0), 4)
                for c in classes
            ],
            axis=-1,
        )
        hr = inference.resize_maps(maps, h, w)
        cam = inference.resize_maps(maps, -(-h // 4), -(-w // 4))
        hr /= hr.max(axis=(1, 2), keepdims=True) + 1e-5
        cam /= cam.max(axis=(1, 2), keepdims=True) + 1e-5
        path = os.path.join(out_dir, f"{example['id']}.npy")
        fileio.write_npy_dict(path, {"keys": keys, "cam": cam, "hr_cam": hr})
        ids.append(example["id"])
    fp = stages.stage_fingerprint("infer_cam", config)
    fileio.write_json(os.path.join(workdir, "infer_cam", "DONE.json"), {"fingerprint": fp})
    return sorted(ids)


def test_priors_to_pseudo_labels_end_to_end_and_resume(tiny_config, tmp_path, monkeypatch):
    config, workdir = tiny_config, str(tmp_path)
    original = pipeline.open_split
    monkeypatch.setattr(pipeline, "open_split", lambda cfg, split: _Few(original(cfg, split)[:10]))
    # A "pretrained" backbone file: after training, the backbone must still equal it.
    backbone = build_backbone("tiny", output_stride=16)
    weights = backbone.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    weights = {col: {"backbone": jax.device_get(v)} for col, v in weights.items()}
    convert.save_npz_weights(weights, tmp_path / "backbone.npz")
    config.model.pretrained = str(tmp_path / "backbone.npz")
    config.eval.split = "val"
    config.affinity.update(
        split="val",
        backbone_weights="pretrained",
        crf_iterations=2,
        num_workers=1,
        batch_size=8,
        steps=3,
        crop_size=48,
        min_size=40,
        max_size=56,
        radius=5,
        log_every=1,
        ckpt_every=2,
    )
    config.rw.update(splits=("val",), max_image_size=112, num_workers=2, exp_times=4)
    config.stages = ("affinity_labels", "train_affinity", "random_walk", "eval_pseudo_labels")
    ids = _fake_priors(config, workdir, "val")
    stages.run_stages(config, workdir)

    label = fileio.read_png(os.path.join(workdir, "affinity_labels", "val", f"{ids[0]}.png"))
    assert set(np.unique(label).tolist()) <= set(range(7)) | {255}
    label_metrics = fileio.read_json(os.path.join(workdir, "affinity_labels", "metrics.json"))
    assert 0.5 < label_metrics["precision"] <= 1 and 0 < label_metrics["coverage"] <= 1

    trained = aff_train.load_variables(config, workdir, distributed.make_mesh())
    same = jax.tree.map(
        np.array_equal, weights["params"]["backbone"], jax.device_get(trained["params"]["backbone"])
    )
    assert all(jax.tree.leaves(same))
    log = read_metrics(os.path.join(workdir, "train_affinity"))
    assert [r["step"] for r in log] == [1, 2, 3] and np.isfinite(log[-1]["train/loss"])

    cam = fileio.read_npy_dict(os.path.join(workdir, "infer_cam", "val", f"{ids[0]}.npy"))
    npy_dir, png_dir = (
        aff_stages.rw_dir(workdir, "val"),
        aff_stages.pseudo_label_dir(workdir, "val"),
    )
    record = fileio.read_npy_dict(os.path.join(npy_dir, f"{ids[0]}.npy"))
    np.testing.assert_array_equal(record["keys"], cam["keys"])
    assert record["rw"].shape == cam["hr_cam"].shape and record["rw"].max() <= 1

    metrics = fileio.read_json(os.path.join(workdir, "eval_pseudo_labels", "metrics.json"))
    for key in ("miou", "best_threshold", "sweep", "pseudo_label_miou"):
        assert key in metrics
    assert 0.2 < metrics["pseudo_label_miou"] <= 1

    # Resumable per-image pass: only the images with a missing output are redone.
    for i in ids[:2]:
        os.remove(os.path.join(npy_dir, f"{i}.npy"))
    os.remove(os.path.join(png_dir, f"{ids[2]}.png"))
    kept = {i: os.stat(os.path.join(npy_dir, f"{i}.npy")).st_mtime_ns for i in ids[3:]}
    config.rw.num_workers = 1
    aff_stages.random_walk(config, workdir)
    assert all(os.path.exists(os.path.join(png_dir, f"{i}.png")) for i in ids)
    redone = fileio.read_npy_dict(os.path.join(npy_dir, f"{ids[0]}.npy"))["rw"]
    np.testing.assert_allclose(redone, record["rw"], atol=1e-6)
    assert {i: os.stat(os.path.join(npy_dir, f"{i}.npy")).st_mtime_ns for i in ids[3:]} == kept
    assert os.stat(os.path.join(npy_dir, f"{ids[2]}.npy")).st_mtime_ns > min(kept.values())

    # Everything finished: a rerun skips every stage.
    assert not any(stages.run_stage(n, config, workdir) for n in config.stages)
