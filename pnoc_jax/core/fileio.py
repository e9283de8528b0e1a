"""Atomic artifact writing (temp file + rename: a file appears whole or not at all) and PNGs.

Files get the permissions an ordinary `open` would give them, `0o666 & ~umask` (the umask is
read once per process); folders are made by `os.makedirs`, which applies the umask too.
Label PNGs (pseudo-labels, affinity labels) are written as palette PNGs with the VOC palette, so
they show in colour in an image viewer; any palette or greyscale PNG reads back as its indices.
"""

import contextlib
import functools
import io
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pnoc_jax.core.errors import UserError
from pnoc_jax.core.masks import PALETTE


@functools.cache
def umask() -> int:
    """This process's umask, read once: from /proc/self/status, else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new file, as `open` makes it: 0o666 less the umask."""
    return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds.

    The file gets `file_mode()` (mkstemp alone would make it 0o600, unreadable to the group).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_png(path: str) -> np.ndarray:
    """Index or greyscale PNG (labels, saliency) -> uint8[H, W], values kept.

    Palette ("P") PNGs give their indices, not their colours (PIL; OpenCV would expand them to
    colour). A colour PNG is accepted only when its channels are equal (a greyscale map saved
    as RGB).
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "1":
                image = image.convert("L")
            array = np.array(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: PNG missing") from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable PNG: {e}") from e
    if mode in ("P", "L", "1"):
        return array.astype(np.uint8, copy=False)
    if mode in ("RGB", "RGBA") and np.all(array[..., 1:3] == array[..., :1]):
        return np.ascontiguousarray(array[..., 0], np.uint8)
    raise ValueError(
        f"{path}: expected a palette or greyscale PNG of 8-bit indices, got PIL mode {mode!r}"
        + (" with differing colour channels" if mode in ("RGB", "RGBA") else "")
    )


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8[H, W, 3] image or a single-channel (greyscale) uint8[H, W] map.

    The TFDS builders store their masks this way (TFDS would decode palette PNGs as colour).
    """
    array = np.ascontiguousarray(array, np.uint8)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover
        raise ValueError(f"PNG encoding of a {array.shape} array failed")
    return data.tobytes()


def encode_label_png(label: np.ndarray) -> bytes:
    """Palette PNG bytes of a uint8[H, W] label map: indices unchanged, VOC colours."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"a label PNG needs a uint8[H, W] map, got {label.dtype}{label.shape}")
    height, width = label.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(label).tobytes())
    image.putpalette(PALETTE.tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_png(path: str, label: np.ndarray) -> None:
    """Atomically writes a uint8[H, W] label map as a palette PNG (VOC colours); see `read_png`."""
    write_bytes(path, encode_label_png(label))


def read_json(path: str) -> Any:
    """The JSON in `path`; a UserError naming the file if it is not valid JSON."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path} is not valid JSON ({e}); restore it, or delete it to redo what wrote it"
            ) from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple | set):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------------------- saliency (issue 10)
class SaliencyMapError(UserError, ValueError):
    """A saliency PNG that is missing, unreadable or of another size than its image."""


def write_saliency(path: str, saliency: np.ndarray) -> None:
    """Atomically writes a uint8[H, W] saliency map (255 = salient) as a greyscale PNG."""
    saliency = np.asarray(saliency)
    if saliency.ndim != 2 or saliency.dtype != np.uint8:
        raise ValueError(
            f"a saliency PNG needs a uint8[H, W] map, got {saliency.dtype}{saliency.shape}"
        )
    write_bytes(path, encode_png(saliency))


def read_saliency(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A saliency PNG as float64[H, W] in [0, 1] (value / 255), checked against the image size.

    float64 as the reference reads them, so a value equal to a threshold (51 / 255 = 0.2) ties
    with it exactly.

    Errors (`SaliencyMapError`) name the file: missing, not a greyscale PNG, or not H x W.
    """
    try:
        saliency = read_png(path)
    except FileNotFoundError:
        raise SaliencyMapError(f"{path}: saliency map missing") from None
    except ValueError as e:
        raise SaliencyMapError(f"saliency map {e}") from None
    if saliency.shape != tuple(shape):
        raise SaliencyMapError(
            f"{path}: saliency map of size {saliency.shape[0]}x{saliency.shape[1]} for an image "
            f"of size {shape[0]}x{shape[1]}; saliency maps must have their image's size"
        )
    return saliency.astype(np.float64) / 255.0
