"""The stage registry and the runner that skips finished stages.

Each stage writes under `<workdir>/<stage>/`. It records the config it ran with in
`config.json`, and `DONE.json` when it finished. A stage is skipped when `DONE.json` holds the
fingerprint of its current config (its config sections plus the fingerprints of the stages it
reads), so a changed stage reruns, and so does everything downstream of it. A stage dir left
by a different config is moved aside (`<stage>.stale-N`), never deleted.
"""

import dataclasses
import functools
import os
import time
from collections.abc import Callable

import ml_collections
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.affinity import stages as affinity_stages
from pnoc_jax.affinity import train as affinity_train
from pnoc_jax.cam import compare, evaluate, inference, train
from pnoc_jax.cam.strategies import STRATEGIES  # noqa: F401  (re-exported for validation)
from pnoc_jax.core import distributed, fileio


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[ml_collections.ConfigDict, str], None]
    config_keys: tuple[str, ...]  # config sections that determine the stage's output
    deps: tuple[str, ...] = ()  # stages whose outputs it reads


def _train_deps(config: ml_collections.ConfigDict, section: str) -> tuple[str, ...]:
    from pnoc_jax.cam.strategies import reads_oc_checkpoint

    cfg = config[section]
    if reads_oc_checkpoint(cfg) and not cfg.get("oc_checkpoint"):
        return ("train_oc",)
    return ()


STAGES: dict[str, Stage] = {
    "train_oc": Stage(
        "train_oc",
        functools.partial(train.run, stage="train_oc", section="oc"),
        ("seed", "data", "model", "oc"),
    ),
    "train_cam": Stage(
        "train_cam",
        functools.partial(train.run, stage="train_cam", section="train"),
        ("seed", "data", "model", "train"),
    ),
    "infer_cam": Stage("infer_cam", inference.run, ("data", "model", "infer"), ("train_cam",)),
    "eval_cam": Stage("eval_cam", evaluate.run, ("data", "eval"), ("infer_cam",)),
    "compare": Stage(
        "compare",
        compare.run,
        ("seed", "data", "model", "oc", "train", "infer", "eval", "compare"),
    ),
}

# From priors to pseudo-labels (spec §8-§9). Dotted keys select single fields of a section.
STAGES.update(
    {
        "affinity_labels": Stage(
            "affinity_labels",
            affinity_stages.affinity_labels,
            ("data", *affinity_stages.LABEL_KEYS),
            ("infer_cam",),
        ),
        "train_affinity": Stage(
            "train_affinity",
            affinity_train.run,
            ("seed", "data", "model", "affinity"),
            ("affinity_labels",),
        ),
        "random_walk": Stage(
            "random_walk",
            affinity_stages.random_walk,
            ("data", *affinity_stages.RW_KEYS),
            ("train_affinity", "infer_cam"),
        ),
        "eval_pseudo_labels": Stage(
            "eval_pseudo_labels",
            affinity_stages.eval_pseudo_labels,
            ("data", "eval"),
            ("random_walk",),
        ),
    }
)


def deps_of(name: str, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    if name == "train_cam":
        return _train_deps(config, "train")
    return STAGES[name].deps


def stage_fingerprint(name: str, config: ml_collections.ConfigDict) -> str:
    stage = STAGES[name]
    subset = {}
    for key in stage.config_keys:  # "section" or "section.field"
        node, found = config, True
        for part in key.split("."):
            found = found and isinstance(node, ml_collections.ConfigDict) and part in node
            node = node[part] if found else None
        if found:
            subset[key] = config_lib.to_plain(node)
    upstream = {dep: stage_fingerprint(dep, config) for dep in deps_of(name, config)}
    return config_lib.fingerprint({"stage": name, "config": subset, "deps": upstream})


def is_finished(workdir: str, name: str, config: ml_collections.ConfigDict) -> bool:
    path = os.path.join(workdir, name, "DONE.json")
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


def run_stage(name: str, config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Runs one stage unless finished with the same fingerprint. Returns True if it ran."""
    fp = stage_fingerprint(name, config)
    stage_dir = os.path.join(workdir, name)
    if is_finished(workdir, name, config):
        logging.info("stage %s: finished with this config (%s), skipped", name, fp)
        return False
    for dep in deps_of(name, config):
        if not is_finished(workdir, dep, config):
            raise RuntimeError(
                f"stage {name} needs stage {dep} finished in {workdir} with the current config; "
                f"add {dep!r} to config.stages before {name!r}"
            )
    recorded = os.path.join(stage_dir, "config.json")
    if distributed.is_chief():
        if os.path.exists(recorded) and fileio.read_json(recorded).get("fingerprint") != fp:
            _move_aside(stage_dir)
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
            os.path.join(stage_dir, "DONE.json"),
            {"stage": name, "fingerprint": fp, "seconds": round(time.time() - start, 1)},
        )
    return True


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> None:
    for name in config.stages:
        run_stage(name, config, workdir)
