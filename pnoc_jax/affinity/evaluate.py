"""Stage `eval_pseudo_labels`: the random walk and its pseudo-labels against the ground truth.

On `config.eval.split` (the split the priors are evaluated on): the threshold sweep of the RW
scores, as the priors' (method.md §9, runner 3 step 4), plain and with the pseudo-labels' CRF
(`config.rw.crf_iterations`, `crf_gt_prob`: t 1, gt 0.9, what the reference reports), and the
mIoU of the pseudo-label PNGs. Writes `eval_pseudo_labels/{metrics.json, sweep.csv, sweep.png}`
(+ `sweep_crf.csv`); the priors' mIoU on the same split is copied beside them for comparison.
"""

import ml_collections
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed, fileio
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import sweep


def run(config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset) -> None:
    split = config.eval.split
    pseudo_labels = artifacts.pseudo_label_dir(workdir, split)
    crf = (config.rw.crf_iterations, config.rw.crf_gt_prob)
    summary = sweep.evaluate_split(
        config, dataset, artifacts.rw_dir(workdir, split), "rw", pseudo_labels, crf=crf
    )
    summary["pseudo_label_miou"] = summary.pop("labels_miou")
    summary["pseudo_label_per_class_iou"] = summary.pop("labels_per_class_iou")
    prior_path = artifacts.metrics_file(workdir, "eval_cam")
    if fileio.exists(prior_path):
        prior = fileio.read_json(prior_path)
        if prior.get("split") == split:
            summary["prior_miou"] = prior["miou"]
    if distributed.is_chief():
        sweep.write_report(artifacts.stage_dir(workdir, "eval_pseudo_labels"), summary)
    logging.info("eval_pseudo_labels %s: %s", split, headline(summary))


def headline(metrics: dict) -> str:
    prior = f", prior {100 * metrics['prior_miou']:.2f}" if "prior_miou" in metrics else ""
    pseudo = f"pseudo-label mIoU {100 * metrics['pseudo_label_miou']:.2f}"
    return f"{sweep.headline('RW', metrics)}; {pseudo}{prior}"


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    """The report files (with sweep_crf.csv when the RW CRF is on) that do not exist."""
    del dataset
    crf = config.rw.crf_iterations > 0
    return artifacts.missing(artifacts.report_files(workdir, "eval_pseudo_labels", crf))


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """The pseudo-labels are evaluated on one of the random walk's splits."""
    del topology
    config_lib.check_choice(config, "eval.split", tuple(config.rw.splits))
