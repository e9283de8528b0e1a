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

import contextlib
import copy
import dataclasses
import os
import sys
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
from pnoc_jax.core.errors import UserError
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import sweep
from pnoc_jax.models import backbones

# -------------------------------------------------------------------- saliency (issue 10)
from pnoc_jax.saliency import evaluate as saliency_evaluate
from pnoc_jax.saliency import infer as saliency_infer
from pnoc_jax.saliency import infer_detector, train_detector
from pnoc_jax.saliency import train as saliency_train

# -------------------------------------------------------------------- (end of issue 10)
# -------------------------------------------------------------------- segmentation (issue 11)
from pnoc_jax.segmentation import evaluate as seg_evaluate
from pnoc_jax.segmentation import infer as seg_infer
from pnoc_jax.segmentation import train as seg_train

# -------------------------------------------------------------------- (end of issue 11)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[ml_collections.ConfigDict, str], None]
    sections: tuple[str, ...]  # config sections that determine the stage's outputs
    deps: tuple[str, ...] | Callable[[ml_collections.ConfigDict], tuple[str, ...]] = ()
    checks: tuple[config_lib.Check, ...] = ()  # cross-section checks beyond SECTION_CHECKS
    headline: Callable[[dict], str] | None = None  # one line from its metrics.json
    # Its outputs that do not exist after it ran (a stage is done only when this is empty).
    missing: Callable[[ml_collections.ConfigDict, str], list[str]] | None = None


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
            sub = compare_sub_config(config, seed, strategy, oc_weights)
            for name in sub.stages:
                run_stage(name, sub, sub_dir)
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


# ---------------------------------------------------------------------------- saliency (issue 10)
# The saliency comparison (stage `compare_saliency`, Table 6 and the Table 7 saliency rows): per
# seed, the full recipe ("ccamh": priors, C²AM-H, detector, labels from the detector's maps, RW)
# and three variants that reuse its finished stages through symlinks: plain C²AM, labels from
# the C²AM-H masks, and conventional labels (no saliency).
PRIOR_STAGES = ("train_oc", "train_cam", "infer_cam", "eval_cam")
SALIENCY_STAGES = ("train_saliency", "infer_saliency", "train_detector", "infer_detector")
LABEL_STAGES = ("affinity_labels", "train_affinity", "random_walk", "eval_pseudo_labels")


@dataclasses.dataclass(frozen=True)
class SaliencyVariant:
    name: str
    title: str  # the row of the table
    overrides: dict  # dotted config keys -> values
    stages: tuple[str, ...]  # run in the variant's folder
    shared: tuple[str, ...] = ()  # finished stages of "ccamh" it links to


SALIENCY_VARIANTS = (
    SaliencyVariant(
        "ccamh",
        "C²AM-H -> detector",
        {"saliency.method": "ccamh", "affinity_labels.saliency": "infer_detector"},
        (*PRIOR_STAGES, *SALIENCY_STAGES, "eval_saliency", *LABEL_STAGES),
    ),
    SaliencyVariant(
        "ccam",
        "C²AM (no hints), CRF masks",
        {"saliency.method": "ccam", "saliency_eval.sources": ("infer_saliency",)},
        ("train_saliency", "infer_saliency", "eval_saliency"),
        PRIOR_STAGES,
    ),
    SaliencyVariant(
        "ccamh_masks",
        "C²AM-H, CRF masks",
        {"saliency.method": "ccamh", "affinity_labels.saliency": "infer_saliency"},
        LABEL_STAGES,
        (*PRIOR_STAGES, "train_saliency", "infer_saliency"),
    ),
    SaliencyVariant(
        "conventional",
        "none: conventional affinity labels",
        {"affinity_labels.saliency": "", "affinity_labels.saliency_dir": ""},
        LABEL_STAGES,
        PRIOR_STAGES,
    ),
)


def compare_saliency_sub_config(
    config: ml_collections.ConfigDict, seed: int, variant: SaliencyVariant
) -> ml_collections.ConfigDict:
    sub = copy.deepcopy(config)
    with sub.unlocked():
        sub.seed = seed
        sub.stages = variant.stages
        for key, value in variant.overrides.items():
            section, _, leaf = key.rpartition(".")
            config_lib.get(sub, section)[leaf] = value
    return sub


