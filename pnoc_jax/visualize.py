"""Pictures for notebooks and reports: CAM overlays and image/GT/CAM grids (NumPy + OpenCV)."""

import os

import cv2
import numpy as np

from pnoc_jax.core import fileio

# VOC colour map: class c's colour comes from the bits of c (the standard VOC palette).
_PALETTE = np.zeros((256, 3), np.uint8)
for _c in range(256):
    _r = _g = _b = 0
    _v = _c
    for _j in range(8):
        _r |= ((_v >> 0) & 1) << (7 - _j)
        _g |= ((_v >> 1) & 1) << (7 - _j)
        _b |= ((_v >> 2) & 1) << (7 - _j)
        _v >>= 3
    _PALETTE[_c] = (_r, _g, _b)


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Index mask [H, W] -> RGB [H, W, 3] in the VOC palette (255 = ignore is light grey)."""
    rgb = _PALETTE[mask]
    rgb[mask == 255] = 224
    return rgb


def overlay_cam(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a [H, W] map in [0, 1] (jet colours) onto an RGB uint8 image."""
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return (alpha * heat[..., ::-1] + (1 - alpha) * image).astype(np.uint8)


def cam_grid(examples: list[dict], cams_dir: str, size: int = 160) -> np.ndarray:
    """Rows image | ground truth | max-over-classes CAM overlay, one column per example.

    `examples` are dataset dicts (id, image, mask); CAMs come from `<cams_dir>/<id>.npy`.
    """
    columns = []
    for ex in examples:
        record = fileio.read_npy_dict(os.path.join(cams_dir, f"{ex['id']}.npy"))
        cam = record["hr_cam"].max(axis=0) if len(record["hr_cam"]) else np.zeros(ex["mask"].shape)
        tiles = [ex["image"], colorize_mask(ex["mask"]), overlay_cam(ex["image"], cam)]
        tiles = [cv2.resize(t, (size, size), interpolation=cv2.INTER_NEAREST) for t in tiles]
        columns.append(np.concatenate(tiles, axis=0))
    return np.concatenate(columns, axis=1)
