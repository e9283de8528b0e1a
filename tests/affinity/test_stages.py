"""From priors to pseudo-labels: the affinity stages on a few synthetic images, and resume."""

import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from pnoc_jax import config_lib, pipeline
from pnoc_jax.affinity import random_walk as rw_lib
from pnoc_jax.affinity import train as aff_train
from pnoc_jax.affinity import walk
from pnoc_jax.core import artifacts, fileio, optim, scores, weights
from pnoc_jax.core.writers import read_metrics
from pnoc_jax.data import datasets
from pnoc_jax.inference import tta
from pnoc_jax.models.backbones import build_backbone
from tests.core.test_writers import tensorboard_scalars


class _Few(list):
    """The first few examples of a split (a plain picklable Sequence)."""


def _fake_priors(config, workdir: str, split: str) -> list[str]:
    """CAM files from blurred, shrunk GT masks (stands in for train_cam + infer_cam): ours
    (`.npz`) for even images, the reference's pickled-dict `.npy` for odd ones."""
    out_dir = artifacts.cam_dir(workdir, split)
    ids = []
    for index, example in enumerate(datasets.resolve(config).split(split)):
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
        hr = tta.resize_maps(maps, h, w)
        cam = tta.resize_maps(maps, -(-h // 4), -(-w // 4))
        hr /= hr.max(axis=(1, 2), keepdims=True) + 1e-5
        cam /= cam.max(axis=(1, 2), keepdims=True) + 1e-5
        if index % 2:
            record = np.array({"keys": keys, "cam": cam, "hr_cam": hr}, dtype=object)
            path = artifacts.official_score_file(out_dir, example["id"])
            os.makedirs(out_dir, exist_ok=True)
            np.save(path, record, allow_pickle=True)
        else:
            scores.write(
                artifacts.cam_file(workdir, split, example["id"]), keys, cam=cam, hr_cam=hr
            )
        ids.append(example["id"])
    fp = pipeline.stage_fingerprint("infer_cam", config)
    fileio.write_json(artifacts.done_file(workdir, "infer_cam"), {"fingerprint": fp})
    return sorted(ids)


@pytest.mark.slow
def test_priors_to_pseudo_labels_end_to_end_and_resume(tiny_config, tmp_path, monkeypatch):
    config, workdir = tiny_config, str(tmp_path)
    original = datasets.Dataset.split
    monkeypatch.setattr(
        datasets.Dataset, "split", lambda self, split, whole=False: _Few(original(self, split)[:10])
    )
    # A "pretrained" backbone file: after training, the backbone must still equal it.
    backbone = build_backbone("tiny", output_stride=16)
    pretrained = backbone.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    pretrained = {col: {"backbone": jax.device_get(v)} for col, v in pretrained.items()}
    weights.save(pretrained, str(tmp_path / "backbone.npz"))
    config.model.pretrained = str(tmp_path / "backbone.npz")
    config.eval.split = "val"
    config.infer.splits = ("val",)
    config.affinity_labels.update(split="val", crf_iterations=2, saliency="")  # conventional
    config.affinity.update(
        backbone_weights="pretrained",
        batch_size=8,
        steps=3,
        crop_size=48,
        min_size=40,
        max_size=56,
        radius=5,
    )
    config.rw.update(splits=("val",), max_image_size=112, exp_times=4)
    config.runtime.update(num_workers=2, log_every=1, ckpt_every=2)
    config.stages = ("affinity_labels", "train_affinity", "random_walk", "eval_pseudo_labels")
    pipeline.validate(config, config_lib.Topology(jax.device_count()))
    ids = _fake_priors(config, workdir, "val")
    pipeline.run_stages(config, workdir)

    # Priors of both formats were found; labels are palette PNGs of indices.
    cam_dir = artifacts.cam_dir(workdir, "val")
    assert {os.path.splitext(f)[1] for f in os.listdir(cam_dir)} == {".npy", ".npz"}
    for i in ids:
        with Image.open(artifacts.affinity_label_file(workdir, "val", i)) as image:
            assert image.mode == "P"
    label = fileio.read_png(artifacts.affinity_label_file(workdir, "val", ids[0]))
    assert set(np.unique(label).tolist()) <= set(range(7)) | {255}
    label_metrics = fileio.read_json(artifacts.metrics_file(workdir, "affinity_labels"))
    assert 0.5 < label_metrics["precision"] <= 1 and 0 < label_metrics["coverage"] <= 1

    trained = aff_train.load_variables(config, workdir)
    same = jax.tree.map(
        np.array_equal, pretrained["params"]["backbone"], trained["params"]["backbone"]
    )
    assert all(jax.tree.leaves(same))
    log = read_metrics(os.path.join(workdir, "train_affinity"))
    assert [r["step"] for r in log] == [1, 2, 3] and np.isfinite(log[-1]["train/loss"])
    schedule = optim.poly_schedule(config.affinity.lr, 3, config.affinity.poly_power)
    for r in log:  # the base lr of each step; grad_norm of the edge layers (backbone frozen)
        assert r["train/lr"] == pytest.approx(float(schedule(r["step"] - 1)), rel=1e-6)
        assert np.isfinite(r["train/grad_norm"]) and r["train/grad_norm"] > 0
    events = tensorboard_scalars(os.path.join(workdir, "train_affinity"))
    assert events["train/grad_norm"] == [(r["step"], np.float32(r["train/grad_norm"])) for r in log]

    def rw_file(i: str) -> str:
        return artifacts.rw_file(workdir, "val", i)

    assert sorted(os.listdir(artifacts.rw_dir(workdir, "val"))) == [f"{i}.npz" for i in ids]
    for i in ids:
        cam = scores.read_image(cam_dir, i, ("hr_cam",))
        rw = scores.read(rw_file(i), scores.RW_FIELDS)
        np.testing.assert_array_equal(rw["keys"], cam["keys"])
        assert rw["rw"].shape == cam["hr_cam"].shape and rw["rw"].max() <= 1
        with Image.open(artifacts.pseudo_label_file(workdir, "val", i)) as image:
            assert image.mode == "P"
    record = scores.read(rw_file(ids[0]), scores.RW_FIELDS)
    png_dir = artifacts.pseudo_label_dir(workdir, "val")

    metrics = fileio.read_json(artifacts.metrics_file(workdir, "eval_pseudo_labels"))
    for key in ("miou", "best_threshold", "sweep", "pseudo_label_miou"):
        assert key in metrics
    assert 0.2 < metrics["pseudo_label_miou"] <= 1

    # Resumable per-image pass: only the images with a missing output are redone.
    for i in ids[:2]:
        os.remove(rw_file(i))
    os.remove(os.path.join(png_dir, f"{ids[2]}.png"))
    kept = {i: os.stat(rw_file(i)).st_mtime_ns for i in ids[2:]}  # a kept score file is read
    config.runtime.num_workers = 1
    walk.run(config, workdir, datasets.resolve(config))
    assert all(os.path.exists(os.path.join(png_dir, f"{i}.png")) for i in ids)
    redone = scores.read(rw_file(ids[0]), scores.RW_FIELDS)["rw"]
    np.testing.assert_allclose(redone, record["rw"], atol=1e-6)
    assert {i: os.stat(rw_file(i)).st_mtime_ns for i in ids[2:]} == kept

    # Everything finished: a rerun skips every stage.
    assert not any(pipeline.run_stage(n, config, workdir) for n in config.stages)

    # The threshold chosen by the CRF sweep of val: the one eval_pseudo_labels found best
    # (the same CRF, the same 0.05 ... 0.80 grid), and every pseudo-label cut there.
    swept = metrics["crf"]
    config.rw.bg_threshold_split = "val"
    assert pipeline.run_stage("random_walk", config, workdir)
    chosen = fileio.read_json(artifacts.rw_threshold_file(workdir))
    assert chosen["split"] == "val" and chosen["best_threshold"] == swept["best_threshold"]
    assert chosen["miou"] == pytest.approx(swept["miou"])
    examples = {e["id"]: e for e in datasets.resolve(config).split("val")}
    for i in ids[:3]:
        rw = scores.read(rw_file(i), scores.RW_FIELDS)
        expected = rw_lib.pseudo_label_from_rw(
            rw["rw"], rw["keys"], examples[i]["image"], bg_threshold=chosen["best_threshold"],
            crf_iterations=config.rw.crf_iterations, crf_gt_prob=config.rw.crf_gt_prob,
        )  # fmt: skip
        np.testing.assert_array_equal(fileio.read_png(os.path.join(png_dir, f"{i}.png")), expected)
    assert walk.missing(config, workdir, datasets.resolve(config)) == []