def _link_shared(workdir: str, seed: int, variant: SaliencyVariant) -> None:
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


def compare_saliency_table(results: list[dict]) -> tuple[str, dict]:
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
    for title, run, source, labels in rows:
        cells, entry = [], {}
        for key in ("saliency_miou", "oracle_miou", "priors_with_saliency_miou"):
            if run is None:
                cells.append("-")
                continue
            values = [r[run]["eval_saliency"]["sources"][source][key] for r in results]
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


def run_compare_saliency(config: ml_collections.ConfigDict, workdir: str) -> None:
    """For every seed, the recipe and its variants (`SALIENCY_VARIANTS`) as ordinary stage runs
    in `compare_saliency/seed<k>/<variant>/` (resumable); writes `compare_saliency/results.md`
    and `metrics.json` (mean ± std over seeds)."""
    results = []
    for seed in config.compare_saliency.seeds:
        per_seed: dict[str, dict] = {}
        for variant in SALIENCY_VARIANTS:
            sub_dir = artifacts.compare_saliency_dir(workdir, seed, variant.name)
            if distributed.is_chief():
                _link_shared(workdir, seed, variant)
            distributed.barrier(f"compare_saliency-{seed}-{variant.name}")
            sub = compare_saliency_sub_config(config, seed, variant)
            logging.info("compare_saliency: seed %d, %s -> %s", seed, variant.name, sub_dir)
            for name in sub.stages:
                run_stage(name, sub, sub_dir)
            per_seed[variant.name] = {
                name: fileio.read_json(artifacts.metrics_file(sub_dir, name))
                for name in ("eval_saliency", "eval_pseudo_labels")
                if fileio.exists(artifacts.metrics_file(sub_dir, name))
            }
        results.append(per_seed)
    if not distributed.is_chief():
        return
    md, numbers = compare_saliency_table(results)
    folder = artifacts.stage_dir(workdir, "compare_saliency")
    fileio.write_text(os.path.join(folder, "results.md"), md)
    fileio.write_json(
        artifacts.metrics_file(workdir, "compare_saliency"),
        {"table": md, "seeds": len(results), "rows": numbers},
    )


def validate_compare_saliency(
    config: ml_collections.ConfigDict, topology: config_lib.Topology
) -> None:
    """Checks of `config.compare_saliency`."""
    del topology
    seeds = tuple(config.compare_saliency.seeds)
    config_lib.check(
        bool(seeds) and len(set(seeds)) == len(seeds) and all(isinstance(s, int) for s in seeds),
        "compare_saliency.seeds",
        seeds,
        "distinct integer seeds",
    )


def _missing_compare_saliency(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    folder = artifacts.stage_dir(workdir, "compare_saliency")
    return artifacts.missing(os.path.join(folder, n) for n in ("results.md", "metrics.json"))


# ---------------------------------------------------------------------------- (end of issue 10)


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
    # saliency (issue 10)
    "saliency": saliency_train.validate,
    "saliency_infer": saliency_infer.validate,
    "detector": train_detector.validate,
    "detector_infer": infer_detector.validate,
    "saliency_eval": saliency_evaluate.validate,
    "compare_saliency": validate_compare_saliency,
    # segmentation (issue 11)
    "segmentation": seg_train.validate,
    "segmentation_infer": seg_infer.validate,
}


