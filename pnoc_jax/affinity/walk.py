"""Stage `random_walk`: AffinityNet boundaries -> random walk -> dense-CRF pseudo-labels (spec §9).

For every image of `config.rw.splits`: boundaries of the trained AffinityNet (flip-averaged, on
the accelerator, batched on a fixed canvas), then in `core.pool` the IRN random walk of the
stride-4 CAMs and the CRF pseudo-label. Writes `random_walk/<split>/<id>.npz` (`core.scores`:
keys, rw) and `random_walk/<split>_pseudo/<id>.png` (palette). Images whose outputs exist are
skipped. Each process handles its own shard of every split.
"""

from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.affinity import tasks
from pnoc_jax.affinity import train as aff_train
from pnoc_jax.core import artifacts, distributed, fileio, pool, progress, scores
from pnoc_jax.data import datasets, pipeline
from pnoc_jax.inference import predictor, tta
from pnoc_jax.inference.predictor import Predict


def edge_maps(
    images: list[np.ndarray], predict: Predict, canvas: int, batch_multiple: int
) -> list[np.ndarray]:
    """σ((e(x) + hflip e(hflip x)) / 2) at stride 4, [⌈H/4⌉, ⌈W/4⌉] float32 per image."""
    pairs = tta.flip_pair_outputs(images, predict, canvas, batch_multiple, stride=4)
    return [
        (1.0 / (1.0 + np.exp(-(direct + flipped) / 2))).astype(np.float32)
        for direct, flipped in pairs
    ]


def walk_tasks(
    source: Sequence[dict],
    split: str,
    workdir: str,
    params: tasks.WalkParams,
    edges,
    batch_size: int,
) -> Iterator[tasks.WalkTask]:
    """Tasks for the images of `source` whose outputs are missing; boundaries are computed for
    `batch_size` images at a time by `edges(examples)`, as the pool consumes the tasks."""

    def task(example: dict, edge: np.ndarray | None) -> tasks.WalkTask:
        image_id = example["id"]
        return tasks.WalkTask(
            image=example["image"],
            edge=edge,
            cam_path=scores.locate(artifacts.cam_dir(workdir, split), image_id),
            rw_path=artifacts.rw_file(workdir, split, image_id),
            png_path=artifacts.pseudo_label_file(workdir, split, image_id),
            params=params,
        )

    rw_dir = artifacts.rw_dir(workdir, split)
    pending: list[dict] = []
    for index in progress.iterate(range(len(source)), f"random_walk {split}"):
        example = source[index]
        done = task(example, None)
        if fileio.exists(done.png_path) and (
            example["labels"].sum() == 0 or scores.exists(rw_dir, example["id"])
        ):
            continue
        if example["labels"].sum() == 0:  # no classes: all background, no score file
            yield done
            continue
        pending.append(example)
        if len(pending) == batch_size:
            yield from map(task, pending, edges(pending))
            pending = []
    if pending:
        yield from map(task, pending, edges(pending))


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    cfg = config.rw
    model = aff_train.build_model(config)
    predict, batch_multiple = predictor.local_predictor(
        lambda v, x: model.apply(v, x), aff_train.load_variables(config, workdir)
    )
    canvas = tta.canvas_size(cfg.max_image_size, 1.0)

    def edges(examples: list[dict]) -> list[np.ndarray]:
        tta.check_fits(examples, cfg.max_image_size, "rw.max_image_size")
        return edge_maps([e["image"] for e in examples], predict, canvas, batch_multiple)

    params = config_lib.from_section(tasks.WalkParams, cfg)
    for split in cfg.splits:
        source = pipeline.open_split(config, split)
        todo = walk_tasks(source, split, workdir, params, edges, config.runtime.predict_batch_size)
        done = sum(1 for _ in pool.run_tasks(tasks.random_walk, todo, config.runtime.num_workers))
        logging.info(
            "random_walk %s: %d computed, %d already there", split, done, len(source) - done
        )
    distributed.barrier("random_walk")


def missing(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Pseudo-labels of every image and scores of every labelled image that do not exist."""

    def outputs():
        for split in config.rw.splits:
            for image_id, labelled in pipeline.split_index(config, split):
                yield artifacts.pseudo_label_file(workdir, split, image_id)
                if labelled:
                    yield scores.locate(artifacts.rw_dir(workdir, split), image_id)

    return artifacts.missing(outputs())


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
    config_lib.check_number(config, "rw.crf_iterations", low=0, integer=True)
    config_lib.check_number(config, "rw.crf_gt_prob", low=0, high=1, low_open=True, high_open=True)
    config_lib.check_number(config, "rw.max_image_size", low=1, integer=True)
