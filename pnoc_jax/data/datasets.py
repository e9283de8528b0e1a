"""Public dataset interface: metadata, TF-free TFDS preparation and random-access reading.

Datasets are TFDS builders written as ArrayRecord (`file_format="array_record"`) and read with
`builder.as_data_source`, without TensorFlow. Known names and their TFDS builders:

* ``"synthetic"`` -> ``pnoc_synthetic`` (embedded, generated; `builders/synthetic.py`)
* ``"voc2012"``   -> ``pnoc_voc2012`` (reads a VOCdevkit from ``manual_dir``; `builders/voc2012.py`)
* ``"coco2014"``  -> ``pnoc_coco2014`` (reads COCO 2014 from ``manual_dir``; `builders/coco2014.py`)

On disk: a generated dataset lives in ``<data_dir>/<tfds name>/<version>/``. A dataset read from
``manual_dir`` is bound to its source: each distinct source (a fingerprint of what the build
reads, computed by the builder module's `plan_source`: for VOC the resolved VOC2012 folder, its
split lists and the sizes of the listed files; for COCO the annotation files' contents and the
image folders' file sizes) is built into its own
``<data_dir>/<name>-<fingerprint>/<tfds name>/<version>/`` with a ``source.json`` record, so
another or a repaired copy never reuses a build of other files. `identity` names the data
independently of ``data_dir``, for stage fingerprints.

``data_dir`` is handled through `core.fileio` (TFDS through `etils.epath`), so it may be a
``gs://`` URI; ``manual_dir`` (the user's raw copy, read by the builder modules) is local.

Every element returned by `load_split` is ``{"id": str, "image": uint8[H, W, 3] RGB,
"mask": uint8[H, W] (0 bg, 1..C, 255 ignore), "labels": float32[C] multi-hot}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.core import fileio
from pnoc_jax.core.errors import UserError, first_line
from pnoc_jax.data.builders import coco2014 as _coco2014
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
    # Natural images: training from random weights is a mistake unless asked for
    # (`config.model.allow_random_init`); the synthetic data have no ImageNet-like weights.
    needs_pretrained: bool = True
    # Images per split of the full dataset (public figures), for planning a run without it.
    split_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    # (height, width) of a typical image: the example `pnoc_jax.plan` runs the transforms on.
    typical_size: tuple[int, int] = (375, 500)

    @property
    def num_classes(self) -> int:
        """C, the number of foreground classes (= label vector length)."""
        return len(self.class_names)


_INFOS = {
    "synthetic": DatasetInfo(
        name="synthetic",
        class_names=tuple(_synthetic.CLASS_NAMES),
        splits=tuple(_synthetic.SPLIT_SIZES),
        needs_pretrained=False,
        split_sizes=dict(_synthetic.SPLIT_SIZES),
        typical_size=(_synthetic.MAX_SIDE, _synthetic.MAX_SIDE),
    ),
    # `train_aug` exists only when the VOCdevkit holds SegmentationClassAug and a train_aug list.
    "voc2012": DatasetInfo(
        name="voc2012",
        class_names=tuple(_voc2012.CLASS_NAMES),
        splits=("train", "val", "train_aug"),
        split_sizes={"train": 1464, "val": 1449, "train_aug": 10582},
    ),
    # `train` = train2014 (82,783 images), `val` = val2014 (40,504), where the download has them.
    "coco2014": DatasetInfo(
        name="coco2014",
        class_names=tuple(_coco2014.CLASS_NAMES),
        splits=("train", "val"),
        split_sizes={"train": 82783, "val": 40504},
        typical_size=(480, 640),
    ),
}
_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "synthetic": _synthetic.PnocSynthetic,
    "voc2012": _voc2012.PnocVoc2012,
    "coco2014": _coco2014.PnocCoco2014,
}


def get_info(name: str) -> DatasetInfo:
    """Metadata of dataset `name` ("synthetic" | "voc2012" | "coco2014"); ValueError for unknown
    names."""
    if name not in _INFOS:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {sorted(_INFOS)}.")
    return _INFOS[name]


def validate_data(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.data`: a known dataset, a usable crop size, an existing manual_dir;
    for a manual-source dataset a manual_dir in its layout (VOC2012 folder, COCO folder), or
    with none, exactly one build under data_dir (cheap: no file of the source is read). Where
    the data lives is not checked when the run reads none (`topology.reads_data`)."""
    config_lib.check_choice(config, "data.name", tuple(_INFOS))
    config_lib.check_number(config, "data.image_size", low=16, integer=True)
    size = config.data.image_size
    config_lib.check(size % 16 == 0, "data.image_size", size, "a positive multiple of 16")
    if not topology.reads_data:
        return
    manual = config.data.manual_dir
    config_lib.check(
        not manual or fileio.isdir(_expand(manual)),
        "data.manual_dir",
        manual,
        "an existing folder with the raw dataset, or ''",
    )
    if config.data.name not in _MANUAL:
        return
    try:
        if manual:
            _SOURCES[config.data.name].find_root(_expand(manual))
        else:
            find_build(config.data.name, config.data.data_dir)
    except (FileNotFoundError, ValueError) as e:
        config_lib.check(False, "data.manual_dir", manual, f"the raw dataset's folder. {e}")


