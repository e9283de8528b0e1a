"""Stage `infer_saliency`: C²AM(-H) maps with test-time augmentation, and their CRF masks (§7).

For every image with classes of `config.saliency_infer.splits`: ReLU(s·z) of the image and of
its mirror image at every scale (fixed canvases, `inference.tta`; s = -1 when train_saliency
found a plain C²AM inverted, else 1), summed over the flip pair, resized, averaged over the
scales and max-normalised (`saliency.maps.combine_scales`); written as `<split>/<id>.npz` (keys
[0, 1], cam, hr_cam). Then, in `core.pool`, hr_cam > `mask_threshold` and a 2-label dense CRF
give the mask `<split>_masks/<id>.png` (greyscale 0/255), the saliency detector's training
target. An image without classes gets an all-background mask and no map file (as the
reference). Images whose outputs exist are skipped.
"""

import jax
import ml_collections
import numpy as np

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, scores, weights
from pnoc_jax.data import datasets
from pnoc_jax.inference import per_image, predictor, tta
from pnoc_jax.models.ccam import CCAM
from pnoc_jax.saliency import tasks
from pnoc_jax.saliency import train as saliency_train


def map_forward(model: CCAM, sign: float):
    """`(variables, images [N, S, S, 3]) -> ReLU(sign · z) [N, h, w]`."""

    def predict(v, x):
        z, _, _ = model.apply(v, x, train=False)
        return jax.nn.relu(sign * z)

    return predict


def map_predictor(config: ml_collections.ConfigDict, workdir: str):
    """ReLU(sign · z) [N, h, w] of a batch with the trained C²AM, on this process's devices."""
    model = saliency_train.build_model(config)
    path = artifacts.weights_file(workdir, "train_saliency")
    what = f"a C²AM with a {saliency_train.backbone_name(config)} backbone (config.saliency)"
    model_variables = weights.load_checked(path, model, (1, 64, 64, 3), what)
    sign = saliency_train.read_orientation(workdir)
    return predictor.local_predictor(map_forward(model, sign), model_variables)


def device_programs(
    config: ml_collections.ConfigDict, batch_multiple: int
) -> list[predictor.DeviceProgram]:
    """The batches `run` predicts, one per scale: `runtime.predict_batch_size` images and
    their flips on the scale's canvas, for `batch_multiple` chips of a host (the orientation's
    sign, read from the workdir by `run`, does not change the program)."""
    cfg = config.saliency_infer
    model = saliency_train.build_model(config)
    variables = weights.variable_shapes(model, (1, 64, 64, 3))
    return tta.flip_pair_programs(
        map_forward(model, 1.0), variables, cfg.scales, cfg.max_image_size,
        config.runtime.predict_batch_size, batch_multiple,
    )  # fmt: skip


def outputs(workdir: str) -> per_image.Outputs:
    """An image's mask PNG, and its map file when it has classes."""

    def files(split: str, image_id: str, labelled: bool) -> list[str]:
        mask = artifacts.saliency_png_file(workdir, "infer_saliency", split, image_id)
        if not labelled:
            return [mask]
        return [mask, scores.locate(artifacts.saliency_map_dir(workdir, split), image_id)]

    return files


def run(config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset) -> None:
    cfg = config.saliency_infer
    predict, batch_multiple = map_predictor(config, workdir)
    stride = config.saliency.output_stride
    params = config_lib.from_section(tasks.MaskParams, cfg)

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

    def make_task(split: str, example: dict, per_scale: list[np.ndarray] | None) -> tasks.MaskTask:
        image_id = example["id"]
        return tasks.MaskTask(
            image=example["image"],
            maps_per_scale=per_scale,
            stride=stride,
            map_path=artifacts.saliency_map_file(workdir, split, image_id),
            mask_path=artifacts.saliency_png_file(workdir, "infer_saliency", split, image_id),
            params=params,
        )

    per_image.run(
        "infer_saliency", dataset, cfg.splits, outputs(workdir), maps_of, make_task,
        tasks.saliency_mask, runtime=config.runtime,
    )  # fmt: skip


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    """Masks of every image and map files of labelled images that do not exist."""
    return per_image.missing(dataset, config.saliency_infer.splits, outputs(workdir))


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
