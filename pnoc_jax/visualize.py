"""Pictures for notebooks and reports: CAM overlays and image/GT/CAM grids (NumPy + OpenCV)."""

import os

import cv2
import numpy as np

from pnoc_jax.core import fileio, scores
from pnoc_jax.core.masks import IGNORE, PALETTE


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Index mask [H, W] -> RGB [H, W, 3] in the VOC palette (255 = ignore is light grey)."""
    rgb = PALETTE[mask]
    rgb[mask == IGNORE] = 224
    return rgb


def overlay_cam(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a [H, W] map in [0, 1] (jet colours) onto an RGB uint8 image."""
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return (alpha * heat[..., ::-1] + (1 - alpha) * image).astype(np.uint8)


def _max_map(directory: str, image_id: str, key: str, shape: tuple[int, int]) -> np.ndarray:
    """Max over classes of the [K, H, W] scores `key` of an image's score file (`core.scores`,
    either format) in `directory` (zeros when K = 0)."""
    maps = scores.read_image(directory, image_id, (key,))[key]
    return maps.max(axis=0) if len(maps) else np.zeros(shape, np.float32)


def _grid(columns: list[list[np.ndarray]], size: int) -> np.ndarray:
    """Stacks each column's tiles vertically (each resized to size x size), columns side by side."""
    resized = [
        np.concatenate(
            [cv2.resize(t, (size, size), interpolation=cv2.INTER_NEAREST) for t in tiles], axis=0
        )
        for tiles in columns
    ]
    return np.concatenate(resized, axis=1)


def cam_grid(examples: list[dict], cams_dir: str, size: int = 160) -> np.ndarray:
    """Rows image | ground truth | max-over-classes CAM overlay, one column per example.

    `examples` are dataset dicts (id, image, mask); CAMs (hr_cam) come from their score files
    in `cams_dir` (`<id>.npz`, or the reference's `<id>.npy`).
    """
    columns = []
    for ex in examples:
        cam = _max_map(cams_dir, ex["id"], "hr_cam", ex["mask"].shape)
        columns.append([ex["image"], colorize_mask(ex["mask"]), overlay_cam(ex["image"], cam)])
    return _grid(columns, size)


def pseudo_label_grid(
    examples: list[dict], cams_dir: str, rw_dir: str, pseudo_dir: str, size: int = 160
) -> np.ndarray:
    """Rows image | ground truth | CAM | random walk | pseudo-label, one column per example.

    Reads the score files in `cams_dir` (hr_cam) and `rw_dir` (rw) and `<pseudo_dir>/<id>.png`,
    the outputs of stages infer_cam and random_walk.
    """
    columns = []
    for ex in examples:
        shape = ex["mask"].shape
        cam = _max_map(cams_dir, ex["id"], "hr_cam", shape)
        rw = _max_map(rw_dir, ex["id"], "rw", shape)
        pseudo = fileio.read_png(os.path.join(pseudo_dir, f"{ex['id']}.png"))
        columns.append(
            [
                ex["image"],
                colorize_mask(ex["mask"]),
                overlay_cam(ex["image"], cam),
                overlay_cam(ex["image"], rw),
                colorize_mask(pseudo),
            ]
        )
    return _grid(columns, size)
