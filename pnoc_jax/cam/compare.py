"""Stage `compare`: the paper's strategy ablation (Tables 2 and 3) on one dataset.

For every seed, an ordinary classifier is trained once (`config.oc`) and shared by the
strategies that need it; every strategy then runs train -> infer -> eval in its own folder
`compare/seed<k>/<strategy>/`. Sub-runs are ordinary stage runs, so an interrupted comparison
resumes where it stopped. Writes `compare/results.{md,csv}`: prior mIoU mean ± std over seeds
per strategy, and the mean per-class IoU.
"""

import copy
import os

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax.cam import strategies
from pnoc_jax.core import distributed, fileio


def sub_config(
    config: ml_collections.ConfigDict, seed: int, strategy: str, oc_ckpt: str
) -> ml_collections.ConfigDict:
    sub = copy.deepcopy(config)
    with sub.unlocked():
        sub.seed = seed
        sub.train.strategy = strategy
        sub.train.oc_checkpoint = oc_ckpt if strategies.reads_oc_checkpoint(sub.train) else ""
        sub.stages = ("train_cam", "infer_cam", "eval_cam")
        sub.infer.splits = (sub.eval.split,)  # only the evaluated split's CAMs are needed
    return sub


def summarise(results: dict[str, list[dict]], class_names: list[str]) -> tuple[str, str]:
    """Markdown and CSV tables from {strategy: [metrics.json of each seed]}."""
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


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    from pnoc_jax import stages
    from pnoc_jax.data import datasets

    root = os.path.join(workdir, "compare")
    results: dict[str, list[dict]] = {s: [] for s in config.compare.strategies}
    for seed in config.compare.seeds:
        seed_dir = os.path.join(root, f"seed{seed}")
        oc_ckpt = os.path.join(seed_dir, "train_oc", "ckpt")
        oc_config = sub_config(config, seed, "cam", "")
        stages.run_stage("train_oc", oc_config, seed_dir)
        for strategy in config.compare.strategies:
            sub = sub_config(config, seed, strategy, oc_ckpt)
            sub_dir = os.path.join(seed_dir, strategy)
            logging.info("compare: seed %d, strategy %s -> %s", seed, strategy, sub_dir)
            stages.run_stages(sub, sub_dir)
            results[strategy].append(
                fileio.read_json(os.path.join(sub_dir, "eval_cam", "metrics.json"))
            )
    if not distributed.is_chief():
        return
    class_names = list(datasets.get_info(config.data.name).class_names)
    md, csv = summarise(results, class_names)
    fileio.write_text(os.path.join(root, "results.md"), md)
    fileio.write_text(os.path.join(root, "results.csv"), csv)
    print(md)