def _missing_compare(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    folder = artifacts.stage_dir(workdir, "compare")
    names = ("results.md", "results.csv", "metrics.json")
    return artifacts.missing(os.path.join(folder, name) for name in names)


_TRAIN = ("seed", "data", "model")
# fmt: off
STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    #     name                  run                    sections             reads
    Stage("train_oc",           cam_train.train_oc,    (*_TRAIN, "oc"),
          missing=cam_train.missing_oc),
    Stage("train_cam",          cam_train.train_cam,   (*_TRAIN, "train"),  cam_train.cam_deps,
          missing=cam_train.missing_cam),
    Stage("infer_cam",          cam_infer.run,         ("data", "model", "infer"), cam_infer.deps,
          missing=cam_infer.missing),
    Stage("eval_cam",           cam_evaluate.run,      ("data", "eval"),    ("infer_cam",),
          checks=(cam_evaluate.validate,), headline=cam_evaluate.headline,
          missing=cam_evaluate.missing),
    # saliency (issue 10): C²AM(-H), its maps and masks, the detector, Table 6
    Stage("train_saliency",     saliency_train.run,    (*_TRAIN, "saliency"), saliency_train.deps,
          missing=saliency_train.missing),
    Stage("infer_saliency",     saliency_infer.run,    ("data", "saliency_infer"),
          ("train_saliency",), missing=saliency_infer.missing),
    Stage("train_detector",     train_detector.run,    ("seed", "data", "detector"),
          train_detector.deps, missing=train_detector.missing),
    Stage("infer_detector",     infer_detector.run,    ("data", "detector", "detector_infer"),
          infer_detector.deps, missing=infer_detector.missing),
    Stage("eval_saliency",      saliency_evaluate.run, ("data", "eval", "saliency_eval"),
          saliency_evaluate.deps, headline=saliency_evaluate.headline,
          missing=saliency_evaluate.missing),
    Stage("compare_saliency",   run_compare_saliency,
          (*_TRAIN, "oc", "train", "infer", "eval", "saliency", "saliency_infer", "detector",
           "detector_infer", "saliency_eval", "affinity_labels", "affinity", "rw",
           "compare_saliency"),
          headline=lambda metrics: metrics["table"], missing=_missing_compare_saliency),
    # (end of issue 10)
    Stage("affinity_labels",    make_labels.run,       ("data", "affinity_labels"),
          make_labels.deps, headline=make_labels.headline, missing=make_labels.missing),
    Stage("train_affinity",     affinity_train.run,    (*_TRAIN, "affinity"), affinity_train.deps,
          missing=affinity_train.missing),
    Stage("random_walk",        walk.run,              ("data", "rw"),
          ("train_affinity", "infer_cam"), missing=walk.missing),
    Stage("eval_pseudo_labels", affinity_evaluate.run, ("data", "eval", "rw"), ("random_walk",),
          checks=(affinity_evaluate.validate,), headline=affinity_evaluate.headline,
          missing=affinity_evaluate.missing),
    Stage("compare",            run_compare,
          (*_TRAIN, "oc", "train", "infer", "eval", "compare"),
          headline=lambda metrics: metrics["table"], missing=_missing_compare),
)}
# fmt: on


# ---- segmentation (issue 11): DeepLab on the pseudo-labels, and the fully supervised bound.
# The bound is the same three stages trained on the ground-truth masks, under their own names
# (`*_gt`): both live in one workdir, and the bound depends on no weakly supervised stage (only
# on the backbone it starts from), so changing the priors or pseudo-labels never retrains it.
def _segmentation_stages(labels: str) -> tuple[Stage, ...]:
    train_name, infer_name, eval_name = seg_train.STAGES[labels]
    weak = labels == "pseudo"
    train_run = seg_train.train_segmentation if weak else seg_train.train_segmentation_gt
    infer_run = seg_infer.infer_segmentation if weak else seg_infer.infer_segmentation_gt
    eval_run = seg_evaluate.eval_segmentation if weak else seg_evaluate.eval_segmentation_gt
    return (
        Stage(train_name, train_run, (*_TRAIN, "segmentation"), seg_train.deps_for(labels),
              checks=(seg_train.validate_pseudo_labels,) if weak else (),
              headline=seg_train.headline, missing=seg_train.missing_for(labels)),
        Stage(infer_name, infer_run, ("data", "segmentation_infer"), (train_name,),
              missing=seg_infer.missing_for(labels)),
        Stage(eval_name, eval_run, ("data",), (infer_name,),
              headline=seg_evaluate.headline, missing=seg_evaluate.missing_for(labels)),
    )  # fmt: skip


STAGES.update({stage.name: stage for labels in seg_train.LABELS
               for stage in _segmentation_stages(labels)})  # fmt: skip
# ---- end segmentation


# ---------------------------------------------------------------------------- the runner


