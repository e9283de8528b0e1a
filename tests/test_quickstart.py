"""The quickstart's stages end to end on the synthetic data (tiny settings): the CAM files
(.npz), the exported weights, skipping, reruns of what changed, and the notebook on the finished
run, from priors to the segmentation model and its fully supervised bound."""

import copy
import json
import math
import os
import shutil

import numpy as np
import pytest

from pnoc_jax import pipeline, visualize
from pnoc_jax.core import artifacts, fileio, scores, weights

pytestmark = pytest.mark.slow  # end-to-end runs: minutes

ROOT = os.path.join(os.path.dirname(__file__), "..")
STAGES = ("train_oc", "train_cam", "infer_cam", "eval_cam")


@pytest.fixture
def finished_run(tiny_run):
    """The shared tiny run (tests/conftest.py): train_oc -> train_cam (pnoc, backbone from the
    OC) -> infer_cam -> eval_cam, then the pseudo-labels and the segmentation stages, all on
    `val` with tiny networks; a fresh copy of its config, the workdir as finished."""
    config, workdir = tiny_run
    assert config.stages[: len(STAGES)] == STAGES and config.stages[-1] == "eval_segmentation_gt"
    return copy.deepcopy(config), workdir


def test_cam_files_weights_and_metrics(finished_run):
    config, workdir = finished_run
    files = sorted(os.listdir(artifacts.cam_dir(workdir, "val")))
    assert len(files) == 200 and all(f.endswith(".npz") for f in files)
    record = scores.read(
        os.path.join(artifacts.cam_dir(workdir, "val"), files[0]), scores.CAM_FIELDS
    )
    keys, cam, hr = record["keys"], record["cam"], record["hr_cam"]
    assert keys[0] == 0 and len(keys) == cam.shape[0] + 1 == hr.shape[0] + 1
    h, w = hr.shape[1:]
    assert cam.shape[1:] == (math.ceil(h / 4), math.ceil(w / 4))
    assert hr.dtype == np.float32 and hr.min() >= 0 and hr.max() <= 1

    # Training stages export their final variables; P-NOC's also its trained noc.
    for stage, states in (("train_oc", ("f",)), ("train_cam", ("f", "oc"))):
        for state in states:
            variables = weights.load(artifacts.weights_file(workdir, stage, state))
            assert set(variables) == {"params", "batch_stats"}
            assert {"backbone", "classifier"} == set(variables["params"])
    assert not os.path.exists(artifacts.weights_file(workdir, "train_oc", "oc"))

    metrics = fileio.read_json(artifacts.metrics_file(workdir, "eval_cam"))
    for key in ("miou", "best_threshold", "per_class_iou", "fpr", "fnr", "sweep"):
        assert key in metrics
    assert len(metrics["sweep"]) == len(config.eval.thresholds)
    assert metrics["miou"] == max(row["miou"] for row in metrics["sweep"])
    eval_dir = artifacts.stage_dir(workdir, "eval_cam")
    assert os.path.getsize(os.path.join(eval_dir, "sweep.png")) > 1000
    with open(os.path.join(eval_dir, "sweep.csv")) as f:
        assert f.readline().strip() == "threshold,miou,fpr,fnr"


def test_notebook_cells_run(finished_run, monkeypatch):
    """The notebook's code cells, unmodified, read the finished run through PNOC_WORKDIR."""
    import matplotlib

    matplotlib.use("Agg")
    _, workdir = finished_run
    monkeypatch.setenv("PNOC_WORKDIR", workdir)
    with open(os.path.join(ROOT, "notebooks", "inspect_run.ipynb")) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    namespace: dict = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), "notebook", "exec"), namespace)
    assert namespace["WORKDIR"] == workdir and namespace["SPLIT"] == "val"
    columns = list(visualize.run_columns(workdir, "val"))
    assert columns == [
        "image", "ground truth", "CAM", "pseudo-label", "segmentation", "fully supervised",
    ]  # fmt: skip
    assert list(namespace["series"]) == [name for name, _, _ in visualize.IOU_STAGES]
    # The training curves: one row per training stage, validation mIoU for segmentation.
    figure = visualize.training_curves(workdir)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles.count("validation mIoU (%)") == 2 and titles.count("losses") == 5
    with pytest.raises(ValueError, match="no CAM of class 'nope'"):
        visualize.show_class_cams(namespace["example"], artifacts.cam_dir(workdir, "val"),
                                  namespace["class_names"], "nope")  # fmt: skip


def test_finished_stages_are_skipped_and_changes_rerun_downstream(finished_run, tmp_path):
    config, shared = finished_run
    workdir = str(tmp_path / "run")
    shutil.copytree(shared, workdir)  # the shared run stays as it was
    assert not any(pipeline.run_stage(n, config, workdir) for n in config.stages)
    config.runtime.update(log_every=3, ckpt_every=5, predict_batch_size=2)  # how, not what
    assert not any(pipeline.run_stage(n, config, workdir) for n in config.stages)
    config.eval.thresholds = (0.2, 0.4)
    ran = [n for n in config.stages if pipeline.run_stage(n, config, workdir)]
    assert ran == ["eval_cam", "eval_pseudo_labels"]
    assert os.path.isdir(os.path.join(workdir, "eval_cam.stale-1"))
    with open(artifacts.config_file(workdir, "eval_cam")) as f:
        assert json.load(f)["config"]["eval"]["thresholds"] == [0.2, 0.4]