def _make_builder(name: str, tfds_dir: str) -> tfds.core.GeneratorBasedBuilder:
    get_info(name)
    return _BUILDERS[name](data_dir=os.fspath(tfds_dir), file_format="array_record")


def _is_complete(builder: tfds.core.DatasetBuilder) -> bool:
    """True when TFDS marks the build finished AND every split's record files exist."""
    info_file = os.path.join(os.fspath(builder.data_path), "dataset_info.json")
    if not fileio.exists(info_file) or not builder.is_prepared():
        return False
    try:
        for split_info in builder.info.splits.values():
            if not split_info.num_examples:
                return False
            for path in split_info.filepaths:
                if not fileio.exists(os.fspath(path)):
                    return False
    except Exception:  # unreadable / inconsistent dataset_info.json
        return False
    return True


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str) -> Iterator[None]:
    """Inter-process lock so concurrent `prepare` calls build only once (on one host; on an
    object store an advisory owner object, see `fileio.lock`)."""
    fileio.makedirs(data_dir)
    path = os.path.join(data_dir, f".{name}.build.lock")
    with fileio.lock(path, f"{fileio.holder_description()} building {name}", blocking=True):
        yield


# ------------------------------------------------------------------ builds bound to a source

# Datasets read from a user's copy (`manual_dir`), by the builder module that knows its layout:
# `find_root(manual_dir)`, `plan_source(manual_dir)` (a plan with `fingerprint()` and `record()`)
# and `MANUAL_DIR_HINT`. Each distinct source is built into its own TFDS data_dir,
# `<data_dir>/<name>-<source fingerprint>/`, which records it in SOURCE_FILE.
_SOURCES = {"voc2012": _voc2012, "coco2014": _coco2014}
_MANUAL = tuple(_SOURCES)
SOURCE_FILE = "source.json"


def _version(name: str) -> str:
    return str(_BUILDERS[name].VERSION)


def _expand(path: str | os.PathLike) -> str:
    return fileio.expand(os.fspath(path))


def source_fingerprint(name: str, manual_dir: str) -> str:
    """16 hex digits identifying the raw data of `name` at `manual_dir`, computed afresh.

    For voc2012: the resolved VOC2012 folder, the contents of its split lists, where its labels
    come from and the size of every listed image, mask and annotation (os.stat only, no
    decoding; `builders/voc2012.SourcePlan`). For coco2014: the resolved folder, the SHA-256 of
    each annotation file and the size of every image file (`builders/coco2014.SourcePlan`).
    Independent of `data_dir`. Raises a `SourceError` naming what is missing.
    """
    if name not in _MANUAL:
        raise ValueError(f"Dataset {name!r} is generated; it has no manual source.")
    with _source_errors(name, manual_dir):
        return _SOURCES[name].plan_source(_expand(manual_dir)).fingerprint()


@dataclasses.dataclass(frozen=True)
class Build:
    """A finished build of a manual-source dataset: its TFDS data_dir and what it came from."""

    path: str  # <data_dir>/<name>-<source>; TFDS files under <path>/<tfds name>/<version>/
    source: str  # the source fingerprint
    record: dict  # the SOURCE_FILE contents (name, version, source, manual_dir, root, splits)

    def describe(self) -> str:
        """One line for listings: the folder, the source folder it came from, and when."""
        root, built = self.record.get("root", "?"), self.record.get("built", "?")
        return f"{self.path} (from {root}, built {built})"


def build_path(name: str, data_dir: str, source: str) -> str:
    """The TFDS data_dir of `name` built from the source with fingerprint `source`."""
    return os.path.join(_expand(data_dir), f"{name}-{source}")


