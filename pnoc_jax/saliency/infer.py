"""Stage `infer_saliency`: C²AM(-H) maps with test-time augmentation, and their CRF masks (spec §7).

For every image with classes of `config.saliency_infer.splits`: ReLU(s·z) of the image and of
its mirror image at every scale (fixed canvases, `inference.tta`; s = -1 when train_saliency
found a plain C²AM inverted, else 1), summed over the flip pair, resized, averaged over the
scales and max-normalised (`saliency.maps.combine_scales`); written as `<split>/<id>.npz` (keys
[0, 1], cam, hr_cam). Then, in `core.pool`, hr_cam > `mask_threshold` and a 2-label dense CRF
give the mask `<split>_masks/<id>.png` (greyscale 0/255), the saliency detector's training
target. An image without classes gets an all-background mask and no map file (as the
reference). Images whose outputs exist are skipped.
"""

from collections.abc import Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed, fileio, pool, progress, scores
from pnoc_jax.data import datasets, pipeline
from pnoc_jax.inference import predictor, tta
from pnoc_jax.saliency import tasks
from pnoc_jax.saliency import train as saliency_train


def map_predictor(config: ml_collections.ConfigDict, workdir: str):
    """ReLU(sign · z) [N, h, w] of a batch with the trained C²AM, on this process's devices."""
    model = saliency_train.build_model(config)
    path = artifacts.weights_file(workdir, "train_saliency")
    what = f"a C²AM with a {saliency_train.backbone_name(config)} backbone (config.saliency)"
    model_variables = saliency_train.load_checked(path, model, (1, 64, 64, 3), what)
    sign = saliency_train.read_orientation(workdir)

    def predict(v, x):
        z, _, _ = model.apply(v, x, train=False)
        return jax.nn.relu(sign * z)

    return predictor.local_predictor(predict, model_variables)


def mask_tasks(
    source: Sequence[dict],
    split: str,
    workdir: str,
    maps_of: Callable[[list[dict]], list[list[np.ndarray]]],
    stride: int,
    params: tasks.MaskParams,
    batch_size: int,
) -> Iterator[tasks.MaskTask]:
    """Tasks for the images whose outputs are missing; TTA maps are computed `batch_size` images
    at a time by `maps_of(examples)` as the pool consumes the tasks."""

    def task(example: dict, per_scale: list[np.ndarray] | None) -> tasks.MaskTask:
        image_id = example["id"]
        return tasks.MaskTask(
            image=example["image"],
            maps_per_scale=per_scale,
            stride=stride,
            map_path=artifacts.saliency_map_file(workdir, split, image_id),
            mask_path=artifacts.saliency_png_file(workdir, "infer_saliency", split, image_id),
            params=params,
        )

    map_dir = artifacts.saliency_map_dir(workdir, split)
    pending: list[dict] = []
    for index in progress.iterate(range(len(source)), f"infer_saliency {split}"):
        example = source[index]
        labelled = example["labels"].sum() > 0
        done = task(example, None)
        if fileio.exists(done.mask_path) and (
            not labelled or scores.exists(map_dir, example["id"])
        ):
            continue
        if not labelled:
            yield done
            continue
        pending.append(example)
        if len(pending) == batch_size:
            yield from map(task, pending, maps_of(pending))
            pending = []
    if pending:
        yield from map(task, pending, maps_of(pending))


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    cfg = config.saliency_infer
    predict, batch_multiple = map_predictor(config, workdir)
    stride = config.saliency.output_stride

    def maps_of(examples: list[dict]) -> list[list[np.ndarray]]:
        tta.check_fits(examples, cfg.max_image_size, "saliency_infer.max_image_size")
        return tta.multiscale_flip_sums(
            [e["image"] for e in examples],
            predict,
            cfg.scales,
            cfg.max_image_size,
            stride,
            batch_multiple,
        )

    params = config_lib.from_section(tasks.MaskParams, cfg)
    for split in cfg.splits:
        source = pipeline.open_split(config, split)
        todo = mask_tasks(
            source, split, workdir, maps_of, stride, params, config.runtime.predict_batch_size
        )
        done = sum(1 for _ in pool.run_tasks(tasks.saliency_mask, todo, config.runtime.num_workers))
        logging.info(
            "infer_saliency %s: %d computed, %d already there", split, done, len(source) - done
        )
    distributed.barrier("infer_saliency")


def missing(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Masks of every image and map files of labelled images that do not exist."""

    def outputs():
        for split in config.saliency_infer.splits:
            for image_id, labelled in pipeline.split_index(config, split):
                yield artifacts.saliency_png_file(workdir, "infer_saliency", split, image_id)
                if labelled:
                    yield scores.locate(artifacts.saliency_map_dir(workdir, split), image_id)

    return artifacts.missing(outputs())


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.saliency_infer`."""
    del topology
    cfg, key = config.saliency_infer, "saliency_infer"
    splits = datasets.get_info(config.data.name).splits
    config_lib.check_splits(config, f"{key}.splits", splits)
    config_lib.check(
        bool(cfg.scales) and all(isinstance(s, int | float) and s > 0 for s in cfg.scales),
        f"{key}.scales",
        tuple(cfg.scales),
        "positive scales",
    )
    config_lib.check_number(config, f"{key}.max_image_size", low=1, integer=True)
    config_lib.check_number(config, f"{key}.mask_threshold", low=0, high=1)
    config_lib.check_number(config, f"{key}.crf_iterations", low=0, integer=True)
    config_lib.check_number(
        config, f"{key}.crf_gt_prob", low=0, high=1, low_open=True, high_open=True
    )
