"""The stage graph and the runner that skips finished stages.

`STAGES` is the whole pipeline in one table: each stage's function, the config sections that
determine its outputs, the stages whose outputs it reads, its cross-section checks, and the one
line it reports. `SECTION_CHECKS` checks every section a selected stage reads. Each stage
writes under `<workdir>/<stage>/`: `config.json` when it starts
and `DONE.json` when it finished. A stage is skipped when `DONE.json` holds the fingerprint of
its current config (its sections plus the fingerprints of the stages it reads), so a changed
stage reruns, and so does everything downstream of it. A stage folder left by a different config
is moved aside (`<stage>.stale-N`), never deleted by a run (`remove_stale` deletes them when
the user asks). Each `DONE.json` also holds a token of its own and the tokens of the stages it read
(`inputs`): a stage whose input was made again after it ran (a repair, an interrupted rerun) is
out of date, and runs again in a fresh folder the next time it is selected, whichever run made
its input again. A finished stage is verified before it is skipped (`verify`): one whose outputs
are missing or damaged runs again in its folder (resuming), and gets a new token, so its readers
follow. `config.runtime` is in no stage's sections.

The experiments that run sub-pipelines (`compare`, `compare_saliency`) live in
`pnoc_jax.experiments` and receive `run_stage` from here.
"""

import contextlib
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import Callable

import ml_collections
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.affinity import evaluate as affinity_evaluate
from pnoc_jax.affinity import make_labels, walk
from pnoc_jax.affinity import train as affinity_train
from pnoc_jax.analysis import analyze
from pnoc_jax.cam import evaluate as cam_evaluate
from pnoc_jax.cam import infer as cam_infer
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import artifacts, distributed, fileio
from pnoc_jax.core.errors import UserError
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import sweep
from pnoc_jax.experiments import saliency as compare_saliency
from pnoc_jax.experiments import strategies as compare_strategies
from pnoc_jax.models import backbones
from pnoc_jax.saliency import evaluate as saliency_evaluate
from pnoc_jax.saliency import infer as saliency_infer
from pnoc_jax.saliency import infer_detector, train_detector
from pnoc_jax.saliency import train as saliency_train
from pnoc_jax.segmentation import evaluate as seg_evaluate
from pnoc_jax.segmentation import infer as seg_infer
from pnoc_jax.segmentation import train as seg_train

# A row a stage adds to the summary: (key in summary.json, title, line, numbers).
SummaryRow = tuple[str, str, str, dict]


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[ml_collections.ConfigDict, str, datasets.Dataset], None]
    sections: tuple[str, ...]  # config sections that determine the stage's outputs
    deps: tuple[str, ...] | Callable[[ml_collections.ConfigDict], tuple[str, ...]] = ()
    checks: tuple[config_lib.Check, ...] = ()  # cross-section checks beyond SECTION_CHECKS
    headline: Callable[[dict], str] | None = None  # one line from its metrics.json
    # Its outputs that do not exist after it ran (a stage is done only when this is empty).
    missing: Callable[[ml_collections.ConfigDict, str, datasets.Dataset], list[str]] | None = None
    # Its line in summary.md, from its metrics.json (default: the headline).
    summary: Callable[[dict], str] | None = None
    # Rows it adds to the summary below its own, from the workdir's metrics.
    summary_rows: Callable[[ml_collections.ConfigDict, str], list[SummaryRow]] | None = None
    # A training stage: (its section with batch_size, the key naming its training split,
    # whether it trains on images with a class only), checked before anything runs.
    trains_on: tuple[str, str, bool] | None = None
    # Markdown it adds under the summary's table, from its metrics.json.
    summary_notes: Callable[[dict], str] | None = None


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
    "saliency": saliency_train.validate,
    "saliency_infer": saliency_infer.validate,
    "detector": train_detector.validate,
    "detector_infer": infer_detector.validate,
    "saliency_eval": saliency_evaluate.validate,
    "segmentation": seg_train.validate,
    "segmentation_infer": seg_infer.validate,
    "compare": compare_strategies.validate,
    "compare_saliency": compare_saliency.validate,
    "analysis": analyze.validate,
}