def _finished(name: str, path: str, source: str) -> Build | None:
    """The build at `path` if TFDS finished it and it records `source` and this version."""
    record_file = os.path.join(path, SOURCE_FILE)
    try:
        record = fileio.read_json(record_file)
    except (OSError, ValueError):
        return None
    if record.get("source") != source or record.get("version") != _version(name):
        return None
    return Build(path, source, record) if _is_complete(_make_builder(name, path)) else None


def list_builds(name: str, data_dir: str) -> list[Build]:
    """Finished builds of `name` under `data_dir` (one per source), sorted by path."""
    data_dir = _expand(data_dir)
    prefix = f"{name}-"
    builds = []
    for entry in fileio.listdir(data_dir):
        if entry.startswith(prefix) and fileio.isdir(os.path.join(data_dir, entry)):
            build = _finished(name, os.path.join(data_dir, entry), entry[len(prefix) :])
            if build is not None:
                builds.append(build)
    return builds


def legacy_build(name: str, data_dir: str) -> str | None:
    """`<data_dir>/<tfds name>/`, a build made before builds recorded their source, if any."""
    path = os.path.join(_expand(data_dir), _BUILDERS[name].name)
    return path if fileio.isdir(path) else None


def _legacy_note(name: str, data_dir: str) -> str:
    legacy = legacy_build(name, data_dir)
    if legacy is None:
        return ""
    return (
        f" {legacy} is a build made before builds recorded their source; it is never used, "
        "since nothing says which copy of the data it came from. Set config.data.manual_dir to "
        f"that copy (it is rebuilt under {_expand(data_dir)}/{name}-<fingerprint>/), then "
        f"delete {legacy}."
    )


def find_build(name: str, data_dir: str, source: str | None = None) -> Build:
    """The build to read when no manual_dir is given: the one with `source` if given, else the
    only build under `data_dir`. ValueError when there is none (naming a legacy build and what
    to do) or several (listing them)."""
    data_dir = _expand(data_dir)
    builds = list_builds(name, data_dir)
    if source is not None:
        builds = [b for b in builds if b.source == source]
    if len(builds) == 1:
        return builds[0]
    if not builds:
        which = f" from source {source}" if source else ""
        raise ValueError(
            f"Dataset {name!r} has no finished build{which} under data_dir={data_dir!r}; set "
            f"config.data.manual_dir (manual_dir=) to {_SOURCES[name].MANUAL_DIR_HINT} to build "
            f"it.{_legacy_note(name, data_dir)}"
        )
    listing = "".join(f"\n  {b.describe()}" for b in builds)
    raise ValueError(
        f"Dataset {name!r} has {len(builds)} builds under data_dir={data_dir!r} and no "
        f"manual_dir says which to use:{listing}\nSet config.data.manual_dir to the copy "
        "you mean (its build is reused), or delete the builds you no longer need."
    )


def _identity_of(name: str, source: str | None) -> dict[str, str]:
    out = {"name": name, "version": _version(name)}
    if source is not None:
        out["source"] = source
    return out


def prepare(
    name: str, data_dir: str, manual_dir: str | None = None, source: str | None = None
) -> dict[str, str]:
    """Builds dataset `name` under `data_dir` unless a finished build of the same source is
    there; returns the build's identity (see `identity`).

    Generated datasets ("synthetic") live in `<data_dir>/<tfds name>/<version>/`. A dataset read
    from `manual_dir` ("voc2012", "coco2014"; see their builder modules for the accepted layouts)
    is built into `build_path(name, data_dir, fingerprint)`, so another or a repaired copy gets
    its own build and never reuses one made from other files; builds of other sources are left
    alone. With no `manual_dir`, the only finished build under `data_dir` is used (`find_build`).
    `source`, when given, is the fingerprint the caller already holds (`identity`); building
    stops with RuntimeError if the files no longer match it.

    Idempotent. TFDS writes into a temporary ``incomplete.*`` directory and renames it only on
    success, and the source record is written last, so a failed or interrupted build never
    looks finished; an unfinished build directory is removed and rebuilt.
    """
    data_dir = _expand(data_dir)
    get_info(name)
    if name not in _MANUAL:
        _prepare_generated(name, data_dir)
        return _identity_of(name, None)
    if not manual_dir:
        return _identity_of(name, find_build(name, data_dir, source).source)
    manual_dir = _expand(manual_dir)
    with _source_errors(name, manual_dir):
        return _prepare_manual(name, data_dir, manual_dir, source)


