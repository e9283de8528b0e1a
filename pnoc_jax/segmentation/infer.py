"""Stages `infer_segmentation` and `infer_segmentation_gt`: the kept segmentation network on
`config.segmentation_infer.splits` (spec §10, test time).

Per image: logits at scales x (optional) flip on fixed canvases (`inference.dense`), each
resized to the image, the flip pair summed, the mean over scales; then, in `core.pool`,
softmax, dense CRF (DeepLab's settings, `segmentation.tasks.CRF_KERNELS`; off with
`crf_iterations=0`) and argmax. Writes `<stage>/<split>/<id>.png` (palette PNGs, 0..C) and,
with the CRF on, `<stage>/<split>_nocrf/<id>.png`; an image without ground truth (its mask all
255, as VOC `test`) also goes to `<stage>/results/VOC2012/Segmentation/comp6_test_cls/<id>.png`,
the evaluation server's layout. Images whose PNG exists are skipped (resumable); each process
handles its own shard of every split.
"""

from collections.abc import Callable, Iterator, Sequence

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed, fileio, pool, progress, weights
from pnoc_jax.core.masks import IGNORE
from pnoc_jax.data import datasets, pipeline
from pnoc_jax.inference import dense, predictor
from pnoc_jax.segmentation import tasks
from pnoc_jax.segmentation import train as seg_train


def load_predictor(workdir: str, train_stage: str) -> tuple[dense.DensePredict, int]:
    """The kept network of `train_stage` as a batch predictor on this process's devices."""
    spec = seg_train.ModelSpec.read(artifacts.model_file(workdir, train_stage))
    model = spec.build()
    variables = weights.load(artifacts.segmentation_weights_file(workdir, train_stage))
    return predictor.local_predictor(seg_train.inference_fn(model), variables)


def segment_tasks(
    source: Sequence[dict],
    split: str,
    stage: str,
    workdir: str,
    logits_of: Callable[[list[np.ndarray]], list[np.ndarray]],
    crf_iterations: int,
    batch_size: int,
) -> Iterator[tasks.SegmentTask]:
    """Tasks for the images of `source` whose label PNG is missing; logits are computed for
    `batch_size` images at a time, as the pool consumes the tasks."""

    def make(example: dict, logits: np.ndarray) -> tasks.SegmentTask:
        image_id = example["id"]
        no_truth = bool(np.all(example["mask"] == IGNORE))
        return tasks.SegmentTask(
            image=example["image"],
            logits=logits,
            label_path=artifacts.segmentation_file(workdir, stage, split, image_id),
            plain_path=(
                artifacts.segmentation_file(workdir, stage, split, image_id, crf=False)
                if crf_iterations
                else ""
            ),
            server_path=artifacts.server_file(workdir, stage, image_id) if no_truth else "",
            crf_iterations=crf_iterations,
        )

    pending: list[dict] = []
    for index in progress.iterate(range(len(source)), f"{stage} {split}"):
        example = source[index]
        if not fileio.exists(artifacts.segmentation_file(workdir, stage, split, example["id"])):
            pending.append(example)
        if len(pending) == batch_size:
            yield from map(make, pending, logits_of([e["image"] for e in pending]))
            pending = []
    if pending:
        yield from map(make, pending, logits_of([e["image"] for e in pending]))


def run(config: ml_collections.ConfigDict, workdir: str, *, labels: str) -> None:
    cfg = config.segmentation_infer
    train_stage, stage, _ = seg_train.STAGES[labels]
    predict, batch_multiple = load_predictor(workdir, train_stage)

    def logits_of(images: list[np.ndarray]) -> list[np.ndarray]:
        too_big = [im.shape[:2] for im in images if max(im.shape[:2]) > cfg.max_image_size]
        if too_big:
            raise ValueError(
                f"images of size {too_big} are larger than "
                f"config.segmentation_infer.max_image_size={cfg.max_image_size}; raise it"
            )
        return dense.multiscale_logits(
            images, predict, cfg.scales, cfg.max_image_size, batch_multiple, cfg.flip
        )

    for split in cfg.splits:
        source = pipeline.open_split(config, split)
        todo = segment_tasks(
            source,
            split,
            stage,
            workdir,
            logits_of,
            cfg.crf_iterations,
            config.runtime.predict_batch_size,
        )
        done = sum(pool.run_tasks(tasks.segment, todo, config.runtime.num_workers))
        logging.info(
            "%s %s: %d predicted, %d already there", stage, split, done, len(source) - done
        )
    distributed.barrier(stage)


def infer_segmentation(config: ml_collections.ConfigDict, workdir: str) -> None:
    run(config, workdir, labels="pseudo")


def infer_segmentation_gt(config: ml_collections.ConfigDict, workdir: str) -> None:
    run(config, workdir, labels="ground_truth")


def missing_for(labels: str) -> Callable[[ml_collections.ConfigDict, str], list[str]]:
    """The label PNGs (and, with the CRF, the PNGs without it) that do not exist."""
    stage = seg_train.STAGES[labels][1]

    def missing(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
        cfg = config.segmentation_infer
        kinds = (True, False) if cfg.crf_iterations else (True,)

        def outputs():
            for split in cfg.splits:
                for image_id, _ in pipeline.split_index(config, split):
                    for crf in kinds:
                        yield artifacts.segmentation_file(workdir, stage, split, image_id, crf)

        return artifacts.missing(outputs())

    return missing


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.segmentation_infer`."""
    del topology
    cfg, key = config.segmentation_infer, "segmentation_infer"
    splits = datasets.get_info(config.data.name).splits
    config_lib.check(
        bool(cfg.splits) and set(cfg.splits) <= set(splits),
        f"{key}.splits",
        tuple(cfg.splits),
        f"a non-empty subset of the dataset's splits {list(splits)}",
    )
    config_lib.check(
        bool(cfg.scales)
        and all(
            isinstance(s, int | float) and not isinstance(s, bool) and s > 0 for s in cfg.scales
        ),
        f"{key}.scales",
        tuple(cfg.scales),
        "positive scales",
    )
    config_lib.check_number(config, f"{key}.max_image_size", low=1, integer=True)
    config_lib.check_number(config, f"{key}.crf_iterations", low=0, integer=True)
