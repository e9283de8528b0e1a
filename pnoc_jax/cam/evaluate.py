"""Stage `eval_cam`: background-threshold sweep of the CAMs against the ground truth (spec §6).

Writes `<workdir>/eval_cam/{metrics.json, sweep.csv, sweep.png}`.
"""

import ml_collections
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed
from pnoc_jax.evaluation import sweep


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    split = config.eval.split
    summary = sweep.evaluate_split(config, artifacts.cam_dir(workdir, split), "hr_cam")
    if distributed.is_chief():
        sweep.write_report(artifacts.stage_dir(workdir, "eval_cam"), summary)
    logging.info(
        "eval_cam %s: mIoU %.2f at threshold %.2f (FPR %.3f, FNR %.3f)",
        split,
        100 * summary["miou"],
        summary["best_threshold"],
        summary["fpr"],
        summary["fnr"],
    )


def headline(metrics: dict) -> str:
    return sweep.headline("prior", metrics)


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """The priors are evaluated on a split whose CAMs infer_cam writes."""
    del topology
    config_lib.check_choice(config, "eval.split", tuple(config.infer.splits))
