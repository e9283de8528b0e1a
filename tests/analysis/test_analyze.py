"""The analyze stage: its columns, claims, cached properties and report files, on hand-made
metrics over the synthetic data and on a copy of the shared tiny run."""

import copy
import json
import os
import shutil

import numpy as np
import pytest

from pnoc_jax import config_lib, pipeline
from pnoc_jax.analysis import analyze, claims
from pnoc_jax.core import artifacts, fileio
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import class_groups
from tests.test_pipeline import TOPOLOGY

NAMES = ("ant", "bee", "cat", "dog", "eel", "fox")


def _per_class(base: float) -> dict:
    return {"background": 0.9, **{n: base + 0.01 * k for k, n in enumerate(NAMES)}}


def _metrics() -> dict:
    """Hand-made metrics of every evaluation, in the stages' formats (mIoUs as fractions)."""
    return {
        "eval_cam": {"split": "val", "miou": 0.60, "per_class_iou": _per_class(0.5),
                     "crf": {"miou": 0.7, "per_class_iou": _per_class(0.6)}},
        "eval_saliency": {
            "split": "val", "priors_miou": 0.60,
            "source_order": ["infer_saliency", "infer_detector"],
            "sources": {
                "infer_saliency": {"priors_with_saliency_miou": 0.65,
                                   "priors_with_saliency_per_class_iou": _per_class(0.55)},
                "infer_detector": {"priors_with_saliency_miou": 0.62,
                                   "priors_with_saliency_per_class_iou": _per_class(0.52)},
            },
        },
        "eval_pseudo_labels": {"split": "val", "miou": 0.66, "per_class_iou": _per_class(0.56),
                               "pseudo_label_miou": 0.64,
                               "pseudo_label_per_class_iou": _per_class(0.54)},
        "eval_segmentation": {"split": "val", "miou": 0.63, "crf_iterations": 1,
                              "per_class_iou": _per_class(0.53),
                              "splits": {"val": {"no_crf": {"per_class_iou": _per_class(0.51)}}}},
        "eval_segmentation_gt": {"split": "val", "miou": 0.70, "crf_iterations": 0,
                                 "per_class_iou": _per_class(0.6)},
    }  # fmt: skip


def test_pipeline_columns():
    columns = analyze.pipeline_columns(_metrics())
    assert list(columns) == ["val"]
    assert list(columns["val"]) == [
        "priors", "priors + CRF", "priors, C²AM-H masks bg", "priors, detector bg", "RW",
        "pseudo-labels", "segmentation", "segmentation + CRF", "fully sup.",
    ]  # fmt: skip
    assert columns["val"]["priors"]["bee"] == pytest.approx(51.0)
    assert columns["val"]["segmentation"]["ant"] == pytest.approx(51.0)  # without the CRF
    assert columns["val"]["segmentation + CRF"]["ant"] == pytest.approx(53.0)
    assert columns["val"]["fully sup."]["background"] == pytest.approx(90.0)


def test_pipeline_claims_by_hand():
    found = {c["claim"]: c for c in claims.pipeline_claims(_metrics())}
    rw = found["RW pseudo-labels ≥ priors + 3"]
    assert rw["holds"] and rw["margin"] == pytest.approx(64 - 60 - 3)
    assert not rw["beyond_noise"]  # 1 point < NOISE
    masks = found["priors with the C²AM-H masks as background > priors"]
    assert masks["holds"] and masks["margin"] == pytest.approx(5) and masks["beyond_noise"]
    detector = found["the detector improves on its masks (priors with each as background)"]
    assert not detector["holds"] and detector["margin"] == pytest.approx(-3)
    seg = found["segmentation (with the CRF) ≥ pseudo-labels − 2"]
    assert seg["holds"] and seg["margin"] == pytest.approx(63 - 64 + 2)
    share = 73.8 / 80.6
    bound = found[f"weak ≥ {100 * share:.1f} % of the fully supervised bound"]
    assert not bound["holds"] and bound["margin"] == pytest.approx(63 - share * 70)
    assert "63.00 of 70.00 = 90.0 %" in bound["ours"]
    other = _metrics()
    other["eval_segmentation"]["split"] = "test"  # a claim over two splits is left out
    assert len(claims.pipeline_claims(other)) == len(found) - 2
    text = claims.to_markdown(claims.pipeline_claims(_metrics()))
    assert text.count("\n- ✓") == 4 and text.count("\n- ✗") == 2


