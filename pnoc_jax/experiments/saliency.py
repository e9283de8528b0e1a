"""Stage `compare_saliency`: the saliency comparison (Table 6 and the Table 7 saliency rows).

Per seed, the full recipe ("ccamh": priors, C²AM-H, detector, labels from the detector's maps,
random walk) and three variants that reuse its finished stages through links: plain C²AM,
labels from the C²AM-H masks, and conventional labels (no saliency). Sub-runs are ordinary
stage runs in `compare_saliency/seed<k>/<variant>/`, so an interrupted comparison resumes.
"""

import copy
import dataclasses
import os

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed, fileio
from pnoc_jax.data import datasets
from pnoc_jax.experiments.strategies import RunStage

PRIOR_STAGES = ("train_oc", "train_cam", "infer_cam", "eval_cam")
SALIENCY_STAGES = ("train_saliency", "infer_saliency", "train_detector", "infer_detector")
LABEL_STAGES = ("affinity_labels", "train_affinity", "random_walk", "eval_pseudo_labels")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    title: str  # the row of the table
    overrides: dict  # dotted config keys -> values
    stages: tuple[str, ...]  # run in the variant's folder
    shared: tuple[str, ...] = ()  # finished stages of "ccamh" it links to


VARIANTS = (
    Variant(
        "ccamh",
        "C²AM-H -> detector",
        {"saliency.method": "ccamh", "affinity_labels.saliency": "infer_detector"},
        (*PRIOR_STAGES, *SALIENCY_STAGES, "eval_saliency", *LABEL_STAGES),
    ),
    Variant(
        "ccam",
        "C²AM (no hints), CRF masks",
        {"saliency.method": "ccam", "saliency_eval.sources": ("infer_saliency",)},
        ("train_saliency", "infer_saliency", "eval_saliency"),
        PRIOR_STAGES,
    ),
    Variant(
        "ccamh_masks",
        "C²AM-H, CRF masks",
        {"saliency.method": "ccamh", "affinity_labels.saliency": "infer_saliency"},
        LABEL_STAGES,
        (*PRIOR_STAGES, "train_saliency", "infer_saliency"),
    ),
    Variant(
        "conventional",
        "none: conventional affinity labels",
        {"affinity_labels.saliency": "", "affinity_labels.saliency_dir": ""},
        LABEL_STAGES,
        PRIOR_STAGES,
    ),
)


def sub_config(
    config: ml_collections.ConfigDict, seed: int, variant: Variant
) -> ml_collections.ConfigDict:
    sub = copy.deepcopy(config)
    with sub.unlocked():
        sub.seed = seed
        sub.stages = variant.stages
        for key, value in variant.overrides.items():
            section, _, leaf = key.rpartition(".")
            config_lib.get(sub, section)[leaf] = value
    return sub


def _link_shared(workdir: str, seed: int, variant: Variant) -> None:
    """Links the variant's shared stage folders to those of the seed's "ccamh" run."""
    source_dir = artifacts.compare_saliency_dir(workdir, seed, "ccamh")
    target_dir = artifacts.compare_saliency_dir(workdir, seed, variant.name)
    fileio.makedirs(target_dir)
    for stage in variant.shared:  # a copy, DONE.json last, on an object store (no links)
        fileio.link_tree(
            artifacts.stage_dir(source_dir, stage), artifacts.stage_dir(target_dir, stage)
        )


def _mean_std(values: list[float]) -> str:
    v = 100 * np.asarray(values, np.float64)
    return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"


def table(results: list[dict]) -> tuple[str, dict]:
    """Markdown table and its numbers from one dict per seed {variant: {stage: metrics}}."""
    rows = [
        ("C²AM (no hints), CRF masks", "ccam", "infer_saliency", None),
        ("C²AM-H, CRF masks", "ccamh", "infer_saliency", "ccamh_masks"),
        ("C²AM-H -> detector", "ccamh", "infer_detector", "ccamh"),
        ("none: conventional affinity labels", None, None, "conventional"),
    ]
    header = (
        "| saliency | saliency mIoU | GT oracle | priors + saliency as background | "
        "priors alone | RW pseudo-labels |"
    )
    md = [header, "|---|---|---|---|---|---|"]
    numbers: dict = {}
    priors = [r["ccamh"]["eval_saliency"]["priors_miou"] for r in results]
    for title, run_name, source, labels in rows:
        cells, entry = [], {}
        for key in ("saliency_miou", "oracle_miou", "priors_with_saliency_miou"):
            if run_name is None:
                cells.append("-")
                continue
            values = [r[run_name]["eval_saliency"]["sources"][source][key] for r in results]
            cells.append(_mean_std(values))
            entry[key] = values
        cells.append(_mean_std(priors))
        entry["priors_miou"] = priors
        if labels is None:
            cells.append("-")
        else:
            values = [r[labels]["eval_pseudo_labels"]["pseudo_label_miou"] for r in results]
            cells.append(_mean_std(values))
            entry["pseudo_label_miou"] = values
        md.append(f"| {title} | " + " | ".join(cells) + " |")
        numbers[title] = {
            k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            for k, v in entry.items()
        }
    return "\n".join(md) + "\n", numbers


def run(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset, run_stage: RunStage
) -> None:
    """For every seed, the recipe and its `VARIANTS` through `run_stage`; writes
    `compare_saliency/results.md` and `metrics.json` (mean ± std over seeds)."""
    results = []
    for seed in config.compare_saliency.seeds:
        per_seed: dict[str, dict] = {}
        for variant in VARIANTS:
            sub_dir = artifacts.compare_saliency_dir(workdir, seed, variant.name)
            if distributed.is_chief():
                _link_shared(workdir, seed, variant)
            distributed.barrier(f"compare_saliency-{seed}-{variant.name}")
            sub = sub_config(config, seed, variant)
            logging.info("compare_saliency: seed %d, %s -> %s", seed, variant.name, sub_dir)
            for name in sub.stages:
                run_stage(name, sub, sub_dir, dataset)
            per_seed[variant.name] = {
                name: fileio.read_json(artifacts.metrics_file(sub_dir, name))
                for name in ("eval_saliency", "eval_pseudo_labels")
                if fileio.exists(artifacts.metrics_file(sub_dir, name))
            }
        results.append(per_seed)
    if not distributed.is_chief():
        return
    md, numbers = table(results)
    folder = artifacts.stage_dir(workdir, "compare_saliency")
    fileio.write_text(os.path.join(folder, "results.md"), md)
    fileio.write_json(
        artifacts.metrics_file(workdir, "compare_saliency"),
        {"table": md, "seeds": len(results), "rows": numbers},
    )


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    del config, dataset
    folder = artifacts.stage_dir(workdir, "compare_saliency")
    return artifacts.missing(os.path.join(folder, n) for n in ("results.md", "metrics.json"))


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.compare_saliency`."""
    del topology
    config_lib.check_seeds(config, "compare_saliency.seeds")
