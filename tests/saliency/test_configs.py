"""The saliency recipes of the configs, and the comparison's table."""

import importlib.util
import pathlib

import pytest

from pnoc_jax import config_lib, pipeline
from pnoc_jax.experiments import saliency as compare_saliency
from tests.data.voc_devkit import write_voc

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOPOLOGY = config_lib.Topology(8)


def _config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize(
    ("saliency", "stages", "labels_from"),
    [
        ("detector", ("train_saliency", "infer_saliency", "train_detector", "infer_detector",
                      "eval_saliency"), "infer_detector"),
        ("masks", ("train_saliency", "infer_saliency", "eval_saliency"), "infer_saliency"),
        ("none", (), ""),
    ],
)  # fmt: skip
def test_pnoc_voc_saliency_recipes_validate(tmp_path, saliency, stages, labels_from):
    voc = write_voc(tmp_path / "data")
    config = _config("pnoc_voc", f"train_split=train,saliency={saliency}")
    config.data.update(manual_dir=str(voc.parent), data_dir=str(tmp_path / "tfds"))
    config.model.allow_random_init = True  # no ImageNet weights in tests
    pipeline.validate(config, TOPOLOGY)
    priors = ("train_oc", "train_cam", "infer_cam", "eval_cam")
    labels = ("affinity_labels", "train_affinity", "random_walk", "eval_pseudo_labels")
    segmentation = tuple(
        f"{step}_segmentation{bound}"
        for bound in ("", "_gt")
        for step in ("train", "infer", "eval")
    )
    assert tuple(config.stages) == (*priors, *stages, *labels, *segmentation, "analyze")
    assert config.affinity_labels.saliency == labels_from
    assert config.affinity_labels.fg_threshold == (0.40 if labels_from else 0.30)
    # The spec's recipe: C²AM-H on the P-NOC hints, PoolNet on ResNet-50 with Adam.
    assert config.saliency.method == "ccamh" and config.saliency.hint_threshold == 0.4
    assert (config.saliency.crop_size, config.saliency.resize_size) == (448, 515)
    assert (config.detector.backbone, config.detector.lr, config.detector.epochs) == (
        "resnet50", 5e-5, 9,
    )  # fmt: skip
    assert tuple(config.saliency_infer.splits) == ("train",)
    with pytest.raises(ValueError, match="saliency='poolnet'"):
        _config("pnoc_voc", "saliency=poolnet")


def test_quickstart_runs_every_saliency_stage_before_the_labels():
    config = _config("quickstart")
    order = list(config.stages)
    for name in ("train_saliency", "infer_saliency", "train_detector", "infer_detector"):
        assert order.index("eval_cam") < order.index(name) < order.index("eval_saliency")
    assert order.index("eval_saliency") < order.index("affinity_labels")
    assert pipeline.deps_of("affinity_labels", config) == ("infer_cam", "infer_detector")
    assert pipeline.deps_of("train_saliency", config) == ("infer_cam", "train_oc")


def test_compare_saliency_config_and_table(tiny_config):
    config = _config("compare_saliency", "seeds=2")
    assert tuple(config.stages) == ("compare_saliency",)
    assert tuple(config.compare_saliency.seeds) == (0, 1)
    variants = {v.name: v for v in compare_saliency.VARIANTS}
    sub = compare_saliency.sub_config(config, 1, variants["ccam"])
    assert sub.seed == 1 and sub.saliency.method == "ccam"
    assert tuple(sub.saliency_eval.sources) == ("infer_saliency",)
    sub = compare_saliency.sub_config(config, 0, variants["conventional"])
    assert sub.affinity_labels.saliency == "" and pipeline.deps_of("affinity_labels", sub) == (
        "infer_cam",
    )

    def seed(a: float, b: float) -> dict:
        source = {"saliency_miou": a, "oracle_miou": b, "priors_with_saliency_miou": a - 0.1}
        labels = {"eval_pseudo_labels": {"pseudo_label_miou": b}}
        evaluated = {
            "priors_miou": 0.5,
            "sources": {"infer_saliency": source, "infer_detector": source},
        }
        return {
            "ccamh": {"eval_saliency": evaluated, **labels},
            "ccam": {"eval_saliency": evaluated},
            "ccamh_masks": labels,
            "conventional": labels,
        }

    md, numbers = compare_saliency.table([seed(0.7, 0.6), seed(0.8, 0.6)])
    lines = md.strip().splitlines()
    assert len(lines) == 6
    # mean 75.0, sample std of (70, 80) = 7.1
    assert lines[2].startswith(
        "| C²AM (no hints), CRF masks | 75.0 ± 7.1 | 60.0 ± 0.0 | 65.0 ± 7.1"
    )
    assert (
        lines[5] == "| none: conventional affinity labels | - | - | - | 50.0 ± 0.0 | 60.0 ± 0.0 |"
    )
    assert numbers["C²AM-H -> detector"]["saliency_miou"]["mean"] == pytest.approx(0.75)
