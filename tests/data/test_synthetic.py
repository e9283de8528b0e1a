"""Embedded synthetic dataset: TFDS build, determinism, labels vs masks, ignore band, balance."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from pnoc_jax.data import datasets
from pnoc_jax.data.builders import synthetic


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build once per module; returns (data_dir, build seconds, {split: [examples]})."""
    data_dir = str(tmp_path_factory.mktemp("tfds_synthetic"))
    start = time.perf_counter()
    datasets.prepare("synthetic", data_dir)
    seconds = time.perf_counter() - start
    splits = {}
    for split in ("train", "val"):
        source = datasets.load_split("synthetic", split, data_dir)
        splits[split] = [source[i] for i in range(len(source))]
    return data_dir, seconds, splits


def test_info():
    info = datasets.get_info("synthetic")
    assert info.num_classes == 6 == len(info.class_names)
    assert info.splits == ("train", "val") and info.ignore_index == 255


def test_build_sizes_and_types(built):
    _, seconds, splits = built
    assert seconds < 60, f"synthetic build took {seconds:.1f}s"
    assert len(splits["train"]) == 1000 and len(splits["val"]) == 200
    shapes = set()
    for ex in splits["train"][:200]:
        assert set(ex) == {"id", "image", "mask", "labels"}  # no part/body ground truth
        assert isinstance(ex["id"], str) and ex["id"].startswith("train_")
        h, w, c = ex["image"].shape
        assert c == 3 and ex["image"].dtype == np.uint8
        assert 80 <= h <= 112 and 80 <= w <= 112
        assert ex["mask"].shape == (h, w) and ex["mask"].dtype == np.uint8
        assert ex["labels"].shape == (6,) and ex["labels"].dtype == np.float32
        shapes.add((h, w))
    assert len(shapes) > 50  # sizes vary per image
    ids = [ex["id"] for ex in splits["train"]]
    assert len(set(ids)) == 1000
    assert "tensorflow" not in sys.modules  # TF-free build and read


def test_deterministic(built):
    _, _, splits = built
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in rng.choice(len(splits[split]), 25, replace=False):
            ex = splits[split][k]
            index = int(ex["id"].split("_")[1])
            ref = synthetic.generate_example(split, index)
            again = synthetic.generate_example(split, index)
            for key in ("image", "mask", "labels"):
                np.testing.assert_array_equal(ref[key], again[key])
                np.testing.assert_array_equal(ex[key], ref[key])  # build == generator (lossless)
    assert not np.array_equal(
        synthetic.generate_example("train", 0)["image"][:80, :80],
        synthetic.generate_example("val", 0)["image"][:80, :80],
    )


def test_labels_match_masks_and_every_image_labelled(built):
    _, _, splits = built
    for ex in splits["train"] + splits["val"]:
        values = np.unique(ex["mask"])
        assert set(values.tolist()) <= {0, 1, 2, 3, 4, 5, 6, 255}
        present = values[(values > 0) & (values < 255)]
        expected = np.zeros(6, np.float32)
        expected[present - 1] = 1
        np.testing.assert_array_equal(ex["labels"], expected)
        assert ex["labels"].sum() >= 1


def test_ignore_band(built):
    _, _, splits = built
    fractions = []
    for ex in splits["train"][:300]:
        m = ex["mask"].astype(np.int32)
        assert (m == 255).any()
        # The band separates different labels: no two 4-neighbours with different valid labels.
        for a, b in ((m[1:], m[:-1]), (m[:, 1:], m[:, :-1])):
            differ = (a != b) & (a != 255) & (b != 255)
            assert not differ.any()
        fg = (m > 0) & (m < 255)
        fractions.append(fg.mean())
        # ~2 px wide: the band is a thin outline, not a large area.
        assert (m == 255).sum() < 2.5 * fg.sum() + 50
    fractions = np.array(fractions)
    # VOC-sized objects: about a fifth of the pixels are foreground, varying a lot per image.
    assert 0.12 < fractions.mean() < 0.35 and fractions.min() < 0.08 and fractions.max() > 0.4


def test_class_balance_and_cooccurrence(built):
    _, _, splits = built
    labels = np.stack([ex["labels"] for ex in splits["train"]])
    freq = labels.mean(0)
    assert (freq > 0.10).all() and (freq < 0.5).all(), freq
    counts = labels.sum(1)
    assert set(np.unique(counts).tolist()) >= {1.0, 2.0}
    assert 0.1 < (counts >= 2).mean() < 0.7
    # Partner classes (0, 1) co-occur far more often than independent classes would.
    p01 = (labels[:, 0] * labels[:, 1]).mean()
    assert p01 > 1.5 * freq[0] * freq[1]
    p45 = (labels[:, 4] * labels[:, 5]).mean()
    assert p01 > 2.0 * p45
    assert (np.stack([ex["labels"] for ex in splits["val"]]).sum(0) > 5).all()


def test_prepare_is_idempotent_and_sharding(built):
    data_dir, _, _ = built
    version = str(synthetic.PnocSynthetic.VERSION)
    version_dir = os.path.join(data_dir, "pnoc_synthetic", version)
    before = os.path.getmtime(os.path.join(version_dir, "dataset_info.json"))
    datasets.prepare("synthetic", data_dir)  # no rebuild: the files are untouched
    assert os.path.getmtime(os.path.join(version_dir, "dataset_info.json")) == before
    shard = datasets.load_split("synthetic", "val", data_dir, shard_by_process=True)
    assert len(shard) == 200  # single JAX process: the whole split
    assert shard[-1]["id"] == shard[len(shard) - 1]["id"]
    with pytest.raises(ValueError, match="test"):
        datasets.load_split("synthetic", "test", data_dir)
