"""Stage `infer_cam`: CAMs with test-time augmentation, one `.npz` per image (method.md §6).

For every scale s in `config.infer.scales`, the image is resized (PIL bicubic) and run with its
horizontal flip; ReLU(A) of the pair is summed, resized (bilinear, half-pixel) to stride 4
(`cam`) and to full resolution (`hr_cam`), and summed over scales. Only the image's own
classes are kept, each divided by its max + 1e-5. Each scale runs on a fixed square canvas
(`inference.tta`), so it compiles once. Files are `core.scores` `.npz`s (keys, cam, hr_cam).
Images with a score file (ours, or the reference's `.npy`) are skipped (resumable).
"""

import math
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from pnoc_jax import config_lib
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import artifacts, distributed, loop, scores, weights
from pnoc_jax.data import datasets
from pnoc_jax.inference import per_image, predictor, tta


def combine(
    cams_per_scale: list[np.ndarray], keys: np.ndarray, height: int, width: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sums the scales at stride 4 and at full resolution; keeps and normalises the GT classes.

    cams_per_scale: [h_s, w_s, C] per scale; keys: [K + 1] = [0, c1 + 1, ...]. Returns
    (cam [K, ⌈H/4⌉, ⌈W/4⌉], hr_cam [K, H, W]), float32.
    """
    classes = keys[1:] - 1
    low_h, low_w = math.ceil(height / 4), math.ceil(width / 4)
    hr_h, hr_w = stride * math.ceil(height / stride), stride * math.ceil(width / stride)
    cam = np.zeros((len(classes), low_h, low_w), np.float32)
    hr = np.zeros((len(classes), hr_h, hr_w), np.float32)
    for maps in cams_per_scale:
        maps = np.ascontiguousarray(maps[..., classes])
        cam += tta.resize_maps(maps, low_h, low_w)
        hr += tta.resize_maps(maps, hr_h, hr_w)
    hr = hr[:, :height, :width]
    cam /= cam.max(axis=(1, 2), keepdims=True) + 1e-5
    hr /= hr.max(axis=(1, 2), keepdims=True) + 1e-5
    return cam, hr


def cam_forward(model):
    """`(variables, images [N, S, S, 3]) -> ReLU(CAMs) [N, h, w, C]`."""

    def predict(variables, images):
        _, cams = model.apply(variables, images, train=False)
        return jax.nn.relu(cams)

    return predict


def cam_predictor(model, variables):
    """ReLU(CAMs) [N, h, w, C] of a batch, jitted on this process's devices."""
    return predictor.local_predictor(cam_forward(model), variables)


def device_programs(
    config: ml_collections.ConfigDict, batch_multiple: int
) -> list[predictor.DeviceProgram]:
    """The batches `run` predicts, one per scale: `runtime.predict_batch_size` images and
    their flips on the scale's canvas, for `batch_multiple` chips of a host."""
    model = cam_train.build_model(config)
    size = config.infer.max_image_size
    variables = weights.variable_shapes(model, (1, size, size, 3))
    return tta.flip_pair_programs(
        cam_forward(model), variables, config.infer.scales, size,
        config.runtime.predict_batch_size, batch_multiple,
    )  # fmt: skip


def image_keys(labels: np.ndarray) -> np.ndarray:
    """[0, c1 + 1, c2 + 1, ...]: the segmentation index of each plane of a CAM file."""
    return np.concatenate([[0], np.flatnonzero(labels > 0.5) + 1]).astype(np.int64)


def run(config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset) -> None:
    """Writes `<workdir>/infer_cam/<split>/<id>.npz` for every labelled image of each split."""
    cfg = config.infer
    model = cam_train.build_model(config)
    variables = weights.load(artifacts.weights_file(workdir, cfg.weights_from))
    predict, batch_multiple = cam_predictor(model, variables)
    with loop.StopSignals("finishing this batch of images, then stopping") as stop:
        for split in cfg.splits:
            _run_split(config, workdir, dataset, split, predict, batch_multiple, stop)
    distributed.barrier("infer_cam")


def _run_split(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: datasets.Dataset,
    split: str,
    predict: Callable,
    batch_multiple: int,
    stop: loop.StopSignals,
) -> None:
    """`run` for one split: the labelled images whose CAM file is missing or damaged."""
    cfg, batch_size = config.infer, config.runtime.predict_batch_size
    source = dataset.split(split)
    cam_dir = artifacts.cam_dir(workdir, split)
    todo = []
    for index in range(len(source)):
        example = source[index]
        done = artifacts.damage(scores.locate(cam_dir, example["id"])) is None
        if example["labels"].sum() > 0 and not done:
            todo.append(index)
    for examples in per_image.device_batches("infer_cam", split, source, todo, batch_size, stop):
        tta.check_fits(examples, cfg.max_image_size, "infer.max_image_size")
        cams = tta.multiscale_flip_sums(
            [e["image"] for e in examples],
            predict,
            cfg.scales,
            cfg.max_image_size,
            config.model.output_stride,
            batch_multiple,
        )
        for example, per_scale in zip(examples, cams, strict=True):
            keys = image_keys(example["labels"])
            h, w = example["image"].shape[:2]
            cam, hr = combine(per_scale, keys, h, w, config.model.output_stride)
            scores.write(
                artifacts.cam_file(workdir, split, example["id"]), keys, cam=cam, hr_cam=hr
            )


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    """The CAM files of labelled images of `config.infer.splits` that do not exist."""
    return artifacts.missing(
        scores.locate(artifacts.cam_dir(workdir, split), image_id)
        for split in config.infer.splits
        for image_id, labelled in dataset.index(split)
        if labelled
    )


def deps(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return (config.infer.weights_from,)


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.infer`."""
    del topology
    splits = datasets.get_info(config.data.name).splits
    infer = config.infer
    config_lib.check_splits(config, "infer.splits", splits)
    config_lib.check(
        bool(infer.scales) and all(s > 0 for s in infer.scales),
        "infer.scales",
        tuple(infer.scales),
        "positive scales",
    )
    config_lib.check_number(config, "infer.max_image_size", low=1, integer=True)
    config_lib.check_choice(config, "infer.weights_from", ("train_cam", "train_oc"))
