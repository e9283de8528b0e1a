"""Stages `infer_segmentation` and `infer_segmentation_gt`: the kept segmentation network on
`config.segmentation_infer.splits` (method.md §10, test time).

Per image: logits at scales x (optional) flip on fixed canvases (`inference.dense`), each
resized to the image, the flip pair summed, the mean over scales; then, in `core.pool`,
softmax, dense CRF (DeepLab's settings, `segmentation.tasks.CRF_KERNELS`; off with
`crf_iterations=0`) and argmax. Writes `<stage>/<split>/<id>.png` (palette PNGs, 0..C) and,
with the CRF on, `<stage>/<split>_nocrf/<id>.png`; an image without ground truth (its mask all
255, as VOC `test`) also goes to `<stage>/results/VOC2012/Segmentation/comp6_test_cls/<id>.png`,
the evaluation server's layout. Images whose PNG exists are skipped (resumable); each process
handles its own shard of every split.
"""

from collections.abc import Callable

import ml_collections
import numpy as np

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, weights
from pnoc_jax.core.masks import IGNORE
from pnoc_jax.data import datasets
from pnoc_jax.inference import dense, per_image, predictor
from pnoc_jax.segmentation import model as seg_model
from pnoc_jax.segmentation import tasks
from pnoc_jax.segmentation import train as seg_train


def outputs(workdir: str, stage: str, crf: bool) -> per_image.Outputs:
    """An image's label PNG and, with the CRF on, its PNG without it."""
    kinds = (True, False) if crf else (True,)

    def files(split: str, image_id: str, labelled: bool) -> list[str]:
        del labelled
        return [artifacts.segmentation_file(workdir, stage, split, image_id, k) for k in kinds]

    return files


def device_programs(
    config: ml_collections.ConfigDict, batch_multiple: int
) -> list[predictor.DeviceProgram]:
    """The batches `run` predicts, one per scale: the views (with `flip`, each image and its
    flip) of `runtime.predict_batch_size` images and their valid masks on the scale's canvas,
    for `batch_multiple` chips of a host. The network is the one `train_segmentation` writes
    in its model.json (`model.model_spec` of the config)."""
    cfg = config.segmentation_infer
    model = seg_model.model_spec(config).build()
    variables = weights.variable_shapes(model, (1, 64, 64, 3))
    return dense.dense_programs(
        seg_model.inference_fn(model), variables, cfg.scales, cfg.max_image_size,
        config.runtime.predict_batch_size, batch_multiple, cfg.flip,
    )  # fmt: skip


def run(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset, *, labels: str
) -> None:
    cfg = config.segmentation_infer
    train_stage, stage, _ = seg_train.STAGES[labels]
    predict, batch_multiple = seg_model.load_predictor(
        seg_model.ModelSpec.read(artifacts.model_file(workdir, train_stage)),
        artifacts.segmentation_weights_file(workdir, train_stage),
    )

    def logits_of(examples: list[dict]) -> list[np.ndarray]:
        images = [e["image"] for e in examples]
        too_big = [im.shape[:2] for im in images if max(im.shape[:2]) > cfg.max_image_size]
        if too_big:
            raise ValueError(
                f"images of size {too_big} are larger than "
                f"config.segmentation_infer.max_image_size={cfg.max_image_size}; raise it"
            )
        return dense.multiscale_logits(
            images, predict, cfg.scales, cfg.max_image_size, batch_multiple, cfg.flip
        )

    def make_task(split: str, example: dict, logits: np.ndarray) -> tasks.SegmentTask:
        image_id = example["id"]
        no_truth = bool(np.all(example["mask"] == IGNORE))
        plain = artifacts.segmentation_file(workdir, stage, split, image_id, crf=False)
        return tasks.SegmentTask(
            image=example["image"],
            logits=logits,
            label_path=artifacts.segmentation_file(workdir, stage, split, image_id),
            plain_path=plain if cfg.crf_iterations else "",
            server_path=artifacts.server_file(workdir, stage, image_id) if no_truth else "",
            crf_iterations=cfg.crf_iterations,
        )

    files = outputs(workdir, stage, cfg.crf_iterations > 0)
    per_image.run(
        stage, dataset, cfg.splits, files, logits_of, make_task, tasks.segment,
        runtime=config.runtime, compute_unlabelled=True,
    )  # fmt: skip


def infer_segmentation(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> None:
    run(config, workdir, dataset, labels="pseudo")


def infer_segmentation_gt(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> None:
    run(config, workdir, dataset, labels="ground_truth")


def missing_for(
    labels: str,
) -> Callable[[ml_collections.ConfigDict, str, datasets.Dataset], list[str]]:
    """The label PNGs (and, with the CRF, the PNGs without it) that do not exist."""
    stage = seg_train.STAGES[labels][1]

    def missing(
        config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
    ) -> list[str]:
        cfg = config.segmentation_infer
        files = outputs(workdir, stage, cfg.crf_iterations > 0)
        return per_image.missing(dataset, cfg.splits, files)

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