class StageError(UserError):
    """A stage cannot run (a missing upstream stage) or did not finish its outputs."""


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Every check of every selected stage, before anything is read or written."""
    config_lib.validate(config, STAGES, SECTION_CHECKS, topology)


def deps_of(name: str, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    deps = STAGES[name].deps
    return deps(config) if callable(deps) else deps


def _section(config: ml_collections.ConfigDict, name: str):
    """A section as it enters fingerprints: `data` by the dataset's identity (name, version,
    source fingerprint), not by where it is built or read from."""
    if name != "data":
        return config_lib.to_plain(config[name])
    return {"dataset": datasets.identity(config), "image_size": config.data.image_size}


def stage_fingerprint(name: str, config: ml_collections.ConfigDict) -> str:
    """Hash of the stage's config sections and of the fingerprints of the stages it reads."""
    sections = {s: _section(config, s) for s in STAGES[name].sections}
    upstream = {dep: stage_fingerprint(dep, config) for dep in deps_of(name, config)}
    return config_lib.fingerprint({"stage": name, "config": sections, "deps": upstream})


def _recorded_fingerprint(path: str) -> str | None:
    return fileio.read_json(path).get("fingerprint") if fileio.exists(path) else None


def is_finished(workdir: str, name: str, config: ml_collections.ConfigDict) -> bool:
    done = _recorded_fingerprint(artifacts.done_file(workdir, name))
    return done == stage_fingerprint(name, config)


def _stale_dirs(stage_dir: str) -> list[tuple[int, str]]:
    """(N, path) of `<stage_dir>.stale-N` folders, oldest first."""
    parent, base = os.path.split(stage_dir)
    found = []
    for entry in fileio.listdir(parent):
        suffix = entry.removeprefix(f"{base}.stale-")
        if entry != suffix and suffix.isdigit():
            found.append((int(suffix), os.path.join(parent, entry)))
    return sorted(found)


def _claim_stage_dir(workdir: str, name: str, fingerprint: str, keep_stale: int) -> None:
    """Makes `<workdir>/<name>` the folder of this fingerprint, just before the stage runs.

    A folder made with another config is moved aside to `<name>.stale-N`; a stale folder made
    with this config (a config that came back) is moved back and resumed, not redone. Only the
    `keep_stale` newest stale folders are kept; the log says what was removed.

    On an object store a move is a copy and a removal, not atomic: `fileio.move_tree` copies
    DONE.json last and removes it first, so an interrupted move leaves at most a folder without
    DONE.json (rerun, or moved aside again, on the next run), never a finished-looking partial
    one; the stage folder keeps its config.json until the removal ends, so an interrupted move
    aside is retried (to the next stale number) next time.
    """
    stage_dir = artifacts.stage_dir(workdir, name)
    current = artifacts.config_file(workdir, name)
    if fileio.isdir(stage_dir) and _recorded_fingerprint(current) != fingerprint:
        number = max((n for n, _ in _stale_dirs(stage_dir)), default=0) + 1
        fileio.move_tree(stage_dir, f"{stage_dir}.stale-{number}", marker=artifacts.DONE)
        logging.warning("%s was made with another config: moved to %s.stale-%d", stage_dir,
                        stage_dir, number)  # fmt: skip
    if not fileio.isdir(stage_dir):
        for _, stale in reversed(_stale_dirs(stage_dir)):
            if _recorded_fingerprint(os.path.join(stale, "config.json")) == fingerprint:
                fileio.move_tree(stale, stage_dir, marker=artifacts.DONE)
                logging.warning("%s was made with this config: moved back to %s", stale, stage_dir)
                break
    for _, stale in _stale_dirs(stage_dir)[: max(len(_stale_dirs(stage_dir)) - keep_stale, 0)]:
        fileio.rmtree(stale, marker=artifacts.DONE)
        logging.warning("removed %s (config.runtime.keep_stale=%d)", stale, keep_stale)


def _report(name: str, workdir: str) -> None:
    """Prints the stage's headline from its metrics.json (chief only)."""
    headline = STAGES[name].headline
    path = artifacts.metrics_file(workdir, name)
    if headline is not None and distributed.is_chief() and fileio.exists(path):
        print(headline(fileio.read_json(path)), flush=True)


