"""Public dataset interface: metadata, TF-free TFDS preparation and random-access reading.

Datasets are TFDS builders written as ArrayRecord (`file_format="array_record"`) and read with
`builder.as_data_source`, without TensorFlow. Known names and their TFDS builders:

* ``"synthetic"`` -> ``pnoc_synthetic`` (embedded, generated; `builders/synthetic.py`)
* ``"voc2012"``   -> ``pnoc_voc2012`` (reads a VOCdevkit from ``manual_dir``; `builders/voc2012.py`)

On disk: ``<data_dir>/<tfds name>/<version>/``. Every element returned by `load_split` is
``{"id": str, "image": uint8[H, W, 3] RGB, "mask": uint8[H, W] (0 bg, 1..C, 255 ignore),
"labels": float32[C] multi-hot}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from pnoc_jax import config_lib
from pnoc_jax.data.builders import synthetic as _synthetic
from pnoc_jax.data.builders import voc2012 as _voc2012


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static metadata of a dataset.

    `class_names` lists the C foreground classes; class c has segmentation index c + 1 and
    label position c. Background is 0 and `ignore_index` marks void pixels in masks.
    """

    name: str
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        """C, the number of foreground classes (= label vector length)."""
        return len(self.class_names)


_INFOS = {
    "synthetic": DatasetInfo(
        name="synthetic",
        class_names=tuple(_synthetic.CLASS_NAMES),
        splits=tuple(_synthetic.SPLIT_SIZES),
    ),
    # `train_aug` exists only when the VOCdevkit holds SegmentationClassAug and a train_aug list.
    "voc2012": DatasetInfo(
        name="voc2012",
        class_names=tuple(_voc2012.CLASS_NAMES),
        splits=("train", "val", "train_aug"),
    ),
}
_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "synthetic": _synthetic.PnocSynthetic,
    "voc2012": _voc2012.PnocVoc2012,
}


def get_info(name: str) -> DatasetInfo:
    """Metadata of dataset `name` ("synthetic" | "voc2012"); ValueError for unknown names."""
    if name not in _INFOS:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {sorted(_INFOS)}.")
    return _INFOS[name]