def _run_compare(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> None:
    compare_strategies.run(config, workdir, dataset, run_stage)


def _run_compare_saliency(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> None:
    compare_saliency.run(config, workdir, dataset, run_stage)


def _table(metrics: dict) -> str:
    return metrics["table"]


def _segmentation_stages(labels: str) -> tuple[Stage, ...]:
    """DeepLab's train -> infer -> eval on the pseudo-labels ("pseudo") or, for the fully
    supervised bound, on the ground-truth masks (the same stages named `*_gt`). The bound reads
    no weakly supervised stage (only the one whose backbone it starts from), so changing the
    priors or the pseudo-labels never retrains it."""
    train_name, infer_name, eval_name = seg_train.STAGES[labels]
    weak = labels == "pseudo"
    train_run = seg_train.train_segmentation if weak else seg_train.train_segmentation_gt
    infer_run = seg_infer.infer_segmentation if weak else seg_infer.infer_segmentation_gt
    eval_run = seg_evaluate.eval_segmentation if weak else seg_evaluate.eval_segmentation_gt
    return (
        Stage(train_name, train_run, (*_TRAIN, "segmentation"), seg_train.deps_for(labels),
              checks=(seg_train.validate_pseudo_labels,) if weak else (),
              headline=seg_train.headline, missing=seg_train.missing_for(labels),
              trains_on=("segmentation", "segmentation.split", False)),
        Stage(infer_name, infer_run, ("data", "segmentation_infer"), (train_name,),
              missing=seg_infer.missing_for(labels)),
        Stage(eval_name, eval_run, ("data",), (infer_name,),
              headline=seg_evaluate.headline, missing=seg_evaluate.missing_for(labels),
              summary_rows=None if weak else seg_evaluate.summary_rows),
    )  # fmt: skip


_TRAIN = ("seed", "data", "model")
_SALIENCY_SECTIONS = ("saliency", "saliency_infer", "detector", "detector_infer", "saliency_eval")
# fmt: off
STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    #     name                  run                    sections             reads
    Stage("train_oc",           cam_train.train_oc,    (*_TRAIN, "oc"),
          missing=cam_train.missing_oc, trains_on=("oc", "oc.split", True)),
    Stage("train_cam",          cam_train.train_cam,   (*_TRAIN, "train"),  cam_train.cam_deps,
          missing=cam_train.missing_cam, trains_on=("train", "train.split", True)),
    Stage("infer_cam",          cam_infer.run,         ("data", "model", "infer"), cam_infer.deps,
          missing=cam_infer.missing),
    Stage("eval_cam",           cam_evaluate.run,      ("data", "eval"),    ("infer_cam",),
          checks=(cam_evaluate.validate,), headline=cam_evaluate.headline,
          missing=cam_evaluate.missing),
    Stage("train_saliency",     saliency_train.run,    (*_TRAIN, "saliency"), saliency_train.deps,
          missing=saliency_train.missing, trains_on=("saliency", "saliency.split", False)),
    Stage("infer_saliency",     saliency_infer.run,    ("data", "saliency_infer"),
          ("train_saliency",), missing=saliency_infer.missing),
    Stage("train_detector",     train_detector.run,    ("seed", "data", "detector"),
          train_detector.deps, missing=train_detector.missing,
          trains_on=("detector", "detector.split", False)),
    Stage("infer_detector",     infer_detector.run,    ("data", "detector", "detector_infer"),
          infer_detector.deps, missing=infer_detector.missing),
    Stage("eval_saliency",      saliency_evaluate.run, ("data", "eval", "saliency_eval"),
          saliency_evaluate.deps, headline=saliency_evaluate.headline,
          missing=saliency_evaluate.missing),
    Stage("affinity_labels",    make_labels.run,       ("data", "affinity_labels"),
          make_labels.deps, headline=make_labels.headline, missing=make_labels.missing),
    Stage("train_affinity",     affinity_train.run,    (*_TRAIN, "affinity"), affinity_train.deps,
          missing=affinity_train.missing,
          trains_on=("affinity", "affinity_labels.split", False)),
    Stage("random_walk",        walk.run,              ("data", "rw"),
          ("train_affinity", "infer_cam"), missing=walk.missing),
    Stage("eval_pseudo_labels", affinity_evaluate.run, ("data", "eval", "rw"), ("random_walk",),
          checks=(affinity_evaluate.validate,), headline=affinity_evaluate.headline,
          missing=affinity_evaluate.missing),
    *(stage for labels in seg_train.LABELS for stage in _segmentation_stages(labels)),
    Stage("compare",            _run_compare,
          (*_TRAIN, "oc", "train", "infer", "eval", "compare"),
          headline=_table, missing=compare_strategies.missing,
          summary=lambda metrics: "strategy table in results.md"),
    Stage("compare_saliency",   _run_compare_saliency,
          (*_TRAIN, "oc", "train", "infer", "eval", *_SALIENCY_SECTIONS, "affinity_labels",
           "affinity", "rw", "compare_saliency"),
          headline=_table, missing=compare_saliency.missing,
          summary=lambda metrics: "saliency table in results.md"),
    Stage("analyze",            analyze.run,           ("data", "eval", "analysis"), analyze.deps,
          checks=(analyze.validate_order,), headline=analyze.headline, missing=analyze.missing,
          summary=analyze.summary_line, summary_notes=analyze.summary_notes),
)}
# fmt: on


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