def run_stage(name: str, config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Runs one stage unless finished with the same fingerprint. Returns True if it ran."""
    stage = STAGES[name]
    fp = stage_fingerprint(name, config)
    if is_finished(workdir, name, config):
        logging.info("stage %s: finished with this config (%s), skipped", name, fp)
        return False
    for dep in deps_of(name, config):
        if not is_finished(workdir, dep, config):
            raise StageError(
                f"stage {name} needs stage {dep} finished in {workdir} with the current config; "
                f"add {dep!r} to config.stages before {name!r}"
            )
    if distributed.is_chief():
        _claim_stage_dir(workdir, name, fp, config.runtime.keep_stale)
    distributed.barrier(f"claim-{name}")
    if is_finished(workdir, name, config):  # a stale folder of this config came back finished
        _report(name, workdir)
        return False
    if distributed.is_chief():
        fileio.write_json(
            artifacts.config_file(workdir, name),
            {"stage": name, "fingerprint": fp, "config": config_lib.to_plain(config)},
        )
    distributed.barrier(f"start-{name}")
    logging.info("stage %s: running (fingerprint %s)", name, fp)
    start = time.time()
    stage.run(config, workdir)
    distributed.barrier(f"end-{name}")
    if distributed.is_chief():
        missing = stage.missing(config, workdir) if stage.missing else []
        if missing:
            raise StageError(
                f"stage {name} ended without all of its outputs, so it is not marked done: "
                f"missing {', '.join(missing)}. Run it again to redo the missing part."
            )
        fileio.write_json(
            artifacts.done_file(workdir, name),
            {"stage": name, "fingerprint": fp, "seconds": round(time.time() - start, 1)},
        )
    distributed.barrier(f"done-{name}")
    _report(name, workdir)
    return True


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Runs `config.stages` in order under the workdir lock, then writes and prints the summary."""
    with workdir_lock(workdir):
        for name in config.stages:
            run_stage(name, config, workdir)
        if distributed.is_chief():
            print(write_summary(config, workdir), flush=True)


# ---------------------------------------------------------------------------- lock and summary


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds `<workdir>/.lock` for the run (chief only): a second run on the workdir stops and
    says who holds it. Local: the OS releases the lock when the holder dies, even on SIGKILL.
    On an object store the lock is an advisory owner object (`fileio.lock`)."""
    if not distributed.is_chief():
        yield
        return
    fileio.makedirs(workdir)
    holder = (
        f"{fileio.holder_description()} since {time.strftime('%Y-%m-%d %H:%M:%S')} "
        f"({' '.join(sys.argv)})"
    )
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(fileio.lock(artifacts.lock_file(workdir), holder))
        except fileio.LockHeld as e:
            raise UserError(
                f"workdir {workdir} is in use by {e}; wait for it, or use another --workdir"
            ) from None
        yield


def _numbers(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The numeric scalars of a metrics.json, nested dicts flattened ("cam/miou_mean");
    per-class tables are left out."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or key.endswith("per_class_iou"):
            continue
        if isinstance(value, int | float):
            out[prefix + key] = value
        elif isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
    return out


def write_summary(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`summary.json` ({stage: {metric: value}}, mIoUs as fractions) and `summary.md` for every
    selected stage with metrics, also the skipped ones; returns the table."""
    numbers, rows = {}, []
    for name in config.stages:
        path = artifacts.metrics_file(workdir, name)
        if not fileio.exists(path):
            continue
        metrics = fileio.read_json(path)
        numbers[name] = _numbers(metrics)
        headline = STAGES[name].headline
        line = headline(metrics).replace("\n", " ") if headline else ""
        if name == "compare":
            line = "strategy table in results.md"
        if name == "compare_saliency":  # saliency (issue 10)
            line = "saliency table in results.md"
        rows.append(f"| {name} | {line} | {artifacts.stage_dir(workdir, name)} |")
    # ---- segmentation (issue 11): how much of full supervision weak supervision reaches.
    weak, full = seg_train.STAGES["pseudo"][2], seg_train.STAGES["ground_truth"][2]
    if weak in numbers and full in numbers:
        line = seg_evaluate.weak_vs_supervised(
            fileio.read_json(artifacts.metrics_file(workdir, weak)),
            fileio.read_json(artifacts.metrics_file(workdir, full)),
        )
        if line:
            rows.append(f"| weak vs fully supervised | {line} | |")
            numbers["weak_vs_supervised"] = {"ratio": numbers[weak]["miou"] / numbers[full]["miou"]}
    # ---- end segmentation
    table = "\n".join(["| stage | result | outputs |", "|---|---|---|", *rows]) + "\n"
    json_path, md_path = artifacts.summary_files(workdir)
    fileio.write_json(json_path, numbers)
    fileio.write_text(md_path, f"# Summary of {workdir}\n\n{table}")
    return table
