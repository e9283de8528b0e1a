"""Stage `random_walk`: AffinityNet boundaries -> random walk -> dense-CRF pseudo-labels (§9).

For every image of `config.rw.splits`: boundaries of the trained AffinityNet (flip-averaged, on
the accelerator, batched on a fixed canvas), then in `core.pool` the IRN random walk of the
stride-4 CAMs and the CRF pseudo-label. Writes `random_walk/<split>/<id>.npz` (`core.scores`:
keys, rw) and `random_walk/<split>_pseudo/<id>.png` (palette). Images whose outputs exist are
skipped. Each process handles its own shard of every split.

With `config.rw.bg_threshold_split`, the random walk of that split runs first, the CRF sweep
of its maps against its ground truth picks the background threshold (`threshold.json`), and
every split's pseudo-labels are cut there: WSSS practice, but it reads that split's masks.
"""

import dataclasses

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.affinity import tasks
from pnoc_jax.affinity import train as aff_train
from pnoc_jax.core import artifacts, distributed, fileio, scores, weights
from pnoc_jax.data import datasets
from pnoc_jax.evaluation import miou, sweep
from pnoc_jax.inference import per_image, predictor, tta
from pnoc_jax.inference.predictor import Predict
from pnoc_jax.models.affinity import AffinityNet


def edge_maps(
    images: list[np.ndarray], predict: Predict, canvas: int, batch_multiple: int
) -> list[np.ndarray]:
    """σ((e(x) + hflip e(hflip x)) / 2) at stride 4, [⌈H/4⌉, ⌈W/4⌉] float32 per image."""
    pairs = tta.flip_pair_outputs(images, predict, canvas, batch_multiple, stride=4)
    return [
        (1.0 / (1.0 + np.exp(-(direct + flipped) / 2))).astype(np.float32)
        for direct, flipped in pairs
    ]


def edge_forward(model: AffinityNet):
    """`(variables, images [N, S, S, 3]) -> edge logits [N, ⌈S/4⌉, ⌈S/4⌉]`."""
    return lambda v, x: model.apply(v, x)


def device_programs(
    config: ml_collections.ConfigDict, batch_multiple: int
) -> list[predictor.DeviceProgram]:
    """The batch `run` predicts: `runtime.predict_batch_size` images and their flips on the
    scale-1 canvas of `rw.max_image_size`, for `batch_multiple` chips of a host."""
    model = aff_train.build_model(config)
    size = config.rw.max_image_size
    variables = weights.variable_shapes(model, (1, size, size, 3))
    return tta.flip_pair_programs(
        edge_forward(model), variables, (1.0,), size, config.runtime.predict_batch_size,
        batch_multiple,
    )  # fmt: skip


def outputs(workdir: str) -> per_image.Outputs:
    """An image's pseudo-label PNG, and its score file when it has classes."""

    def files(split: str, image_id: str, labelled: bool) -> list[str]:
        png = artifacts.pseudo_label_file(workdir, split, image_id)
        return (
            [png, scores.locate(artifacts.rw_dir(workdir, split), image_id)] if labelled else [png]
        )

    return files


def score_outputs(workdir: str) -> per_image.Outputs:
    """An image's score file when it has classes (the first pass of a chosen threshold)."""

    def files(split: str, image_id: str, labelled: bool) -> list[str]:
        return [scores.locate(artifacts.rw_dir(workdir, split), image_id)] if labelled else []

    return files


