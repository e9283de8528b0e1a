"""Per-image score files (CAMs, random-walk scores): the one module that reads and writes them.

Our format is an `.npz` of plain arrays, read with `allow_pickle=False`:

* `keys`: int64 [K + 1] = [0, c1 + 1, c2 + 1, ...], background first, then the image's classes
  (1-based segmentation indices, distinct);
* score arrays, float32 [K, h, w], finite: `cam` (stride 4) and `hr_cam` (full resolution) in a
  CAM file, `rw` (full resolution) in a random-walk file.

The reference code's `<id>.npy` (a pickled dict with the same entries) is still read, by an
unpickler that builds only numpy arrays and dtypes (and the lists, tuples, dicts and numbers
pickle builds by itself) and refuses every other global, so a crafted file cannot run code.
Both formats are checked after loading: a wrong shape, dtype, key or a NaN is an error naming
the file.
"""

import io
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pnoc_jax.core import artifacts, fileio
from pnoc_jax.core.errors import UserError

Scores = dict[str, np.ndarray]

CAM_FIELDS = ("cam", "hr_cam")
RW_FIELDS = ("rw",)

_CONVERT = (
    "A reference CAM file holds `cam` as a torch tensor: to convert files you trust, run "
    "where torch is installed `d = np.load(f, allow_pickle=True).item(); "
    "np.savez(f[:-4] + '.npz', **{k: np.asarray(v) for k, v in d.items()})` "
    "(the .npz beside it is then read instead)."
)


class RefusedPickleError(UserError, ValueError):
    """A pickled score file names a global other than numpy's array reconstruction."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as pickle protocols 0-2 use it for bytes, and only that."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for every global a pickled dict of numpy arrays needs.

    numpy 1.x pickles name `numpy.core.*`, numpy 2.x `numpy._core.*`; both map to this numpy's
    functions, taken from its own reductions rather than from private imports. Pickle protocols
    0-2 spell bytes as `_codecs.encode(text, "latin1")`.
    """
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float32(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and Python containers/numbers; refuses every other global."""

    def __init__(self, file: io.BufferedIOBase, path: str):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickleError(
                f"{self._path}: refused to unpickle the global '{module}.{name}': a score .npy "
                "may hold only numpy arrays and Python lists, tuples, dicts and numbers of them "
                f"(anything else could run code when loaded). {_CONVERT}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickleError(f"{self._path}: refused a persistent id in the pickle ({pid!r})")


def _missing(path: str) -> str:
    return f"{path}: score file missing; run the stage that writes it"


def _read_official(path: str) -> dict:
    """The reference's `.npy`: a 0-d object array holding a dict, unpickled restrictively."""
    if not fileio.exists(path):
        raise FileNotFoundError(_missing(path))
    with fileio.open_read(path) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as e:
            raise ValueError(f"{path}: not a readable .npy file: {e}") from e
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(
                f"{path}: expected the reference's pickled dict (a 0-d object array), "
                f"got a {dtype} array of shape {shape}"
            )
        try:
            array = _ArrayUnpickler(f, path).load()
        except RefusedPickleError:
            raise
        except Exception as e:
            raise ValueError(f"{path}: unreadable pickled dict: {e}") from e
    record = array.item() if isinstance(array, np.ndarray) and array.shape == () else array
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a pickled dict of arrays, got {type(record).__name__}")
    return record


def _read_npz(path: str, names: Sequence[str]) -> dict:
    try:
        return fileio.read_npz(path, names)
    except FileNotFoundError:
        raise FileNotFoundError(_missing(path)) from None
    except fileio.UnreadableNpz as e:
        raise ValueError(f"{path}: not a readable score file (.npz of arrays): {e}") from e


def check(path: str, record: Mapping[str, Any], fields: Sequence[str]) -> Scores:
    """`keys` and the score arrays `fields` of `record`, validated; errors name `path`.

    keys: 1-D integers, 0 first, then distinct indices >= 1 (returned as int64). Each field:
    a float array [K, h, w] with K = len(keys) - 1 and every value finite (returned as float32).
    """
    missing = [n for n in ("keys", *fields) if n not in record]
    if missing:
        raise ValueError(f"{path}: no {missing} entry; it has {sorted(map(str, record))}")
    keys = record["keys"]
    keys = keys if isinstance(keys, np.ndarray) else np.asarray(keys)
    if not (
        keys.ndim == 1
        and len(keys) >= 1
        and np.issubdtype(keys.dtype, np.integer)
        and keys[0] == 0
        and np.all(keys[1:] >= 1)
        and len(np.unique(keys)) == len(keys)
    ):
        raise ValueError(
            f"{path}: 'keys' must be 1-D integers [0, c1 + 1, c2 + 1, ...] (background 0 first, "
            f"then distinct class indices >= 1), got {keys.dtype} {keys.tolist()!r}"
        )
    out: Scores = {"keys": keys.astype(np.int64)}
    k = len(keys) - 1
    for name in fields:
        value = record[name]
        if not isinstance(value, np.ndarray):
            raise ValueError(
                f"{path}: '{name}' must be a numpy array, got {type(value).__module__}."
                f"{type(value).__name__}"
            )
        if not (np.issubdtype(value.dtype, np.floating) and value.ndim == 3 and len(value) == k):
            raise ValueError(
                f"{path}: '{name}' must be a float array [K, h, w] with K = len(keys) - 1 = {k}, "
                f"got {value.dtype} {value.shape}"
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{path}: '{name}' has {np.sum(~np.isfinite(value))} NaN/Inf values")
        out[name] = value.astype(np.float32, copy=False)
    return out


class ScoreFileError(UserError, ValueError):
    """A score file that exists but cannot be used (damaged, truncated, not finite); the
    message names it and says what to do."""


def read(path: str, fields: Sequence[str]) -> Scores:
    """`keys` and the score arrays `fields` of one file: our `.npz` or the reference's `.npy`.
    A file that exists but cannot be used is a `ScoreFileError` (one line in `main`)."""
    fields = tuple(fields)
    try:
        if path.endswith(".npz"):
            record = _read_npz(path, ("keys", *fields))
        elif path.endswith(".npy"):
            record = _read_official(path)
        else:
            raise ValueError(f"{path}: a score file is an .npz (ours) or an .npy (the reference's)")
        return check(path, record, fields)
    except RefusedPickleError:
        raise
    except ValueError as e:
        raise ScoreFileError(f"{e}; delete it and rerun the stage that wrote it") from None


def write(path: str, keys: np.ndarray, **arrays: np.ndarray) -> None:
    """Atomically writes `keys` and the score arrays (e.g. cam=, hr_cam=) as an `.npz`, checked."""
    if not path.endswith(".npz"):
        raise ValueError(f"{path}: score files are written as .npz")
    record = check(path, {"keys": keys, **arrays}, tuple(arrays))
    fileio.write_npz(path, record)


def locate(directory: str, image_id: str) -> str:
    """The score file of `image_id` in `directory`: our `.npz`, else the reference's `.npy` if
    only that exists, else the `.npz` path (whose absence the reader reports)."""
    ours = artifacts.score_file(directory, image_id)
    if not fileio.exists(ours):
        official = artifacts.official_score_file(directory, image_id)
        if fileio.exists(official):
            return official
    return ours


def exists(directory: str, image_id: str) -> bool:
    """Whether `image_id` has a score file (either format) in `directory`."""
    return fileio.exists(locate(directory, image_id))


def read_image(directory: str, image_id: str, fields: Sequence[str]) -> Scores:
    """`read` of the score file `locate` finds for `image_id` in `directory`."""
    return read(locate(directory, image_id), fields)
