"""The three stages end to end on the synthetic data, the official CAM file format, and skipping."""

import json
import math
import os

import numpy as np

from pnoc_jax import stages
from pnoc_jax.core import fileio


def test_quickstart_stages_then_skip(tiny_config, tmp_path):
    """The quickstart's P-NOC pipeline: train_oc -> train_cam (pnoc) -> infer_cam -> eval_cam."""
    workdir = str(tmp_path)
    tiny_config.stages = ("train_oc", "train_cam", "infer_cam", "eval_cam")
    tiny_config.train.update(strategy="pnoc", init_backbone_from="train_oc")
    tiny_config.infer.splits = ("val",)
    tiny_config.eval.split = "val"
    stages.run_stages(tiny_config, workdir)

    files = sorted(os.listdir(os.path.join(workdir, "infer_cam", "val")))
    assert len(files) == 200 and all(f.endswith(".npy") for f in files)
    record = fileio.read_npy_dict(os.path.join(workdir, "infer_cam", "val", files[0]))
    keys, cam, hr = record["keys"], record["cam"], record["hr_cam"]
    assert keys[0] == 0 and len(keys) == cam.shape[0] + 1 == hr.shape[0] + 1
    h, w = hr.shape[1:]
    assert cam.shape[1:] == (math.ceil(h / 4), math.ceil(w / 4))
    assert hr.dtype == np.float32 and hr.min() >= 0 and hr.max() <= 1

    metrics = fileio.read_json(os.path.join(workdir, "eval_cam", "metrics.json"))
    for key in ("miou", "best_threshold", "per_class_iou", "fpr", "fnr", "sweep"):
        assert key in metrics
    assert len(metrics["sweep"]) == len(tiny_config.eval.thresholds)
    assert metrics["miou"] == max(row["miou"] for row in metrics["sweep"])
    assert os.path.getsize(os.path.join(workdir, "eval_cam", "sweep.png")) > 1000
    with open(os.path.join(workdir, "eval_cam", "sweep.csv")) as f:
        assert f.readline().strip() == "threshold,miou,fpr,fnr"

    # Re-running a finished pipeline does nothing; a changed eval config reruns only eval.
    assert not any(stages.run_stage(n, tiny_config, workdir) for n in tiny_config.stages)
    tiny_config.eval.thresholds = (0.2, 0.4)
    ran = [stages.run_stage(n, tiny_config, workdir) for n in tiny_config.stages]
    assert ran == [False, False, False, True]
    assert os.path.isdir(os.path.join(workdir, "eval_cam.stale-1"))
    with open(os.path.join(workdir, "eval_cam", "config.json")) as f:
        assert json.load(f)["config"]["eval"]["thresholds"] == [0.2, 0.4]