def _record(path: str) -> dict | None:
    """The runner's JSON record at `path` (`config.json`, `DONE.json`); None when absent."""
    if not fileio.exists(path):
        return None
    record = fileio.read_json(path)
    if not isinstance(record, dict):
        raise StageError(
            f"{path} holds a JSON {type(record).__name__}, not the object the runner writes "
            f"({{stage, fingerprint, ...}}); delete it to run the stage again"
        )
    return record


def _recorded_fingerprint(path: str) -> str | None:
    record = _record(path)
    return None if record is None else record.get("fingerprint")


def input_tokens(name: str, config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """{stage it reads: the token of that stage's DONE.json} ("" when it has none)."""
    tokens = {}
    for dep in deps_of(name, config):
        record = _record(artifacts.done_file(workdir, dep)) or {}
        tokens[dep] = record.get("token", "")
    return tokens


def _inputs_made_again(record: dict | None, tokens: dict[str, str]) -> list[str]:
    """The stages whose outputs a record's stage read that were made again since: finished
    now with another token. One not finished now (deleted, or running again) is not evidence;
    a record without `inputs` (written before tokens existed) counts as current."""
    recorded = (record or {}).get("inputs")
    if recorded is None:
        return []
    return [dep for dep, token in tokens.items() if token and recorded.get(dep, "") != token]


def made_from_old_inputs(workdir: str, name: str, config: ml_collections.ConfigDict) -> str | None:
    """Why a stage's recorded outputs came from outputs made again since (of a stage it reads,
    or, through an out-of-date stage it reads, of one further up), or None. A stage it reads
    that is merely absent or unfinished does not count: deleting a finished stage's folder to
    save space keeps the stages that read it finished."""
    record = _record(artifacts.done_file(workdir, name))
    if record is None:
        return None
    changed = _inputs_made_again(record, input_tokens(name, config, workdir))
    if changed:
        return f"its input stage {', '.join(changed)} was made again after it ran"
    for dep in deps_of(name, config):
        why = made_from_old_inputs(workdir, dep, config)
        if why is not None:
            return f"its input stage {dep} is out of date ({why})"
    return None


def out_of_date(workdir: str, name: str, config: ml_collections.ConfigDict) -> str | None:
    """Why the stage's finished outputs cannot be used as they are, or None when they can: not
    finished with the current config, or made from outputs made again since."""
    fingerprint = _recorded_fingerprint(artifacts.done_file(workdir, name))
    if fingerprint != stage_fingerprint(name, config):
        return "not finished with the current config"
    return made_from_old_inputs(workdir, name, config)


def is_finished(workdir: str, name: str, config: ml_collections.ConfigDict) -> bool:
    return out_of_date(workdir, name, config) is None


def verify(
    name: str,
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: datasets.Dataset | None = None,
) -> list[str]:
    """The outputs of a finished stage that are missing or damaged (`artifacts.damage`: a
    stat and a header per file, JSON parsed), with why; [] when it can be skipped."""
    stage = STAGES[name]
    if stage.missing is None:
        return []
    return stage.missing(config, workdir, dataset or datasets.resolve(config))


def _stale_dirs(stage_dir: str) -> list[tuple[int, str]]:
    """(N, path) of `<stage_dir>.stale-N` folders, oldest first."""
    parent, base = os.path.split(stage_dir)
    found = []
    for entry in fileio.listdir(parent):
        suffix = entry.removeprefix(f"{base}.stale-")
        if entry != suffix and suffix.isdigit():
            found.append((int(suffix), os.path.join(parent, entry)))
    return sorted(found)


def _claim_stage_dir(workdir: str, name: str, fingerprint: str, tokens: dict[str, str]) -> None:
    """Makes `<workdir>/<name>` the folder of this fingerprint and these input tokens, just
    before the stage runs.

    A folder made with another config, or from inputs made again since (its `config.json`
    records both), is moved aside to `<name>.stale-N`; a stale folder made with this config from
    these inputs (a config that came back) is moved back and resumed, not redone. Nothing is
    deleted: `remove_stale` does that when the user asks. A symlinked stage folder moves as the
    link (its target stays where it is).

    On an object store a move is a copy and a removal, not atomic: `fileio.move_tree` copies
    DONE.json last and removes it first, so an interrupted move leaves at most a folder without
    DONE.json (rerun, or moved aside again, on the next run), never a finished-looking partial
    one; the stage folder keeps its config.json until the removal ends, so an interrupted move
    aside is retried (to the next stale number) next time.
    """
    stage_dir = artifacts.stage_dir(workdir, name)

    def made_here(record: dict | None) -> bool:
        return (
            record is not None
            and record.get("fingerprint") == fingerprint
            and not _inputs_made_again(record, tokens)
        )

    current = _record(artifacts.config_file(workdir, name))
    if fileio.isdir(stage_dir) and not made_here(current):
        number = max((n for n, _ in _stale_dirs(stage_dir)), default=0) + 1
        fileio.move_tree(stage_dir, f"{stage_dir}.stale-{number}", marker=artifacts.DONE)
        same_config = current is not None and current.get("fingerprint") == fingerprint
        why = "its inputs were made again" if same_config else "it was made with another config"
        logging.warning("%s: %s, moved to %s.stale-%d", stage_dir, why, stage_dir, number)
    if not fileio.isdir(stage_dir):
        for _, stale in reversed(_stale_dirs(stage_dir)):
            if made_here(_record(os.path.join(stale, "config.json"))):
                fileio.move_tree(stale, stage_dir, marker=artifacts.DONE)
                logging.warning("%s was made with this config: moved back to %s", stale, stage_dir)
                break


def stale_folders(workdir: str) -> list[tuple[str, int]]:
    """(path, bytes) of every `<stage>.stale-N` folder of the workdir, by stage and N."""
    found = []
    for name in STAGES:
        for _, path in _stale_dirs(artifacts.stage_dir(workdir, name)):
            found.append((path, fileio.disk_use(path)))
    return found


def remove_stale(workdir: str) -> list[str]:
    """Deletes every stale folder of the workdir (the user asked: `main --remove_stale`);
    returns one line per folder saying what went. A symlinked one loses the link only."""
    lines = []
    with workdir_lock(workdir):
        for path, size in stale_folders(workdir):
            target = fileio.remove_link(path)
            if target is not None:
                lines.append(f"removed the link {path} (its target {target} is kept)")
                continue
            fileio.rmtree(path, marker=artifacts.DONE)
            lines.append(f"removed {path} ({fileio.human_size(size)})")
    return lines


def _report(name: str, workdir: str) -> None:
    """Prints the stage's headline from its metrics.json (chief only)."""
    headline = STAGES[name].headline
    path = artifacts.metrics_file(workdir, name)
    if headline is not None and distributed.is_chief() and fileio.exists(path):
        print(headline(fileio.read_json(path)), flush=True)


def run_stage(
    name: str,
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: datasets.Dataset | None = None,
) -> bool:
    """Runs one stage unless finished with the same fingerprint from the same inputs. Returns
    True if it ran.

    A finished stage whose outputs are missing or damaged runs again in its folder (training
    resumes, per-image stages redo what is missing); one whose input stage was made again after
    it ran runs again in a fresh folder (its old one moved aside as a stale folder), since its
    outputs came from the old inputs. Every process takes the same decision: it follows from
    files every process reads before the stage's verify barrier.
    `dataset` is `datasets.resolve(config)`, resolved here when not given."""
    stage = STAGES[name]
    fp = stage_fingerprint(name, config)
    dataset = dataset or datasets.resolve(config)
    tokens = input_tokens(name, config, workdir)
    done = _record(artifacts.done_file(workdir, name))
    if done is not None and done.get("fingerprint") == fp:
        changed = made_from_old_inputs(workdir, name, config)
        damaged = [] if changed else verify(name, config, workdir, dataset)
        if not changed and not damaged:
            logging.info("stage %s: finished with this config (%s), skipped", name, fp)
            return False
        if changed:  # when only a stage further up was made again, the check below stops
            if _inputs_made_again(done, tokens):
                logging.warning("stage %s: %s: running it again in a fresh folder", name, changed)
        else:
            logging.warning(
                "stage %s: finished, but its outputs are missing or damaged (%s): running it "
                "again", name, ", ".join(damaged),
            )  # fmt: skip
        distributed.barrier(f"verify-{name}")
        if distributed.is_chief() and not changed:
            fileio.remove(artifacts.done_file(workdir, name))
    for dep in deps_of(name, config):
        why = out_of_date(workdir, dep, config)
        if why is not None:
            raise StageError(
                f"stage {name} needs stage {dep} finished in {workdir} with the current config "
                f"and inputs ({why}); add {dep!r} to config.stages before {name!r}"
            )
        damaged = verify(dep, config, workdir, dataset)
        if damaged:
            raise StageError(
                f"stage {name} reads stage {dep}, whose outputs are missing or damaged "
                f"({', '.join(damaged)}); add {dep!r} to config.stages before {name!r} to redo them"
            )
    if distributed.is_chief():
        _claim_stage_dir(workdir, name, fp, tokens)
    distributed.barrier(f"claim-{name}")
    if is_finished(workdir, name, config) and not verify(name, config, workdir, dataset):
        _report(name, workdir)  # a stale folder of this config came back finished
        return False
    if distributed.is_chief():
        fileio.write_json(
            artifacts.config_file(workdir, name),
            {"stage": name, "fingerprint": fp, "inputs": tokens,
             "config": config_lib.to_plain(config)},
        )  # fmt: skip
    distributed.barrier(f"start-{name}")
    logging.info("stage %s: running (fingerprint %s)", name, fp)
    start = time.time()
    try:
        stage.run(config, workdir, dataset)
    except BaseException:  # stopped, failed or interrupted: no half-written file stays behind
        if distributed.is_chief():
            fileio.remove_temporaries(artifacts.stage_dir(workdir, name))
        raise
    distributed.barrier(f"end-{name}")
    if distributed.is_chief():
        missing = stage.missing(config, workdir, dataset) if stage.missing else []
        if missing:
            raise StageError(
                f"stage {name} ended without all of its outputs, so it is not marked done: "
                f"missing {', '.join(missing)}. Run it again to redo the missing part."
            )
        fileio.write_json(
            artifacts.done_file(workdir, name),
            {"stage": name, "fingerprint": fp, "token": uuid.uuid4().hex, "inputs": tokens,
             "seconds": round(time.time() - start, 1)},
        )  # fmt: skip
    distributed.barrier(f"done-{name}")
    _report(name, workdir)
    return True


def check_training_splits(config: ml_collections.ConfigDict, dataset: datasets.Dataset) -> None:
    """Every selected training stage's split holds at least one global batch: checked when the
    data's size is known (its index is read, the dataset built first if needed), before the
    first stage runs, rather than at the stage after hours of the others."""
    for name in config.stages:
        if STAGES[name].trains_on is None:
            continue
        section, split_key, labelled_only = STAGES[name].trains_on
        split = config_lib.get(config, split_key)
        index = dataset.index(split)
        size = sum(1 for _, labelled in index if labelled or not labelled_only)
        batch = config[section].batch_size
        if size < batch:
            raise config_lib.ConfigError(
                f"config.{section}.batch_size={batch}: stage {name} trains on split {split!r} "
                f"(config.{split_key}), which has {size} images"
                f"{' with a class' if labelled_only else ''}, fewer than one batch; lower the "
                f"batch size or train on a larger split"
            )


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Runs `config.stages` in order under the workdir lock (`run_stage` each: a stage made
    again makes the stages that read it run again after it), then writes and prints the
    summary."""
    with workdir_lock(workdir):
        dataset = datasets.resolve(config)
        check_training_splits(config, dataset)
        for name in config.stages:
            run_stage(name, config, workdir, dataset)
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
        except IsADirectoryError:
            raise UserError(
                f"{artifacts.lock_file(workdir)} is a folder, where the run keeps its lock file; "
                f"remove it"
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


def _summary_stages(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The selected stages, then every other stage the workdir holds finished: a run of a few
    stages updates their rows and keeps the others'."""
    others = [
        name
        for name in STAGES
        if name not in config.stages and fileio.exists(artifacts.done_file(workdir, name))
    ]
    return [*config.stages, *others]


def write_summary(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`summary.json` ({stage: {metric: value}}, mIoUs as fractions) and `summary.md` for every
    stage with metrics (`_summary_stages`), also the skipped ones, and the disk use of the stale
    folders, then the stages' notes (as the paper's claims); returns the Markdown."""
    numbers, rows, notes = {}, [], []
    for name in _summary_stages(config, workdir):
        stage, path = STAGES[name], artifacts.metrics_file(workdir, name)
        if artifacts.damage(path) is not None:
            continue
        metrics = fileio.read_json(path)
        numbers[name] = _numbers(metrics)
        line_of = stage.summary or stage.headline
        line = line_of(metrics).replace("\n", " ") if line_of else ""
        if stage.summary_notes:
            notes.append(stage.summary_notes(metrics))
        rows.append(f"| {name} | {line} | {artifacts.stage_dir(workdir, name)} |")
        for key, title, extra_line, extra_numbers in (
            stage.summary_rows(config, workdir) if stage.summary_rows else ()
        ):
            rows.append(f"| {title} | {extra_line} | |")
            numbers[key] = extra_numbers
    table = "\n".join(["| stage | result | outputs |", "|---|---|---|", *rows]) + "\n"
    stale = stale_folders(workdir)
    if stale:
        listing = ", ".join(
            f"{os.path.basename(path)} ({fileio.human_size(size)})" for path, size in stale
        )
        total = fileio.human_size(sum(size for _, size in stale))
        table += (
            f"\nStale folders (made with other configs or older inputs, kept): {listing}; "
            f"{total} in all. `python -m pnoc_jax.main --workdir {workdir} --remove_stale` "
            f"deletes them.\n"
        )
    json_path, md_path = artifacts.summary_files(workdir)
    fileio.write_json(json_path, numbers)
    text = "\n".join([table, *(n for n in notes if n)])
    fileio.write_text(md_path, f"# Summary of {workdir}\n\n{text}")
    return text
