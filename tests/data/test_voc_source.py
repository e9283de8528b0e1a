"""A VOC build is bound to its source: tiny VOCdevkits in the real layout, several per test.

Covers: another devkit with the same data_dir gets its own build (the first is untouched),
`identity` follows the source and not data_dir or the manual_dir form, a build made before
builds recorded their source is never trusted, several builds with no manual_dir is an error
listing them, the three manual_dir forms, and `configs/pnoc_voc.py:train_split=train` on a
devkit without SBD's train_aug.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import common
from pnoc_jax import config_lib, pipeline
from pnoc_jax.data import datasets
from pnoc_jax.data.builders import synthetic, voc2012
from tests.data.voc_devkit import SPECS, TRAIN, VAL, rgb_image, write_voc

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = config_lib.Topology(8)


@pytest.fixture(autouse=True)
def _fresh_identities():
    """`identity` is cached per process; every test starts from an empty cache."""
    datasets.clear_identity_cache()
    yield
    datasets.clear_identity_cache()


def _config(
    manual_dir: str | os.PathLike, data_dir: str | os.PathLike
) -> ml_collections.ConfigDict:
    config = config_lib.base_config()
    config.data.update(name="voc2012", manual_dir=str(manual_dir), data_dir=str(data_dir))
    return config


def _by_id(source) -> dict[str, dict]:
    return {ex["id"]: ex for ex in (source[i] for i in range(len(source)))}


def _snapshot(folder: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Every file under `folder` -> (size, mtime_ns): equal snapshots = untouched folder."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), folder)] = (st.st_size, st.st_mtime_ns)
    return out


def _devkit_b(a_root: Path, b_root: Path) -> Path:
    """A copy of devkit A with another train list and one JPEG re-encoded to another size."""
    shutil.copytree(a_root, b_root)
    voc = b_root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2008_000002\n")
    jpg = voc / "JPEGImages" / "2007_000032.jpg"
    before = jpg.stat().st_size
    h, w, _ = SPECS["2007_000032"]
    Image.fromarray(np.ascontiguousarray(rgb_image(h, w, 99)[::-1])).save(jpg, quality=60)
    assert jpg.stat().st_size != before
    return voc


def test_another_devkit_with_the_same_data_dir_gets_its_own_build(tmp_path):
    a_root, b_root, data_dir = tmp_path / "a", tmp_path / "b", str(tmp_path / "tfds")
    write_voc(a_root)
    a_train = _by_id(datasets.load_split("voc2012", "train", data_dir, str(a_root)))
    [a_build] = datasets.list_builds("voc2012", data_dir)
    a_files = _snapshot(a_build.path)
    b_voc = _devkit_b(a_root, b_root)

    b_train = _by_id(datasets.load_split("voc2012", "train", data_dir, str(b_root)))
    assert sorted(b_train) == ["2007_000032", "2008_000002"]  # B's list, not A's
    b_image = cv2.imread(str(b_voc / "JPEGImages" / "2007_000032.jpg"))[..., ::-1]
    np.testing.assert_array_equal(b_train["2007_000032"]["image"], b_image)  # B's file
    assert not np.array_equal(b_image, a_train["2007_000032"]["image"])
    builds = {b.path: b for b in datasets.list_builds("voc2012", data_dir)}
    assert len(builds) == 2 and a_build.path in builds
    [b_build] = [b for path, b in builds.items() if path != a_build.path]
    assert Path(b_build.record["root"]) == b_voc.resolve()
    assert Path(a_build.record["root"]) == (a_root / "VOCdevkit" / "VOC2012").resolve()
    assert _snapshot(a_build.path) == a_files  # A's build untouched

    # Pointing back at A reuses A's build as it was.
    again = _by_id(datasets.load_split("voc2012", "train", data_dir, str(a_root)))
    assert sorted(again) == sorted(TRAIN)
    np.testing.assert_array_equal(again["2007_000032"]["image"], a_train["2007_000032"]["image"])
    assert _snapshot(a_build.path) == a_files


def test_identity_is_the_source_whatever_the_data_dir_and_manual_dir_form(tmp_path):
    root = tmp_path / "data"
    voc = write_voc(root)
    forms = [root, root / "VOCdevkit", voc]  # holding VOCdevkit, VOCdevkit, VOC2012
    identities = [datasets.identity(_config(f, tmp_path / f"tfds{k}")) for k, f in enumerate(forms)]
    assert all(i == identities[0] for i in identities)
    ident = identities[0]
    assert json.loads(json.dumps(ident)) == ident  # JSON-able
    fp = datasets.source_fingerprint("voc2012", str(voc))
    assert ident == {"name": "voc2012", "version": str(voc2012.PnocVoc2012.VERSION), "source": fp}
    assert not any((tmp_path / f"tfds{k}").exists() for k in range(3))  # nothing read or built

    # Built at two data_dirs: the same identity, also read back from a build with no manual_dir.
    assert datasets.prepare("voc2012", str(tmp_path / "tfds0"), str(forms[0])) == ident
    assert datasets.prepare("voc2012", str(tmp_path / "tfds1"), str(forms[2])) == ident
    assert datasets.identity(_config("", tmp_path / "tfds1")) == ident
    # The generated dataset: name and version only, no data_dir involved.
    synth = common.synthetic_config()
    synth.data.data_dir = str(tmp_path / "nowhere")
    version = str(synthetic.PnocSynthetic.VERSION)
    assert datasets.identity(synth) == {"name": "synthetic", "version": version}


def test_identity_changes_with_a_list_or_a_file_size(tmp_path):
    voc = write_voc(tmp_path / "m")
    config = _config(tmp_path / "m", tmp_path / "tfds")
    first = datasets.identity(config)

    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000063\n")  # another list
    assert datasets.identity(config) == first  # cached: one computation per process
    datasets.clear_identity_cache()
    second = datasets.identity(config)
    assert second["source"] != first["source"]

    with open(voc / "SegmentationClass" / "2007_000063.png", "ab") as f:
        f.write(b"\0")  # a listed mask of another size
    datasets.clear_identity_cache()
    third = datasets.identity(config)
    assert third["source"] not in (first["source"], second["source"])

    (voc / "JPEGImages" / "2099_000001.jpg").write_bytes(b"not listed")  # unlisted: no effect
    datasets.clear_identity_cache()
    assert datasets.identity(config) == third


def test_source_changed_after_its_identity_was_taken_is_refused(tmp_path):
    voc = write_voc(tmp_path / "m")
    config = _config(tmp_path / "m", tmp_path / "tfds")
    datasets.identity(config)  # what the stage fingerprints name
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000039\n")
    with pytest.raises(RuntimeError, match="changed since this run read it"):
        datasets.resolve(config).split("train")
    assert not list((tmp_path / "tfds").glob("voc2012-*"))  # nothing built from the new files
    datasets.clear_identity_cache()  # the next run
    assert len(datasets.resolve(config).split("train")) == 2


def test_legacy_build_without_a_recorded_source_is_not_trusted(tmp_path, caplog):
    voc = write_voc(tmp_path / "m")
    data_dir = tmp_path / "tfds"
    datasets.prepare("voc2012", str(data_dir), str(voc))
    # Make the layout of a build from before this change: <data_dir>/pnoc_voc2012/1.0.0/.
    [build] = datasets.list_builds("voc2012", str(data_dir))
    legacy = data_dir / "pnoc_voc2012"
    os.rename(Path(build.path) / "pnoc_voc2012", legacy)
    shutil.rmtree(build.path)
    legacy_files = _snapshot(legacy)

    with pytest.raises(ValueError, match="no finished build") as err:
        datasets.load_split("voc2012", "train", str(data_dir))
    message = str(err.value)
    assert "made before builds recorded their source" in message
    assert "config.data.manual_dir" in message and f"delete {legacy}" in message
    with pytest.raises(ValueError, match="no finished build"):
        datasets.identity(_config("", data_dir))
    with pytest.raises(config_lib.ConfigError, match=r"config.data.manual_dir='': .*delete"):
        datasets.validate_data(_config("", data_dir), TOPOLOGY)

    # With manual_dir it is rebuilt into its own folder; the legacy build is left as it was.
    with caplog.at_level(logging.WARNING):
        train = datasets.load_split("voc2012", "train", str(data_dir), str(voc))
    assert len(train) == len(TRAIN)
    assert f"delete {legacy}" in caplog.text
    assert [b.source for b in datasets.list_builds("voc2012", str(data_dir))] == [build.source]
    assert _snapshot(legacy) == legacy_files


def test_several_builds_and_no_manual_dir_is_an_error_listing_them(tmp_path):
    a_root, b_root, data_dir = tmp_path / "a", tmp_path / "b", str(tmp_path / "tfds")
    write_voc(a_root)
    _devkit_b(a_root, b_root)
    datasets.prepare("voc2012", data_dir, str(a_root))
    assert len(datasets.load_split("voc2012", "val", data_dir)) == len(VAL)  # the only build
    datasets.prepare("voc2012", data_dir, str(b_root))
    builds = datasets.list_builds("voc2012", data_dir)
    assert len(builds) == 2

    with pytest.raises(ValueError, match="2 builds") as err:
        datasets.load_split("voc2012", "val", data_dir)
    for build in builds:
        assert build.path in str(err.value) and build.record["root"] in str(err.value)
    assert "Set config.data.manual_dir" in str(err.value)
    with pytest.raises(config_lib.ConfigError, match="2 builds"):
        datasets.validate_data(_config("", data_dir), TOPOLOGY)
    with pytest.raises(ValueError, match="2 builds"):
        datasets.identity(_config("", data_dir))
    # Naming a source picks its build.
    assert len(datasets.load_split("voc2012", "train", data_dir, str(b_root))) == 2


def test_manual_dir_may_name_the_folder_holding_vocdevkit_vocdevkit_or_voc2012(tmp_path):
    root = tmp_path / "data"
    voc = write_voc(root)
    data_dir = str(tmp_path / "tfds")
    datasets.prepare("voc2012", data_dir, str(root))
    [build] = datasets.list_builds("voc2012", data_dir)
    files = _snapshot(build.path)
    for form in (root, root / "VOCdevkit", voc):
        datasets.validate_data(_config(form, data_dir), TOPOLOGY)
        assert len(datasets.load_split("voc2012", "val", data_dir, str(form))) == len(VAL)
    assert datasets.list_builds("voc2012", data_dir) == [build]  # one source, one build
    assert _snapshot(build.path) == files

    # A folder of another name holding VOC2012/ (e.g. /data/voc/VOC2012) works too.
    other = tmp_path / "voc"
    shutil.copytree(root / "VOCdevkit", other)
    assert voc2012.find_voc_root(other) == other / "VOC2012"

    empty = tmp_path / "empty"
    empty.mkdir()
    tried = [empty / "VOCdevkit" / "VOC2012", empty / "VOC2012", empty]
    with pytest.raises(datasets.SourceError) as err:
        datasets.prepare("voc2012", data_dir, str(empty))
    for path in tried:
        assert repr(str(path / "JPEGImages")) in str(err.value)
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.manual_dir=") as err:
        datasets.validate_data(_config(empty, data_dir), TOPOLOGY)
    assert all(str(path / "JPEGImages") in str(err.value) for path in tried)


def _pnoc_voc(arg: str | None) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("pnoc_voc_config", ROOT / "configs/pnoc_voc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _splits_read(config: ml_collections.ConfigDict) -> set[str]:
    """Every split a key of the config names (training, inference, labels, walk, evaluation)."""
    return {
        config.oc.split,
        config.train.split,
        config.eval.split,
        config.affinity_labels.split,
        *config.infer.splits,
        *config.rw.splits,
    }


def test_pnoc_voc_train_split_train_validates_on_a_plain_voc_download(tmp_path):
    voc = write_voc(tmp_path / "data")  # no SegmentationClassAug, no train_aug list
    available = set(voc2012.plan_source(voc).splits)
    assert available == {"train", "val"}

    config = _pnoc_voc("train_split=train")
    config.data.update(manual_dir=str(voc.parent), data_dir=str(tmp_path / "tfds"))
    config.model.allow_random_init = True  # (tests/test_recipes.py: stopping without weights)
    pipeline.validate(config, TOPOLOGY)
    assert _splits_read(config) <= available
    assert config.oc.split == config.train.split == config.affinity_labels.split == "train"
    assert tuple(config.infer.splits) == tuple(config.rw.splits) == ("train", "val")
    assert not (tmp_path / "tfds").exists()  # validation builds nothing

    default = _pnoc_voc(None)  # the paper's recipe reads SBD's train_aug everywhere
    assert default.oc.split == default.train.split == default.affinity_labels.split == "train_aug"
    assert tuple(default.infer.splits) == tuple(default.rw.splits) == ("train_aug", "train", "val")
    assert not _splits_read(default) <= available
    with pytest.raises(ValueError, match="train_split='trainaug'"):
        _pnoc_voc("train_split=trainaug")