def test_compare_claims_use_every_seed():
    mious = {"cam": [50, 52], "puzzle": [55, 51], "poc": [60, 61], "pnoc": [62, 63]}
    groups = {
        "size small": {"cam": [40, 40], "puzzle": [45, 44], "poc": [50, 50], "pnoc": [49, 52]},
        "size large": {"cam": [30, 31], "puzzle": [60, 60], "poc": [61, 62], "pnoc": [70, 70]},
    }
    found = {c["claim"]: c for c in claims.compare_claims(mious, groups)}
    top = found["P-NOC > P-OC (priors mIoU)"]
    assert top["holds"] and top["beyond_noise"] and top["margin"] == pytest.approx(2.0)
    low = found["Puzzle-CAM > CAM (priors mIoU)"]
    assert low["holds"] and not low["beyond_noise"]  # 55 > 50 but 51 < 52
    small = found["P-NOC best on `size small` (vs the next, P-OC)"]
    assert small["holds"] and small["margin"] == pytest.approx(0.5) and not small["beyond_noise"]
    large = found["CAM worst on `size large` (vs the next, Puzzle-CAM)"]
    assert large["holds"] and large["margin"] == pytest.approx(29.5)
    assert not any("room" in c for c in found)  # no such group here


def _config(data_dir: str, stages: tuple[str, ...]):
    from tests.conftest import load_config

    config = load_config()
    config.data.data_dir = data_dir
    config.stages = stages
    return config


def test_stage_on_hand_made_metrics(synthetic_data_dir, tmp_path):
    """Run on metrics written by hand: the report files, the properties against a brute-force
    count over the split's masks, and their cache."""
    workdir = str(tmp_path / "run")
    metrics = _metrics()
    for stage, values in metrics.items():
        fileio.write_json(artifacts.metrics_file(workdir, stage), values)
    config = _config(synthetic_data_dir, (*metrics, "analyze"))
    analyze.run(config, workdir, datasets.resolve(config))
    assert analyze.missing(config, workdir, None) == []
    out = fileio.read_json(artifacts.metrics_file(workdir, "analyze"))
    tab = fileio.read_json(os.path.join(workdir, "analyze", "class_groups.json"))["val"]

    source = datasets.resolve(config).split("val", whole=True)
    examples = [source[i] for i in range(len(source))]
    for k, name in enumerate(NAMES):
        holding = [e for e in examples if e["labels"][k]]
        share = [100 * np.mean(e["mask"][e["mask"] != 255] == k + 1) for e in holding]
        assert tab["classes"][name]["O"] == len(holding)
        assert tab["classes"][name]["%S"] == pytest.approx(np.mean(share))
        assert tab["classes"][name]["L"] == pytest.approx(
            np.mean([e["labels"].sum() for e in holding])
        )
    assert tab["classes"]["cat"]["priors"] == pytest.approx(52.0)
    members = tab["group_members"]
    assert members["partnered"] == ["ant", "bee", "cat", "dog"]
    assert sum(len(members[g]) for g in class_groups.TERTILE_NAMES["%S"]) == 6
    assert tab["groups"]["unpartnered"]["RW"] == pytest.approx((56 + 4 + 56 + 5) / 2)
    assert tab["correlations"]["O"]["O"] == pytest.approx(100.0)
    assert len(out["claims"]) == out["claims_checked"] == 6 and out["claims_held"] == 4

    md = fileio.read_text(os.path.join(workdir, "analyze", "class_groups.md"))
    assert "| ρ(%S) |" in md and "| partnered |" in md
    csv = fileio.read_text(os.path.join(workdir, "analyze", "class_groups.csv")).splitlines()
    assert csv[0].startswith("split,section,row,O,%S,%C,L,priors,")
    assert json.loads(fileio.read_text(os.path.join(workdir, "analyze", "class_groups.json")))
    for name in ("class_groups.png", "iou_vs_size.png"):
        assert os.path.getsize(os.path.join(workdir, "analyze", name)) > 5000

    # Cached beside the dataset; a cache of other data is not used.
    identity = datasets.identity(config)
    cache = os.path.join(
        synthetic_data_dir, "class_properties",
        f"synthetic-{config_lib.fingerprint(identity)}-val.json",
    )  # fmt: skip
    assert fileio.read_json(cache)["properties"]["ant"]["O"] == tab["classes"]["ant"]["O"]
    fileio.write_json(cache, {"identity": {"other": "data"}, "split": "val", "properties": {}})
    assert (
        analyze.properties(config, datasets.resolve(config), "val")["ant"]["O"]
        == tab["classes"]["ant"]["O"]
    )


