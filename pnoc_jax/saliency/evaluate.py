"""Stage `eval_saliency`: the saliency evaluation of Table 6 on `config.eval.split` (method.md §7).

For each stage of `config.saliency_eval.sources` (infer_saliency: the C²AM(-H) CRF masks,
infer_detector: the detector's maps), with the confusions of `saliency.metrics`:

* `saliency_miou`: 2-class (background / foreground) mIoU of s > t, best over
  `config.eval.thresholds` (`saliency_threshold`); for 0/255 masks every t gives the same;
* `oracle_miou`: the GT-class oracle (Table 6 "GT" rows), best over the same thresholds;
* `priors_with_saliency_miou`: the CAMs with 1 − s as the background plane (Table 6 "segm.
  priors" rows), no threshold;

and, once, `priors_miou`: the CAMs alone, best constant background threshold (as eval_cam).
`metrics.json` holds them per source under `sources`, and at the top level those of the last
source (the saliency the recipe ends with), all as fractions.
"""

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed, fileio, progress, scores
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import miou, sweep
from pnoc_jax.evaluation.confusion import ConfusionSum, class_summary
from pnoc_jax.saliency import metrics

NAMES = {"infer_saliency": "C²AM masks", "infer_detector": "detector"}


def split_confusions(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> dict[str, dict[str, ConfusionSum]]:
    """{source: {"saliency" [T,2,2], "oracle" [T,L,L], "priors_with_saliency" [L,L]}} summed over
    this process's share of the split."""
    split = config.eval.split
    thresholds = np.asarray(config.eval.thresholds, np.float64)
    labels_count = dataset.num_classes + 1
    t = len(thresholds)
    totals = {
        name: {
            "saliency": ConfusionSum(2, (t,)),
            "oracle": ConfusionSum(labels_count, (t,)),
            "priors_with_saliency": ConfusionSum(labels_count),
        }
        for name in config.saliency_eval.sources
    }
    cam_dir = artifacts.cam_dir(workdir, split)
    source = dataset.split(split)
    for index in progress.iterate(range(len(source)), f"eval_saliency {split}"):
        example = source[index]
        gt, image_id = example["mask"], example["id"]
        if example["labels"].sum() > 0:
            record = scores.read_image(cam_dir, image_id, ("hr_cam",))
            keys, cams = record["keys"], record["hr_cam"]
        else:
            keys, cams = np.zeros(1, np.int64), np.zeros((0, *gt.shape), np.float32)
        for name, total in totals.items():
            path = artifacts.saliency_png_file(workdir, name, split, image_id)
            s = fileio.read_saliency(path, gt.shape)
            total["saliency"].add(metrics.saliency_confusions(gt, s, thresholds))
            total["oracle"].add(
                metrics.oracle_confusions(
                    gt, s, thresholds, labels_count, example["labels"], metrics.image_seed(image_id)
                )
            )
            total["priors_with_saliency"].add(
                metrics.priors_with_saliency_confusion(gt, cams, keys, s, labels_count)
            )
    return totals


def source_metrics(confusions: dict, thresholds, class_names: list[str]) -> dict:
    """The Table 6 numbers of one saliency source from its summed confusions."""
    saliency = miou.sweep_scores(confusions["saliency"], thresholds, ["foreground"])
    oracle = miou.sweep_scores(confusions["oracle"], thresholds, class_names)
    combined = class_summary(confusions["priors_with_saliency"], ["background", *class_names])
    return {
        "saliency_miou": saliency["miou"],
        "saliency_threshold": saliency["best_threshold"],
        "saliency_iou": saliency["per_class_iou"],
        "oracle_miou": oracle["miou"],
        "oracle_threshold": oracle["best_threshold"],
        "priors_with_saliency_miou": combined["miou"],
        "priors_with_saliency_fpr": combined["fpr"],
        "priors_with_saliency_fnr": combined["fnr"],
        "priors_with_saliency_per_class_iou": combined["per_class_iou"],
    }


def run(config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset) -> None:
    split = config.eval.split
    thresholds = np.asarray(config.eval.thresholds, np.float64)
    class_names = list(dataset.class_names)
    local = split_confusions(config, workdir, dataset)
    per_source = {}
    for name, confusions in local.items():
        summed = {k: v.total() for k, v in confusions.items()}
        per_source[name] = source_metrics(summed, thresholds, class_names)
    priors = sweep.sweep(
        dataset.split(split),
        artifacts.cam_dir(workdir, split),
        "hr_cam",
        thresholds,
        class_names,
    )
    last = per_source[config.saliency_eval.sources[-1]]
    summary = {
        "split": split,
        "source": config.saliency_eval.sources[-1],
        "source_order": list(config.saliency_eval.sources),
        "saliency_miou": last["saliency_miou"],
        "oracle_miou": last["oracle_miou"],
        "priors_with_saliency_miou": last["priors_with_saliency_miou"],
        "priors_miou": priors["miou"],
        "priors_threshold": priors["best_threshold"],
        "sources": per_source,
    }
    if distributed.is_chief():
        fileio.write_json(artifacts.metrics_file(workdir, "eval_saliency"), summary)
    logging.info("eval_saliency %s: %s", split, headline(summary))


def headline(summary: dict) -> str:
    parts = [
        f"{NAMES.get(name, name)} {100 * m['saliency_miou']:.2f} (GT oracle "
        f"{100 * m['oracle_miou']:.2f}, priors with it as background "
        f"{100 * m['priors_with_saliency_miou']:.2f})"
        for name in summary.get("source_order", sorted(summary["sources"]))
        for m in (summary["sources"][name],)
    ]
    return (
        f"saliency mIoU ({summary['split']}): {'; '.join(parts)}; priors alone "
        f"{100 * summary['priors_miou']:.2f}"
    )


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    del config, dataset
    return artifacts.missing([artifacts.metrics_file(workdir, "eval_saliency")])


def deps(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return ("infer_cam", *config.saliency_eval.sources)


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.saliency_eval`: known sources that make maps of `config.eval.split`,
    whose CAMs infer_cam makes too."""
    del topology
    sources = tuple(config.saliency_eval.sources)
    config_lib.check(
        bool(sources)
        and len(set(sources)) == len(sources)
        and set(sources) <= set(artifacts.SALIENCY_STAGES),
        "saliency_eval.sources",
        sources,
        f"distinct stages among {artifacts.SALIENCY_STAGES}",
    )
    for name in sources:
        section = "saliency_infer" if name == "infer_saliency" else "detector_infer"
        made = tuple(config[section].splits)
        config_lib.check(
            config.eval.split in made,
            "eval.split",
            config.eval.split,
            f"a split whose saliency {name} makes (config.{section}.splits={made})",
        )
    config_lib.check_choice(config, "eval.split", tuple(config.infer.splits))
