"""Stage `infer_cam`: CAMs with test-time augmentation, one `.npy` per image (spec §6).

For every scale s in `config.infer.scales`, the image is resized (PIL bicubic) and run with its
horizontal flip; ReLU(A) of the pair is summed, resized (bilinear, half-pixel) to stride 4
(`cam`) and to full resolution (`hr_cam`), and summed over scales. Only the image's own
classes are kept, each divided by its max + 1e-5. Each scale runs on a fixed square canvas
(images padded bottom/right with the mean colour), so it compiles once.
"""

import math
import os

import cv2
import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image
from tqdm import tqdm

from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import distributed, fileio
from pnoc_jax.data import pipeline, transforms


def canvas_size(max_image_size: int, scale: float, multiple: int = 32) -> int:
    """Side of the square canvas that holds any image of side <= max_image_size at `scale`."""
    return multiple * math.ceil(round(max_image_size * scale) / multiple)


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """PIL bicubic resize to (round(W·s), round(H·s)), as the reference inference does."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, align_corners=False (cv2 INTER_LINEAR) resize of [h, w, K] maps -> [K, H, W]."""
    out = np.stack(
        [
            cv2.resize(maps[..., k], (width, height), interpolation=cv2.INTER_LINEAR)
            for k in range(maps.shape[-1])
        ]
    )
    return out.astype(np.float32)


def make_predict_fn(model, variables, mesh):
    """Jitted ReLU(CAMs) for a batch sharded over this process's devices."""

    def predict(variables, images):
        _, cams = model.apply(variables, images, train=False)
        return jax.nn.relu(cams)

    return distributed.batch_predictor(predict, variables, mesh)


def flip_pairs_on_canvas(images: list[np.ndarray], canvas: int, batch_multiple: int) -> np.ndarray:
    """[x0, flip x0, x1, flip x1, ...] normalised, padded bottom/right into canvas² (mean colour).

    Zero images pad the batch to a multiple of `batch_multiple` (the local device count).
    """
    pairs = []
    for image in images:
        x = transforms.normalize(image)
        for view in (x, x[:, ::-1]):
            padded = np.zeros((canvas, canvas, 3), np.float32)
            padded[: view.shape[0], : view.shape[1]] = view
            pairs.append(padded)
    while len(pairs) % batch_multiple:
        pairs.append(np.zeros_like(pairs[0]))
    return np.stack(pairs)


def tta_cams(
    images: list[np.ndarray],
    predict,
    scales,
    max_image_size: int,
    output_stride: int,
    batch_multiple: int,
) -> list[np.ndarray]:
    """Multi-scale + flip CAMs of a list of images: for each, a list of [h_s, w_s, C] per scale."""
    per_image: list[list[np.ndarray]] = [[] for _ in images]
    for scale in scales:
        canvas = canvas_size(max_image_size, scale)
        resized = [resize_image(im, scale) for im in images]
        cams = predict(flip_pairs_on_canvas(resized, canvas, batch_multiple))
        for i, im in enumerate(resized):
            fh = math.ceil(im.shape[0] / output_stride)
            fw = math.ceil(im.shape[1] / output_stride)
            direct, flipped = cams[2 * i, :fh, :fw], cams[2 * i + 1, :fh, :fw]
            per_image[i].append(direct + flipped[:, ::-1])
    return per_image


def combine(
    cams_per_scale: list[np.ndarray], keys: np.ndarray, height: int, width: int, stride: int
):
    """Sums the scales at stride 4 and at full resolution; keeps and normalises the GT classes."""
    classes = keys[1:] - 1
    low_h, low_w = math.ceil(height / 4), math.ceil(width / 4)
    hr_h, hr_w = stride * math.ceil(height / stride), stride * math.ceil(width / stride)
    cam = np.zeros((len(classes), low_h, low_w), np.float32)
    hr = np.zeros((len(classes), hr_h, hr_w), np.float32)
    for maps in cams_per_scale:
        maps = np.ascontiguousarray(maps[..., classes])
        cam += resize_maps(maps, low_h, low_w)
        hr += resize_maps(maps, hr_h, hr_w)
    hr = hr[:, :height, :width]
    cam /= cam.max(axis=(1, 2), keepdims=True) + 1e-5
    hr /= hr.max(axis=(1, 2), keepdims=True) + 1e-5
    return cam, hr


def output_dir(workdir: str, split: str) -> str:
    return os.path.join(workdir, "infer_cam", split)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `<workdir>/infer_cam/<split>/<id>.npy` for every labelled image of each split."""
    cfg = config.infer
    local_mesh = distributed.make_mesh(jax.local_devices())
    model = cam_train.build_model(config)
    variables = cam_train.load_classifier_variables(
        config,
        "train",
        os.path.join(workdir, cfg.checkpoint_stage, "ckpt"),
        model,
        distributed.make_mesh(),
    )
    variables = jax.device_put(jax.device_get(variables), distributed.replicated(local_mesh))
    predict = make_predict_fn(model, variables, local_mesh)
    batch_multiple = len(jax.local_devices())
    for split in cfg.splits:
        source = pipeline.open_split(config, split)
        out_dir = output_dir(workdir, split)
        os.makedirs(out_dir, exist_ok=True)
        todo = []
        for index in range(len(source)):
            example = source[index]
            path = os.path.join(out_dir, f"{example['id']}.npy")
            if example["labels"].sum() > 0 and not os.path.exists(path):
                todo.append(index)
        logging.info("infer_cam %s: %d of %d images to do", split, len(todo), len(source))
        progress = tqdm(
            total=len(todo), desc=f"infer_cam {split}", disable=not distributed.is_chief()
        )
        for start in range(0, len(todo), cfg.batch_size):
            examples = [source[i] for i in todo[start : start + cfg.batch_size]]
            too_big = [e["id"] for e in examples if max(e["image"].shape[:2]) > cfg.max_image_size]
            if too_big:
                raise ValueError(
                    f"images {too_big} are larger than config.infer.max_image_size="
                    f"{cfg.max_image_size}; raise it"
                )
            cams = tta_cams(
                [e["image"] for e in examples],
                predict,
                cfg.scales,
                cfg.max_image_size,
                config.model.output_stride,
                batch_multiple,
            )
            for example, per_scale in zip(examples, cams, strict=True):
                keys = np.concatenate([[0], np.flatnonzero(example["labels"] > 0.5) + 1])
                h, w = example["image"].shape[:2]
                cam, hr = combine(per_scale, keys, h, w, config.model.output_stride)
                fileio.write_npy_dict(
                    os.path.join(out_dir, f"{example['id']}.npy"),
                    {"keys": keys.astype(np.int64), "cam": cam, "hr_cam": hr},
                )
            progress.update(len(examples))
        progress.close()
    distributed.barrier("infer_cam")
