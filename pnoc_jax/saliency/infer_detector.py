"""Stage `infer_detector`: saliency maps of the trained detector (method.md §7).

For every image of `config.detector_infer.splits`: the image times `config.detector.input_scale`
(PIL bicubic), normalised and padded onto the training canvas, one forward pass (no flip, as
the reference), σ of the logits cropped to the image, resized back to H x W (bilinear) and
written as `infer_detector/<split>/<id>.png` = round(255·σ) (greyscale, no CRF). The weights
are this workdir's `train_detector` or, with `detector_infer.weights`, a PoolNet weights file
of the configured architecture. Images whose PNG exists are skipped.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed, fileio, loop, weights
from pnoc_jax.data import datasets, transforms
from pnoc_jax.inference import per_image, predictor
from pnoc_jax.models.poolnet import PoolNet
from pnoc_jax.saliency import train_detector


def weights_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    given = config.detector_infer.weights
    return fileio.expand(given) if given else train_detector.weights_path(workdir)


def saliency_forward(model: PoolNet):
    """`(variables, images [N, C, C, 3]) -> σ(logits) [N, C, C]`."""
    return lambda v, x: jax.nn.sigmoid(model.apply(v, x))


def detector_predictor(config: ml_collections.ConfigDict, workdir: str):
    """σ(logits) [N, C, C] of canvas batches, on this process's devices."""
    model = train_detector.build_model(config)
    path = weights_path(config, workdir)
    shape = train_detector.input_shape(config)
    model_variables = weights.load_checked(path, model, shape, train_detector.describe(config))
    return predictor.local_predictor(saliency_forward(model), model_variables)


def device_programs(
    config: ml_collections.ConfigDict, batch_multiple: int
) -> list[predictor.DeviceProgram]:
    """The batch `run` predicts: `runtime.predict_batch_size` images on the detector's canvas,
    padded to a multiple of `batch_multiple` (a host's chips)."""
    model = train_detector.build_model(config)
    shape = train_detector.input_shape(config)
    variables = weights.variable_shapes(model, shape)
    rows = canvas_rows(config.runtime.predict_batch_size, batch_multiple)
    images = jax.ShapeDtypeStruct((rows, *shape[1:]), jnp.float32)
    return [predictor.DeviceProgram("canvas", saliency_forward(model), variables, images)]


def canvas_rows(images: int, batch_multiple: int) -> int:
    """Rows of the batch `on_canvas` makes of `images` images."""
    return images + (-images % batch_multiple)


def on_canvas(images: list[np.ndarray], side: int, batch_multiple: int) -> np.ndarray:
    """[N', side, side, 3]: each image normalised at the top-left of a zero (mean-colour)
    square, zero images padding N up to a multiple of `batch_multiple`."""
    batch = np.zeros((canvas_rows(len(images), batch_multiple), side, side, 3), np.float32)
    for slot, image in zip(batch, images, strict=False):
        slot[: image.shape[0], : image.shape[1]] = transforms.normalize(image)
    return batch


def saliency_maps(
    images: list[np.ndarray], predict, side: int, scale: float, batch_multiple: int
) -> list[np.ndarray]:
    """uint8 [H, W] saliency (round(255·σ)) of each image."""
    scaled = [transforms.scale_image(image, scale) for image in images]
    too_big = [s.shape[:2] for s in scaled if max(s.shape[:2]) > side]
    if too_big:
        raise ValueError(
            f"images of size {too_big} (after config.detector.input_scale) exceed the detector's "
            f"canvas {side}; raise config.detector.max_image_size"
        )
    probabilities = predict(on_canvas(scaled, side, batch_multiple))
    out = []
    for image, small, p in zip(images, scaled, probabilities, strict=False):
        h, w = image.shape[:2]
        p = transforms.scale_map(p[: small.shape[0], : small.shape[1]], h, w)
        out.append(np.round(255.0 * np.clip(p, 0.0, 1.0)).astype(np.uint8))
    return out


def run(config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset) -> None:
    predict, batch_multiple = detector_predictor(config, workdir)
    side = train_detector.canvas(config)
    scale = config.detector.input_scale
    batch_size = config.runtime.predict_batch_size
    with loop.StopSignals("finishing this batch of images, then stopping") as stop:
        for split in config.detector_infer.splits:
            source = dataset.split(split)

            def path(example: dict, split: str = split) -> str:
                return artifacts.saliency_png_file(workdir, "infer_detector", split, example["id"])

            todo = [i for i in range(len(source)) if artifacts.damage(path(source[i]))]
            batches = per_image.device_batches(
                "infer_detector", split, source, todo, batch_size, stop
            )
            for examples in batches:
                images = [e["image"] for e in examples]
                for example, saliency in zip(
                    examples,
                    saliency_maps(images, predict, side, scale, batch_multiple),
                    strict=True,
                ):
                    fileio.write_saliency(path(example), saliency)
    distributed.barrier("infer_detector")


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    """Saliency PNGs of images of `config.detector_infer.splits` that do not exist."""
    return artifacts.missing(
        artifacts.saliency_png_file(workdir, "infer_detector", split, image_id)
        for split in config.detector_infer.splits
        for image_id, _ in dataset.index(split)
    )


def deps(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return () if config.detector_infer.weights else ("train_detector",)


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.detector_infer` (and of the detector it runs: `config.detector`)."""
    del topology
    key = "detector_infer"
    splits = datasets.get_info(config.data.name).splits
    config_lib.check_splits(config, f"{key}.splits", splits)
    config_lib.check_file(config, f"{key}.weights", "a PoolNet weights file (.npz)")
