"""Every filesystem operation on workdir and data_dir paths: local folders and object stores.

Stage code keeps plain `str` paths (built by `core.artifacts`) and does its I/O here. A path
with a URI scheme (`gs://bucket/run`, any `<scheme>://` `etils.epath` knows) goes through
`etils.epath` (fsspec for gs://); any other path is local and goes through `os`, with the
behaviour below unchanged. `os.path.join`/`basename`/`dirname` are plain string operations and
are right for both kinds; anything that touches storage (or `abspath`, which mangles a URI) is
a function of this module. `tests/test_workdir_io.py` fails on a direct call elsewhere.

Atomicity ("a file appears whole or not at all"). Local: written to a temporary file beside the
target, renamed onto it (`os.replace`). Object store: the bytes are collected in memory, written
to a temporary object beside the target and renamed onto it (GCS: server-side copy + delete; an
object is visible only once complete), so a failure leaves no object at the target name. A stage
counts as finished only when its `DONE.json` exists; it is written last (`pipeline.run_stage`)
and, when a folder is moved or removed on an object store (not atomic there), copied last and
deleted first (`move_tree`, `copy_tree`, `rmtree` with `marker=`), so a folder holding
`DONE.json` is always whole.

Appends (`metrics.jsonl`, TensorBoard event files): local files are appended to; objects cannot
be, so the whole object is rewritten atomically with the new bytes at its end.

Locks (`lock`): local, `fcntl.flock` (the OS releases it when the holder dies); object stores
have no lock, so an owner object holds the holder's description: advisory, see `lock`.

Files get the permissions an ordinary `open` would give them, `0o666 & ~umask` (the umask is
read once per process); folders are made by `os.makedirs`, which applies the umask too.
Label PNGs (pseudo-labels, affinity labels) are written as palette PNGs with the VOC palette, so
they show in colour in an image viewer; any palette or greyscale PNG reads back as its indices.
"""

import contextlib
import errno
import fcntl
import functools
import glob as glob_lib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from typing import IO, Any

import cv2
import numpy as np
from etils import epath
from PIL import Image

from pnoc_jax.core.errors import UserError
from pnoc_jax.core.masks import PALETTE

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str) -> bool:
    """Whether `path` is a URI (`gs://...`): handled by `etils.epath`, not by `os`."""
    return bool(_URI.match(os.fspath(path)))


def _epath(path: str) -> epath.Path:
    return epath.Path(os.fspath(path))


def expand(path: str) -> str:
    """A user-given path made absolute (`~` expanded); a URI unchanged; "" (unset) stays ""."""
    path = os.fspath(path)
    if not path or is_remote(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


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


# ---------------------------------------------------------------------------- queries and folders
def exists(path: str) -> bool:
    return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    """Local: a folder. Object store: a prefix with at least one object under it."""
    return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    return exists(path) and not isdir(path) if is_remote(path) else os.path.isfile(path)


def makedirs(path: str) -> None:
    """`os.makedirs(path, exist_ok=True)`; on an object store folders are implicit (a no-op
    there, or a placeholder, as the backend does it)."""
    if is_remote(path):
        _epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """The names in folder `path`, sorted; [] when it does not exist."""
    if not isdir(path):
        return []
    if is_remote(path):
        return sorted(p.name for p in _epath(path).iterdir())
    return sorted(os.listdir(path))


def remove(path: str) -> None:
    """Removes the file `path` if it exists."""
    if is_remote(path):
        if exists(path):
            _epath(path).unlink()
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _files(path: str) -> list[str]:
    """Every file under folder `path` (relative, "/"-separated), sorted."""
    if not is_remote(path):
        walk, root = os.walk(path), path
    else:  # backends name folders with or without the scheme and a leading "/"
        walk, root = _epath(path).walk(), _bare(path)
    out = []
    for parent, _, names in walk:
        rel = os.path.relpath(os.fspath(parent), path) if not is_remote(path) else None
        rel = _bare(os.fspath(parent))[len(root) :].strip("/") if rel is None else rel
        out += [f"{rel}/{name}" if rel not in ("", ".") else name for name in names]
    return sorted(out)


def realpath(path: str) -> str:
    """`os.path.realpath` (links resolved); a URI unchanged."""
    return path if is_remote(path) else os.path.realpath(path)


def glob(pattern: str) -> list[str]:
    """The paths matching a shell pattern (`*`, `?`, `[...]`), sorted; on an object store the
    pattern may be in the last component only."""
    if is_remote(pattern):
        folder, name = os.path.split(pattern)
        return sorted(os.fspath(p) for p in _epath(folder).glob(name))
    return sorted(glob_lib.glob(pattern))


def remove_link(path: str) -> str | None:
    """Removes `path` if it is a symbolic link (never what it points to); returns its target,
    or None when `path` is no link (an object store has none)."""
    if is_remote(path) or not os.path.islink(path):
        return None
    target = os.readlink(path)
    os.remove(path)
    return target


def remove_temporaries(path: str) -> int:
    """Removes the temporary files of interrupted atomic writes (`.<name>.<random>.tmp`)
    under folder `path` (local; an object store has none that outlive a write); returns how
    many. Only while nothing writes there (the runner holds the workdir lock)."""
    if is_remote(path):
        return 0
    removed = 0
    for parent, _, names in os.walk(path):
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(parent, name))
                    removed += 1
    return removed