class SourceError(UserError, ValueError):
    """A file of a dataset's source (`manual_dir`) that is missing, empty, undecodable or
    inconsistent; the message names it."""


@contextlib.contextmanager
def _source_errors(name: str, manual_dir: str) -> Iterator[None]:
    """The builders' FileNotFoundError / ValueError (each names its file) as a `SourceError`."""
    try:
        yield
    except UserError:
        raise
    except (FileNotFoundError, ValueError) as e:
        raise SourceError(
            f"{name} source {manual_dir}: {first_line(e, 2000)}; fix or restore that file, then "
            f"rerun (the dataset is built again from the files as they are then)"
        ) from None


def _prepare_manual(name: str, data_dir: str, manual_dir: str, source: str | None) -> dict:
    """`prepare` of a dataset read from `manual_dir`."""
    fp = source or source_fingerprint(name, manual_dir)
    path = build_path(name, data_dir, fp)
    if _finished(name, path, fp) is not None:
        return _identity_of(name, fp)
    with _build_lock(data_dir, f"{name}-{fp}"):
        if _finished(name, path, fp) is not None:  # another process finished it meanwhile
            return _identity_of(name, fp)
        plan = _SOURCES[name].plan_source(manual_dir)
        _check_unchanged(name, manual_dir, fp, plan.fingerprint(), "since this run read it")
        labels = plan.record()["labels"]
        logging.info("building %s from %s; image labels from %s", name, plan.root, labels)
        if legacy_build(name, data_dir):
            logging.warning("%s", _legacy_note(name, data_dir).strip())
        fileio.rmtree(path)  # an unfinished or inconsistent build of this source
        try:
            _tfds_build(name, path, manual_dir)
        except BaseException:
            with contextlib.suppress(OSError):  # a failed build leaves nothing behind
                fileio.rmtree(path)
            raise
        _check_unchanged(
            name, manual_dir, fp, source_fingerprint(name, manual_dir), "during the build", path
        )
        fileio.write_json(
            os.path.join(path, SOURCE_FILE),
            {
                **_identity_of(name, fp),
                "manual_dir": manual_dir,
                **plan.record(),
                "examples": {s: int(i.num_examples) for s, i in _built_splits(name, path)},
                "built": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        )
    return _identity_of(name, fp)


def _built_splits(name: str, path: str):
    """(split, SplitInfo) of the TFDS build at `path`."""
    return _make_builder(name, path).info.splits.items()


def _check_unchanged(
    name: str, manual_dir: str, expected: str, now: str, when: str, remove: str | None = None
) -> None:
    if now == expected:
        return
    if remove is not None:
        with contextlib.suppress(OSError):
            fileio.rmtree(remove)
    raise RuntimeError(
        f"The {name!r} source at manual_dir={manual_dir!r} changed {when} (fingerprint "
        f"{expected} -> {now}); nothing was kept. Run again once the files are settled."
    )


def _prepare_generated(name: str, data_dir: str) -> None:
    """Builds a generated dataset into `data_dir` unless complete (under a lock)."""
    if _is_complete(_make_builder(name, data_dir)):
        return
    with _build_lock(data_dir, name):
        if not _is_complete(_make_builder(name, data_dir)):  # another process may have built it
            _tfds_build(name, data_dir)


def _tfds_build(name: str, tfds_dir: str, manual_dir: str | None = None) -> None:
    """Runs the TFDS build of `name` into `tfds_dir`; the caller holds the build lock."""
    builder = _make_builder(name, tfds_dir)
    data_path = os.fspath(builder.data_path)
    if fileio.exists(data_path):
        fileio.rmtree(data_path)  # leftover of an inconsistent build
        builder = _make_builder(name, tfds_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_config=config, file_format="array_record")
    if not _is_complete(_make_builder(name, tfds_dir)):  # pragma: no cover
        raise RuntimeError(f"Building {name!r} under {tfds_dir!r} did not complete.")


@functools.cache
def _cached_identity(name: str, data_dir: str, manual_dir: str) -> tuple[tuple[str, str], ...]:
    if name not in _MANUAL:
        return tuple(_identity_of(name, None).items())
    if manual_dir:
        return tuple(_identity_of(name, source_fingerprint(name, manual_dir)).items())
    return tuple(_identity_of(name, find_build(name, data_dir).source).items())


def identity(config: ml_collections.ConfigDict) -> dict[str, str]:
    """What the configured dataset is, independent of where it is stored (JSON-able).

    ``{"name", "version"}`` for generated datasets; ``{"name", "version", "source"}`` for
    voc2012 and coco2014, `source` being `source_fingerprint(manual_dir)` (or, with an empty
    manual_dir, the fingerprint recorded by the only build under data_dir). Same files -> same
    identity whatever `data_dir` is and whichever accepted manual_dir form names them; another
    list or a file of another size -> another identity (moving the VOCdevkit also changes it: its
    resolved path is part of the source). Computed once per process and cached (one os.stat per
    listed file, ~0.13 s for VOC + SBD on a local disk); `clear_identity_cache` forgets it.
    `resolve` reads exactly the build this names, and refuses to build it from files edited
    since, so a stage's data is always the data its fingerprint names; an edit
    made while a run is going is seen by the next run.
    """
    data = config.data
    get_info(data.name)
    manual = _expand(data.manual_dir) if data.manual_dir else ""
    data_dir = "" if manual else _expand(data.data_dir)  # a manual source ignores data_dir
    return dict(_cached_identity(data.name, data_dir, manual))


def clear_identity_cache() -> None:
    """Forgets every `identity` computed in this process (tests, or a source changed on purpose)."""
    _cached_identity.cache_clear()


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
    source: str | None = None,
) -> DecodedSource:
    """Random-access decoded examples of `name`/`split`, building the dataset first if needed.

    `manual_dir` and `source` choose the build as in `prepare`. With `shard_by_process=True` the
    split is `tfds.split_for_jax_process(split)`, i.e. each JAX process gets its own contiguous
    part. Raises ValueError for a split the build does not have, saying how to fix it.
    """
    ident = prepare(name, data_dir, manual_dir, source)
    return _read_build(get_info(name), _build_dir(name, data_dir, ident), split, shard_by_process)


