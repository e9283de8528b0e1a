"""The stage graph and the runner that skips finished stages.

`STAGES` is the whole pipeline in one table: each stage's function, the config sections that
determine its outputs, the stages whose outputs it reads, its cross-section checks, and the one
line it reports. `SECTION_CHECKS` checks every section a selected stage reads. Each stage
writes under `<workdir>/<stage>/`: `config.json` when it starts
and `DONE.json` when it finished. A stage is skipped when `DONE.json` holds the fingerprint of
its current config (its sections plus the fingerprints of the stages it reads), so a changed
stage reruns, and so does everything downstream of it. A stage folder left by a different config
is moved aside (`<stage>.stale-N`), never deleted. `config.runtime` is in no stage's sections.

The `compare` stage (the paper's strategy ablation) runs sub-pipelines, so it lives here too.
"""

import copy
import dataclasses
import os
import time
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.affinity import evaluate as affinity_evaluate
from pnoc_jax.affinity import make_labels, walk
from pnoc_jax.affinity import train as affinity_train
from pnoc_jax.cam import evaluate as cam_evaluate
from pnoc_jax.cam import infer as cam_infer
from pnoc_jax.cam import strategies
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import artifacts, distributed, fileio
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import sweep
from pnoc_jax.models import backbones


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[ml_collections.ConfigDict, str], None]
    sections: tuple[str, ...]  # config sections that determine the stage's outputs
    deps: tuple[str, ...] | Callable[[ml_collections.ConfigDict], tuple[str, ...]] = ()
    checks: tuple[config_lib.Check, ...] = ()  # cross-section checks beyond SECTION_CHECKS
    headline: Callable[[dict], str] | None = None  # one line from its metrics.json


# ---------------------------------------------------------------------------- the comparison