def validate_data(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.data`: a known dataset, a usable crop size, an existing manual_dir."""
    del topology
    config_lib.check_choice(config, "data.name", tuple(_INFOS))
    config_lib.check_number(config, "data.image_size", low=16, integer=True)
    size = config.data.image_size
    config_lib.check(size % 16 == 0, "data.image_size", size, "a positive multiple of 16")
    manual = config.data.manual_dir
    config_lib.check(
        not manual or os.path.isdir(os.path.expanduser(manual)),
        "data.manual_dir",
        manual,
        "an existing folder with the raw dataset, or ''",
    )


def _make_builder(name: str, data_dir: str) -> tfds.core.GeneratorBasedBuilder:
    get_info(name)
    return _BUILDERS[name](data_dir=os.fspath(data_dir), file_format="array_record")


def _is_complete(builder: tfds.core.DatasetBuilder) -> bool:
    """True when TFDS marks the build finished AND every split's record files exist."""
    info_file = os.path.join(os.fspath(builder.data_path), "dataset_info.json")
    if not os.path.exists(info_file) or not builder.is_prepared():
        return False
    try:
        for split_info in builder.info.splits.values():
            if not split_info.num_examples:
                return False
            for path in split_info.filepaths:
                if not os.path.exists(os.fspath(path)):
                    return False
    except Exception:  # unreadable / inconsistent dataset_info.json
        return False
    return True


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str) -> Iterator[None]:
    """Inter-process lock so concurrent `prepare` calls on one host build only once."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, f".{name}.build.lock")
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(name: str, data_dir: str, manual_dir: str | None = None) -> None:
    """Build dataset `name` under `data_dir` unless a complete build is already there.

    Idempotent. TFDS writes into a temporary ``incomplete.*`` directory and renames it only on
    success, so a failed or interrupted build never looks finished; an existing but incomplete
    version directory is removed and rebuilt. `manual_dir` is required for "voc2012" (see
    `builders/voc2012.py` for the accepted layouts).
    """
    data_dir = os.path.abspath(os.fspath(data_dir))
    builder = _make_builder(name, data_dir)
    if _is_complete(builder):
        return
    with _build_lock(data_dir, name):
        builder = _make_builder(name, data_dir)  # another process may have finished meanwhile
        if _is_complete(builder):
            return
        if name == "voc2012" and manual_dir is None:
            raise ValueError(
                f"Dataset 'voc2012' is not built under {data_dir!r}; pass manual_dir= pointing at "
                "a folder containing VOCdevkit/VOC2012/ or at the VOC2012 folder itself."
            )
        if name == "voc2012":
            _voc2012.find_voc_root(manual_dir)  # clear FileNotFoundError before TFDS starts
        data_path = os.fspath(builder.data_path)
        if os.path.exists(data_path):
            shutil.rmtree(data_path)  # leftover of an inconsistent build
            builder = _make_builder(name, data_dir)
        config = tfds.download.DownloadConfig(
            manual_dir=os.path.abspath(os.fspath(manual_dir)) if manual_dir else None
        )
        builder.download_and_prepare(download_config=config, file_format="array_record")
    if not _is_complete(_make_builder(name, data_dir)):  # pragma: no cover
        raise RuntimeError(f"Building {name!r} under {data_dir!r} did not complete.")


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8[H, W, 3] RGB (grey or RGBA inputs are converted)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("Could not decode image bytes.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes) -> np.ndarray:
    """Single-channel index PNG bytes -> uint8[H, W] (values kept, never colour-mapped)."""
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2:
        raise ValueError("Mask bytes are not a single-channel PNG.")
    return mask.astype(np.uint8, copy=False)


class DecodedSource(Sequence):
    """Random-access view over a TFDS data source returning decoded example dicts.

    Picklable (for grain worker processes). Elements: see module docstring.
    """

    def __init__(self, source: Sequence[Any], num_classes: int):
        self._source = source
        self._num_classes = num_classes

    def __len__(self) -> int:
        return len(self._source)

    def _convert(self, raw: dict[str, Any]) -> dict[str, Any]:
        ex_id = raw["id"]
        labels = np.asarray(raw["labels"], np.float32).reshape(self._num_classes)
        return {
            "id": ex_id.decode("utf-8") if isinstance(ex_id, bytes) else str(ex_id),
            "image": decode_image(raw["image"]),
            "mask": decode_mask(raw["mask"]),
            "labels": labels,
        }

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a split of {n} examples")
        return self._convert(self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def ids_and_labels(self) -> list[tuple[str, np.ndarray]]:
        """(id, labels [C]) of every example, without decoding images (fast: a split's index)."""
        out = []
        for index in range(len(self)):
            raw = self._source[index]
            ex_id = raw["id"]
            ex_id = ex_id.decode("utf-8") if isinstance(ex_id, bytes) else str(ex_id)
            out.append((ex_id, np.asarray(raw["labels"], np.float32).reshape(self._num_classes)))
        return out

    def __repr__(self) -> str:
        return f"DecodedSource(len={len(self)}, source={self._source!r})"


def load_split(
    name: str,
    split: str,
    data_dir: str,
    manual_dir: str | None = None,
    shard_by_process: bool = False,
) -> Sequence[dict]:
    """Random-access decoded examples of `name`/`split`, building the dataset first if needed.

    With `shard_by_process=True` the split is `tfds.split_for_jax_process(split)`, i.e. each JAX
    process gets its own contiguous part. Raises ValueError for a split the build does not have.
    """
    info = get_info(name)
    prepare(name, data_dir, manual_dir)
    builder = _make_builder(name, os.path.abspath(os.fspath(data_dir)))
    available = tuple(builder.info.splits.keys())
    if split not in available:
        raise ValueError(
            f"Dataset {name!r} has no split {split!r}; available splits: {sorted(available)}."
        )
    tfds_split = tfds.split_for_jax_process(split) if shard_by_process else split
    source = builder.as_data_source(
        split=tfds_split,
        decoders={"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()},
    )
    return DecodedSource(source, info.num_classes)