def disk_use(path: str) -> int:
    """Bytes of the files under folder `path` (links not followed: a symlinked folder counts 0)."""
    if is_remote(path):
        return sum(_epath(os.path.join(path, name)).stat().length for name in _files(path))
    total = 0
    for parent, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def human_size(size: int) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _bare(uri: str) -> str:
    """A URI without its scheme and outer slashes: "gs://b/x/" -> "b/x"."""
    return uri.split("://", 1)[-1].strip("/")


def _marker_last(names: list[str], marker: str | None) -> list[str]:
    return sorted(names, key=lambda n: (n == marker, n))


def rmtree(path: str, marker: str | None = None) -> None:
    """Removes the folder `path` and everything in it, if it exists. On an object store (where
    it is one delete per object) the file `<path>/<marker>` goes first, so an interrupted
    removal never leaves a folder that looks finished."""
    if not is_remote(path):
        if os.path.lexists(path):
            shutil.rmtree(path)
        return
    if marker is not None:
        remove(os.path.join(path, marker))
    if isdir(path):
        _epath(path).rmtree()


def copy_tree(src: str, dst: str, marker: str | None = None) -> None:
    """Copies folder `src` to `dst` (which must not exist); `<src>/<marker>` is copied last, so
    a copy holding the marker is whole."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(marker or "\0"))
        if marker and os.path.exists(os.path.join(src, marker)):
            write_bytes(os.path.join(dst, marker), read_bytes(os.path.join(src, marker)))
        return
    for name in _marker_last(_files(src), marker):
        write_bytes(os.path.join(dst, name), read_bytes(os.path.join(src, name)))


def move_tree(src: str, dst: str, marker: str | None = None) -> None:
    """Moves folder `src` to `dst` (which must not exist).

    Local: one atomic `os.rename`. Object store: a copy (`<marker>` last) then a removal of
    `src` (`<marker>` first): interrupted, it leaves `dst` without the marker or `src`
    without it, never a folder with the marker but not all of its files.
    """
    if not is_remote(src) and not is_remote(dst):
        os.rename(src, dst)
        return
    if exists(dst):
        raise FileExistsError(f"{dst} exists; cannot move {src} there")
    copy_tree(src, dst, marker)
    rmtree(src, marker)


def link_tree(target: str, link: str) -> None:
    """Makes `link` show the folder `target`: a symlink locally (it follows `target`); on an
    object store, which has no links, a copy with `DONE.json` last (made once: an existing
    `link` is kept)."""
    if exists(link) or (not is_remote(link) and os.path.lexists(link)):
        return
    if is_remote(link) or is_remote(target):
        copy_tree(target, link, marker="DONE.json")
    else:
        os.symlink(os.path.abspath(target), link)


# ---------------------------------------------------------------------------- reading
@contextlib.contextmanager
def open_read(path: str) -> Iterator[IO[bytes]]:
    """A seekable binary file of `path` (an object is read whole into memory first);
    FileNotFoundError if it is missing."""
    if not is_remote(path):
        with open(path, "rb") as f:
            yield f
        return
    yield io.BytesIO(read_bytes(path))


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        p = _epath(path)
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file", path)
        return p.read_bytes()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


class UnreadableNpz(ValueError):
    """`read_npz` found a file that is not an `.npz` of arrays (the message is the reason)."""


def read_npz(path: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays `names` (default: all) of the `.npz` at `path`, without pickle.

    FileNotFoundError when missing; UnreadableNpz when not an `.npz` of arrays; ValueError
    "<path>: no array [...]; it has [...]" when one of `names` is not in it.
    """
    with open_read(path) as f:
        try:
            archive = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UnreadableNpz(str(e)) from e
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: expected an .npz archive of arrays, got a single array")
        with archive:
            names = archive.files if names is None else list(names)
            missing = [n for n in names if n not in archive.files]
            if missing:
                raise ValueError(f"{path}: no array {missing}; it has {sorted(archive.files)}")
            try:
                return {n: archive[n] for n in names}
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                raise ValueError(f"{path}: unreadable array in the .npz: {e}") from e