def test_groups_config_and_order_are_checked(synthetic_data_dir):
    config = _config(synthetic_data_dir, ("eval_cam", "analyze"))
    config.analysis.groups = ("pair=ant,bee", "rest=cat,dog,eel,fox")
    assert analyze.groups_for(config, NAMES, {n: {"O": 1.0, "%S": 1.0} for n in NAMES})["pair"] == [
        "ant", "bee",
    ]  # fmt: skip
    for bad in (("pair=ant,wolf",), ("ant,bee",), ("a=ant", "a=bee")):
        config.analysis.groups = bad
        with pytest.raises(config_lib.ConfigError, match=r"config\.analysis\.groups="):
            analyze.validate(config, TOPOLOGY)
    config.analysis.groups = ()
    config.stages = ("analyze", "eval_cam")
    with pytest.raises(config_lib.ConfigError, match="'analyze' after at least one of"):
        analyze.validate_order(config, TOPOLOGY)


@pytest.mark.slow  # needs the shared tiny run (minutes, once per session)
def test_stage_on_the_tiny_run(tiny_run, tmp_path):
    """On a copy of the finished tiny run: the stage runs after the evaluations, its table's
    IoUs are the evaluations', the summary lists the claims, and a rerun skips it."""
    config, finished = tiny_run
    workdir = str(tmp_path / "run")
    shutil.copytree(finished, workdir)
    config = copy.deepcopy(config)
    config.stages = (*config.stages, "analyze")
    pipeline.run_stages(config, workdir)
    tab = fileio.read_json(os.path.join(workdir, "analyze", "class_groups.json"))["val"]
    cam = fileio.read_json(artifacts.metrics_file(workdir, "eval_cam"))
    assert tab["classes"]["eel"]["priors"] == pytest.approx(100 * cam["per_class_iou"]["eel"])
    assert tab["overall"]["priors"] == pytest.approx(100 * cam["miou"])
    summary = fileio.read_text(artifacts.summary_files(workdir)[1])
    assert "[class_groups.md](analyze/class_groups.md)" in summary
    assert "## The paper's claims" in summary and "RW pseudo-labels ≥ priors + 3" in summary
    held = fileio.read_json(artifacts.summary_files(workdir)[0])["analyze"]
    assert set(held) == {"claims_held", "claims_checked"}  # the tables stay out of the summary
    assert not pipeline.run_stage("analyze", config, workdir)


def test_stage_on_a_comparison(synthetic_data_dir, tmp_path):
    """`compare`'s strategies become the columns (mean over seeds) and its claims use seeds."""
    workdir = str(tmp_path / "compare")
    config = _config(synthetic_data_dir, ("compare", "analyze"))
    config.compare.update(strategies=("cam", "pnoc"), seeds=(0, 1))
    base = {"cam": 0.40, "pnoc": 0.50}
    for seed in (0, 1):
        for strategy, value in base.items():
            run_dir = artifacts.compare_run_dir(workdir, seed, strategy)
            per_class = _per_class(value + 0.02 * seed)
            fileio.write_json(
                artifacts.metrics_file(run_dir, "eval_cam"),
                {"split": "val", "miou": float(np.mean(list(per_class.values()))),
                 "per_class_iou": per_class},
            )  # fmt: skip
    analyze.run(config, workdir, datasets.resolve(config))
    out = fileio.read_json(artifacts.metrics_file(workdir, "analyze"))
    tab = fileio.read_json(os.path.join(workdir, "analyze", "class_groups.json"))["val"]
    assert tab["columns"] == ["O", "%S", "%C", "L", "cam", "pnoc"]
    assert tab["classes"]["bee"]["pnoc"] == pytest.approx(100 * (0.51 + 0.53) / 2)
    found = {c["claim"]: c for c in out["claims"]}
    chain = found["P-NOC > CAM (priors mIoU)"]
    assert chain["holds"] and chain["beyond_noise"]
    assert found["P-NOC best on `size large` (vs the next, CAM)"]["margin"] == pytest.approx(10)