def _build_dir(name: str, data_dir: str, ident: dict[str, str]) -> str:
    """The TFDS data dir of the build `ident` names (see `prepare`)."""
    return build_path(name, data_dir, ident["source"]) if "source" in ident else _expand(data_dir)


def _read_build(info: DatasetInfo, tfds_dir: str, split: str, shard_by_process: bool):
    builder = _make_builder(info.name, tfds_dir)
    available = tuple(builder.info.splits.keys())
    if split not in available:
        fix = "."
        if info.name == "voc2012" and split == "train_aug":
            fix = (
                "; your VOCdevkit has no SBD train_aug; use configs/pnoc_voc.py:train_split=train "
                "(VOC's own train split), or add SBD's SegmentationClassAug/ and a train_aug.txt "
                "list (see pnoc_jax/data/builders/voc2012.py) and point manual_dir at it again."
            )
        raise ValueError(
            f"Dataset {info.name!r} (build {tfds_dir}) has no split {split!r}; available splits: "
            f"{sorted(available)}{fix}"
        )
    tfds_split = tfds.split_for_jax_process(split) if shard_by_process else split
    source = builder.as_data_source(
        split=tfds_split,
        decoders={"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()},
    )
    return DecodedSource(source, info.num_classes)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The configured dataset, resolved once per run by `resolve` and handed to the stages:
    what it is (`info`: class names, splits), which data it is (`identity`, its name in the
    stage fingerprints) and where its finished build is (`build_dir`), so a stage reads the
    splits without going back to the config."""

    info: DatasetInfo
    identity: dict[str, str]
    build_dir: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def split(self, split: str, whole: bool = False) -> DecodedSource:
        """This process's share of `split` (each process a contiguous part), or all of it if
        `whole`."""
        return _read_build(self.info, self.build_dir, split, shard_by_process=not whole)

    def index(self, split: str) -> list[tuple[str, bool]]:
        """(id, has classes) of every example of the whole split, without decoding images
        where the source can (`DecodedSource.ids_and_labels`)."""
        source = self.split(split, whole=True)
        if hasattr(source, "ids_and_labels"):
            return [(i, bool(labels.sum() > 0)) for i, labels in source.ids_and_labels()]
        return [(e["id"], bool(e["labels"].sum() > 0)) for e in source]


def resolve(config: ml_collections.ConfigDict) -> Dataset:
    """The dataset `config.data` names, built first if needed (`prepare`): the build its
    `identity` names, refused if the files changed since."""
    data = config.data
    ident = identity(config)
    data_dir = _expand(data.data_dir)
    manual = _expand(data.manual_dir) if data.manual_dir else None
    ident = prepare(data.name, data_dir, manual, ident.get("source"))
    return Dataset(get_info(data.name), ident, _build_dir(data.name, data_dir, ident))