def chosen_threshold(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> float:
    """The best threshold (0.05 ... 0.80, step 0.05) of the CRF sweep (the pseudo-labels' CRF)
    of the random-walk maps of `config.rw.bg_threshold_split` against its ground truth; kept
    in `threshold.json`, so a resumed stage does not sweep again. Every process takes part in
    the sweep."""
    path = artifacts.rw_threshold_file(workdir)
    distributed.barrier("rw-threshold-check")
    if not fileio.exists(path):
        split = config.rw.bg_threshold_split
        result = sweep.crf_sweep(
            dataset.split(split),
            artifacts.rw_dir(workdir, split),
            "rw",
            miou.DEFAULT_THRESHOLDS,
            dataset.class_names,
            config.rw.crf_iterations,
            config.rw.crf_gt_prob,
            config.runtime.num_workers,
        )
        if distributed.is_chief():
            fileio.write_json(path, {"split": split, **result})
        distributed.barrier("rw-threshold-written")
    chosen = fileio.read_json(path)
    logging.info(
        "random_walk: background threshold %.2f, the best of the CRF sweep of %s (mIoU %.2f)",
        chosen["best_threshold"], chosen["split"], 100 * chosen["miou"],
    )  # fmt: skip
    return float(chosen["best_threshold"])


def run(config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset) -> None:
    cfg = config.rw
    model = aff_train.build_model(config)
    predict, batch_multiple = predictor.local_predictor(
        edge_forward(model), aff_train.load_variables(config, workdir)
    )
    canvas = tta.canvas_size(cfg.max_image_size, 1.0)
    params = config_lib.from_section(tasks.WalkParams, cfg, labels=True)

    def edges(examples: list[dict]) -> list[np.ndarray]:
        tta.check_fits(examples, cfg.max_image_size, "rw.max_image_size")
        return edge_maps([e["image"] for e in examples], predict, canvas, batch_multiple)

    def task_maker(params: tasks.WalkParams):
        def make_task(split: str, example: dict, edge: np.ndarray | None) -> tasks.WalkTask:
            image_id = example["id"]
            return tasks.WalkTask(
                image=example["image"],
                edge=edge,
                cam_path=scores.locate(artifacts.cam_dir(workdir, split), image_id),
                rw_path=artifacts.rw_file(workdir, split, image_id),
                png_path=artifacts.pseudo_label_file(workdir, split, image_id),
                params=params,
            )

        return make_task

    if cfg.bg_threshold_split:
        scores_only = task_maker(dataclasses.replace(params, labels=False))
        per_image.run(
            "random_walk", dataset, (cfg.bg_threshold_split,), score_outputs(workdir), edges,
            scores_only, tasks.random_walk, runtime=config.runtime,
        )  # fmt: skip
        params = dataclasses.replace(
            params, bg_threshold=chosen_threshold(config, workdir, dataset)
        )
    per_image.run(
        "random_walk", dataset, cfg.splits, outputs(workdir), edges, task_maker(params),
        tasks.random_walk, runtime=config.runtime,
    )  # fmt: skip


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    """Pseudo-labels of every image and scores of every labelled image that do not exist (and
    the chosen threshold's record, when the sweep chooses it)."""
    chosen = [artifacts.rw_threshold_file(workdir)] if config.rw.bg_threshold_split else []
    return artifacts.missing(chosen) + per_image.missing(
        dataset, config.rw.splits, outputs(workdir)
    )


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.rw`: CAMs of every split must be inferred."""
    del topology
    rw = config.rw
    splits = datasets.get_info(config.data.name).splits
    config_lib.check(
        bool(rw.splits) and set(rw.splits) <= set(config.infer.splits) & set(splits),
        "rw.splits",
        tuple(rw.splits),
        f"a non-empty subset of config.infer.splits {tuple(config.infer.splits)}",
    )
    config_lib.check_number(config, "rw.beta", low=0, low_open=True)
    config_lib.check_number(config, "rw.exp_times", low=0, integer=True)
    config_lib.check_number(config, "rw.radius", low=2, integer=True)
    config_lib.check_number(config, "rw.bg_threshold", low=0, high=1)
    config_lib.check_choice(config, "rw.bg_threshold_split", ("", *rw.splits))
    config_lib.check_number(config, "rw.crf_iterations", low=0, integer=True)
    config_lib.check_number(config, "rw.crf_gt_prob", low=0, high=1, low_open=True, high_open=True)
    config_lib.check_number(config, "rw.max_image_size", low=1, integer=True)
