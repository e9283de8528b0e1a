"""Atomic artifact writing: every file appears whole or not at all (temp file + rename).

Files get the permissions an ordinary `open` would give them, `0o666 & ~umask` (the umask is
read once per process); folders are made by `os.makedirs`, which applies the umask too.
"""

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np


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
    """Index PNG (labels, saliency) -> uint8[H, W], values kept."""
    out = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if out is None:
        raise FileNotFoundError(f"{path}: missing or unreadable PNG")
    return out if out.ndim == 2 else out[..., 0]


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8[H, W, 3] image or a single-channel uint8[H, W] index map."""
    array = np.ascontiguousarray(array, np.uint8)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover
        raise ValueError(f"PNG encoding of a {array.shape} array failed")
    return data.tobytes()


def write_png(path: str, label: np.ndarray) -> None:
    """Atomically writes uint8[H, W] as an index PNG."""
    write_bytes(path, encode_png(label))


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple | set):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