def compare_sub_config(
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


def compare_tables(results: dict[str, list[dict]], class_names: list[str]) -> tuple[str, str]:
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


def run_compare(config: ml_collections.ConfigDict, workdir: str) -> None:
    """For every seed, one ordinary classifier shared by every strategy's train -> infer -> eval.

    Sub-runs are ordinary stage runs in `compare/seed<k>/<strategy>/`, so an interrupted
    comparison resumes where it stopped. Writes `compare/results.{md,csv}` and `metrics.json`.
    """
    results: dict[str, list[dict]] = {s: [] for s in config.compare.strategies}
    for seed in config.compare.seeds:
        seed_dir = artifacts.compare_seed_dir(workdir, seed)
        run_stage("train_oc", compare_sub_config(config, seed, "cam", ""), seed_dir)
        oc_weights = artifacts.weights_file(seed_dir, "train_oc")
        for strategy in config.compare.strategies:
            sub_dir = artifacts.compare_run_dir(workdir, seed, strategy)
            logging.info("compare: seed %d, strategy %s -> %s", seed, strategy, sub_dir)
            run_stages(compare_sub_config(config, seed, strategy, oc_weights), sub_dir)
            results[strategy].append(fileio.read_json(artifacts.metrics_file(sub_dir, "eval_cam")))
    if not distributed.is_chief():
        return
    class_names = list(datasets.get_info(config.data.name).class_names)
    md, csv = compare_tables(results, class_names)
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


def validate_compare(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.compare`."""
    del topology
    chosen = tuple(config.compare.strategies)
    config_lib.check(
        bool(chosen) and set(chosen) <= set(strategies.STRATEGIES),
        "compare.strategies",
        chosen,
        f"a non-empty subset of {sorted(strategies.STRATEGIES)}",
    )
    seeds = tuple(config.compare.seeds)
    config_lib.check(
        bool(seeds) and len(set(seeds)) == len(seeds) and all(isinstance(s, int) for s in seeds),
        "compare.seeds",
        seeds,
        "distinct integer seeds",
    )


# ---------------------------------------------------------------------------- the stage graph

# The checks of each config section, run for every section a selected stage reads.
SECTION_CHECKS: dict[str, config_lib.Check] = {
    "runtime": config_lib.validate_runtime,
    "seed": config_lib.validate_seed,
    "data": datasets.validate_data,
    "model": backbones.validate_model,
    "oc": cam_train.validate_oc,
    "train": cam_train.validate_train,
    "infer": cam_infer.validate,
    "eval": sweep.validate_eval,
    "affinity_labels": make_labels.validate,
    "affinity": affinity_train.validate,
    "rw": walk.validate,
    "compare": validate_compare,
}

_TRAIN = ("seed", "data", "model")
# fmt: off
STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    #     name                  run                    sections             reads
    Stage("train_oc",           cam_train.train_oc,    (*_TRAIN, "oc")),
    Stage("train_cam",          cam_train.train_cam,   (*_TRAIN, "train"),  cam_train.cam_deps),
    Stage("infer_cam",          cam_infer.run,         ("data", "model", "infer"), cam_infer.deps),
    Stage("eval_cam",           cam_evaluate.run,      ("data", "eval"),    ("infer_cam",),
          checks=(cam_evaluate.validate,), headline=cam_evaluate.headline),
    Stage("affinity_labels",    make_labels.run,       ("data", "affinity_labels"), ("infer_cam",),
          headline=make_labels.headline),
    Stage("train_affinity",     affinity_train.run,    (*_TRAIN, "affinity"), affinity_train.deps),
    Stage("random_walk",        walk.run,              ("data", "rw"),
          ("train_affinity", "infer_cam")),
    Stage("eval_pseudo_labels", affinity_evaluate.run, ("data", "eval"),    ("random_walk",),
          checks=(affinity_evaluate.validate,), headline=affinity_evaluate.headline),
    Stage("compare",            run_compare,
          (*_TRAIN, "oc", "train", "infer", "eval", "compare"),
          headline=lambda metrics: metrics["table"]),
)}
# fmt: on


# ---------------------------------------------------------------------------- the runner


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Every check of every selected stage, before anything is read or written."""
    config_lib.validate(config, STAGES, SECTION_CHECKS, topology)


def deps_of(name: str, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    deps = STAGES[name].deps
    return deps(config) if callable(deps) else deps


def stage_fingerprint(name: str, config: ml_collections.ConfigDict) -> str:
    """Hash of the stage's config sections and of the fingerprints of the stages it reads."""
    sections = {s: config_lib.to_plain(config[s]) for s in STAGES[name].sections}
    upstream = {dep: stage_fingerprint(dep, config) for dep in deps_of(name, config)}
    return config_lib.fingerprint({"stage": name, "config": sections, "deps": upstream})


def is_finished(workdir: str, name: str, config: ml_collections.ConfigDict) -> bool:
    path = artifacts.done_file(workdir, name)
    return os.path.exists(path) and fileio.read_json(path).get("fingerprint") == stage_fingerprint(
        name, config
    )


def _move_aside(stage_dir: str) -> None:
    n = 1
    while os.path.exists(f"{stage_dir}.stale-{n}"):
        n += 1
    os.rename(stage_dir, f"{stage_dir}.stale-{n}")
    logging.warning(
        "%s was made with another config: moved to %s.stale-%d", stage_dir, stage_dir, n
    )


def _report(name: str, workdir: str) -> None:
    """Prints the stage's headline from its metrics.json (chief only)."""
    headline = STAGES[name].headline
    path = artifacts.metrics_file(workdir, name)
    if headline is not None and distributed.is_chief() and os.path.exists(path):
        print(headline(fileio.read_json(path)), flush=True)


def run_stage(name: str, config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Runs one stage unless finished with the same fingerprint. Returns True if it ran."""
    fp = stage_fingerprint(name, config)
    if is_finished(workdir, name, config):
        logging.info("stage %s: finished with this config (%s), skipped", name, fp)
        return False
    for dep in deps_of(name, config):
        if not is_finished(workdir, dep, config):
            raise RuntimeError(
                f"stage {name} needs stage {dep} finished in {workdir} with the current config; "
                f"add {dep!r} to config.stages before {name!r}"
            )
    recorded = artifacts.config_file(workdir, name)
    if distributed.is_chief():
        if os.path.exists(recorded) and fileio.read_json(recorded).get("fingerprint") != fp:
            _move_aside(artifacts.stage_dir(workdir, name))
        fileio.write_json(
            recorded, {"stage": name, "fingerprint": fp, "config": config_lib.to_plain(config)}
        )
    distributed.barrier(f"start-{name}")
    logging.info("stage %s: running (fingerprint %s)", name, fp)
    start = time.time()
    STAGES[name].run(config, workdir)
    distributed.barrier(f"end-{name}")
    if distributed.is_chief():
        fileio.write_json(
            artifacts.done_file(workdir, name),
            {"stage": name, "fingerprint": fp, "seconds": round(time.time() - start, 1)},
        )
    _report(name, workdir)
    return True


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> None:
    for name in config.stages:
        run_stage(name, config, workdir)