# ---------------------------------------------------------------------------- atomic writing
@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """An OSError raised without a file name (by `write` or `close` of an open file, e.g. a
    full disk) is raised again naming `path`, so that its one-line report says which file."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, path) from e
        raise


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Local paths only: yields a temporary path beside `path`; renames it onto `path` only if
    the block succeeds. The file gets `file_mode()` (mkstemp alone would make it 0o600,
    unreadable to the group). Stage code uses `atomic_write`, which also handles URIs."""
    if is_remote(path):
        raise ValueError(f"atomic_path is for local paths; use atomic_write for {path}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    try:
        with _naming(path):
            yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[IO[bytes]]:
    """Yields a binary file; what the block wrote appears at `path` whole, and only if the
    block succeeds (an exception leaves `path` as it was)."""
    if not is_remote(path):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            yield f
        return
    buffer = io.BytesIO()
    yield buffer
    _publish(path, buffer.getvalue())


def _publish(path: str, data: bytes) -> None:
    """Object store: `data` to a temporary object beside `path`, then renamed onto it."""
    target = _epath(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        tmp.write_bytes(data)
        if target.exists():
            target.unlink()
        tmp.rename(target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Atomically writes `arrays` as an uncompressed `.npz` (`np.savez`)."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def append_bytes(path: str, data: bytes) -> None:
    """Adds `data` at the end of file `path` (made if missing). Local: an append, on disk when
    this returns. Object store: the object rewritten whole (`atomic_write`) with `data` at its
    end; a single writer is assumed (the chief)."""
    if not is_remote(path):
        with _naming(path), open(path, "ab") as f:
            f.write(data)
        return
    old = read_bytes(path) if exists(path) else b""
    write_bytes(path, old + data)


def append_text(path: str, text: str) -> None:
    append_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------- locks
class LockHeld(Exception):
    """`lock(..., blocking=False)` found the lock held; the message says by whom."""


def holder_description() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


@contextlib.contextmanager
def lock(path: str, holder: str, blocking: bool = False) -> Iterator[None]:
    """Holds the lock file `path` for the block, writing `holder` (a line starting with
    `holder_description()`) into it; LockHeld(holder found) when `blocking` is False and it is
    held, else waits.

    Local: `fcntl.flock`, which the OS releases when the holder dies, even on SIGKILL.

    Object store (advisory; no atomic create-if-absent through epath): the lock is an owner
    object. A run writes its line with a unique token, reads it back and holds the lock if the
    token is its own; the object is removed at the end. An object left by a dead process on
    this host (same host, pid gone) is taken over; one left by a run killed on another machine
    stays until someone deletes it (the LockHeld message says which object). Two runs starting
    within the same second on different machines may both get it: a guard, not a mutex.
    """
    if is_remote(path):
        with _object_lock(path, holder, blocking):
            yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            raise LockHeld(f.read().strip() or "another process") from None
        f.seek(0)
        f.truncate()
        f.write(holder.rstrip("\n") + "\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def _dead_here(line: str) -> bool:
    """Whether a lock line names a process of this host that is gone."""
    match = re.match(r"pid (\d+) on (\S+)", line)
    if not match or match.group(2) != socket.gethostname():
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def _object_lock(path: str, holder: str, blocking: bool) -> Iterator[None]:
    token = f"[lock {uuid.uuid4().hex}]"
    line = f"{holder.rstrip()} {token}\n"
    while True:
        found = read_text(path).strip() if exists(path) else ""
        if not found or _dead_here(found):
            write_text(path, line)
            if token in (read_text(path) if exists(path) else ""):
                break
            found = read_text(path).strip() if exists(path) else "another process"
        if not blocking:
            raise LockHeld(
                f"{found} (an advisory lock object on an object store: if that run is gone, "
                f"delete {path})"
            )
        time.sleep(5.0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if token in read_text(path):
                remove(path)


def read_png(path: str) -> np.ndarray:
    """Index or greyscale PNG (labels, saliency) -> uint8[H, W], values kept.

    Palette ("P") PNGs give their indices, not their colours (PIL; OpenCV would expand them to
    colour). A colour PNG is accepted only when its channels are equal (a greyscale map saved
    as RGB).
    """
    try:
        with open_read(path) as f, Image.open(f) as image:
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
    text = read_text(path)
    try:
        return json.loads(text)
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


# ---------------------------------------------------------------------------- saliency
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
