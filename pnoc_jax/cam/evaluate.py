"""Stage `eval_cam`: background-threshold sweep of the CAMs against the ground truth (method.md §6),
plain and, with `config.eval.crf_iterations` > 0, with the CRF (the reference reports both).

Writes `<workdir>/eval_cam/{metrics.json, sweep.csv, sweep.png}` (+ `sweep_crf.csv`).
"""

import ml_collections
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import sweep


def run(config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset) -> None:
    split = config.eval.split
    crf = (config.eval.crf_iterations, config.eval.crf_gt_prob)
    summary = sweep.evaluate_split(
        config, dataset, artifacts.cam_dir(workdir, split), "hr_cam", crf=crf
    )
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


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    """The report files (with sweep_crf.csv when the CRF variant is on) that do not exist."""
    del dataset
    crf = config.eval.crf_iterations > 0
    return artifacts.missing(artifacts.report_files(workdir, "eval_cam", crf))


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """The priors are evaluated on a split whose CAMs infer_cam writes."""
    del topology
    config_lib.check_choice(config, "eval.split", tuple(config.infer.splits))
