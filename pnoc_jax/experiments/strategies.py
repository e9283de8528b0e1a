"""Stage `compare`: the paper's strategy ablation (Tables 2-3), every strategy for every seed.

For every seed one ordinary classifier is trained and shared by every strategy's
train_cam -> infer_cam -> eval_cam. Sub-runs are ordinary stage runs in
`compare/seed<k>/<strategy>/`, so an interrupted comparison resumes where it stopped.
"""

import copy
import os
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.cam import strategies
from pnoc_jax.core import artifacts, distributed, fileio
from pnoc_jax.data import datasets

# The runner's `run_stage(name, config, workdir, dataset)`: True if the stage ran.
RunStage = Callable[[str, ml_collections.ConfigDict, str, datasets.Dataset], bool]


def sub_config(
    config: ml_collections.ConfigDict, seed: int, strategy: str, oc_weights: str
) -> ml_collections.ConfigDict:
    """The config of one (seed, strategy) run: train -> infer (the evaluated split) -> eval."""
    sub = copy.deepcopy(config)
    with sub.unlocked():
        sub.seed = seed
        sub.train.strategy = strategy
        sub.train.oc_weights = oc_weights if strategies.reads_oc(sub.train) else ""
        sub.stages = ("train_cam", "infer_cam", "eval_cam")
        sub.infer.splits = (sub.eval.split,)  # only the evaluated split's CAMs are needed
    return sub


def tables(results: dict[str, list[dict]], class_names: list[str]) -> tuple[str, str]:
    """Markdown and CSV tables from {strategy: [eval_cam metrics of each seed]}."""
    names = ["background", *class_names]
    header = ["strategy", "seeds", "miou_mean", "miou_std", *names]
    md = [
        "| strategy | mIoU (mean ± std) | seeds | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    csv = [",".join(header)]
    for strategy, runs in results.items():
        mious = 100 * np.array([r["miou"] for r in runs])
        per_class = [100 * np.mean([r["per_class_iou"][n] for r in runs]) for n in names]
        std = mious.std(ddof=1) if len(mious) > 1 else 0.0
        md.append(
            f"| {strategy} | {mious.mean():.1f} ± {std:.1f} | {len(runs)} | "
            + " | ".join(f"{v:.1f}" for v in per_class)
            + " |"
        )
        csv.append(
            ",".join([strategy, str(len(runs)), f"{mious.mean():.3f}", f"{std:.3f}"])
            + ","
            + ",".join(f"{v:.3f}" for v in per_class)
        )
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def run(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset, run_stage: RunStage
) -> None:
    """Runs every (seed, strategy) through `run_stage`; writes `compare/results.{md,csv}` and
    `metrics.json` (mIoU mean ± std over seeds per strategy)."""
    results: dict[str, list[dict]] = {s: [] for s in config.compare.strategies}
    for seed in config.compare.seeds:
        seed_dir = artifacts.compare_seed_dir(workdir, seed)
        run_stage("train_oc", sub_config(config, seed, "cam", ""), seed_dir, dataset)
        oc_weights = artifacts.weights_file(seed_dir, "train_oc")
        for strategy in config.compare.strategies:
            sub_dir = artifacts.compare_run_dir(workdir, seed, strategy)
            logging.info("compare: seed %d, strategy %s -> %s", seed, strategy, sub_dir)
            sub = sub_config(config, seed, strategy, oc_weights)
            for name in sub.stages:
                run_stage(name, sub, sub_dir, dataset)
            results[strategy].append(fileio.read_json(artifacts.metrics_file(sub_dir, "eval_cam")))
    if not distributed.is_chief():
        return
    class_names = list(dataset.class_names)
    md, csv = tables(results, class_names)
    out_dir = artifacts.stage_dir(workdir, "compare")
    fileio.write_text(os.path.join(out_dir, "results.md"), md)
    fileio.write_text(os.path.join(out_dir, "results.csv"), csv)
    mious = {s: 100 * np.array([r["miou"] for r in runs]) for s, runs in results.items()}
    fileio.write_json(
        artifacts.metrics_file(workdir, "compare"),
        {
            "table": md,
            "strategies": {
                s: {
                    "miou_mean": float(m.mean()) / 100,
                    "miou_std": float(m.std(ddof=1)) / 100 if len(m) > 1 else 0.0,
                    "seeds": len(m),
                }
                for s, m in mious.items()
            },
        },
    )


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    del config, dataset
    folder = artifacts.stage_dir(workdir, "compare")
    names = ("results.md", "results.csv", "metrics.json")
    return artifacts.missing(os.path.join(folder, name) for name in names)


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.compare`."""
    del topology
    chosen = tuple(config.compare.strategies)
    config_lib.check(
        bool(chosen) and set(chosen) <= set(strategies.STRATEGIES),
        "compare.strategies",
        chosen,
        f"a non-empty subset of {sorted(strategies.STRATEGIES)}",
    )
    config_lib.check_seeds(config, "compare.seeds")
