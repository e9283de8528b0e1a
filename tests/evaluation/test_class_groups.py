"""Class properties, group means and correlations against hand-worked and brute-force values."""

import itertools
import math

import numpy as np
import pytest

from pnoc_jax.data.builders import voc2012
from pnoc_jax.evaluation import class_groups

IGN = 255


def _examples():
    """Three 4 x 4 images over 3 classes, every number below worked out by hand."""
    a = np.zeros((4, 4), np.uint8)
    a[:2, :2] = 1  # class 0: 4 of 16 pixels
    b = np.full((4, 4), 0, np.uint8)
    b[0, :] = IGN  # 12 valid pixels
    b[1, :3] = 1  # class 0: 3 of 12
    b[2:, :] = 2  # class 1: 8 of 12
    c = np.zeros((4, 4), np.uint8)
    c[3, 3] = 2  # class 1: 1 of 16
    return [
        (a, np.array([1, 0, 0])),
        (b, np.array([1, 1, 0])),
        (c, np.array([0, 1, 0])),
    ]


def test_properties_by_hand():
    props = class_groups.class_properties(_examples(), ["x", "y", "z"])
    assert props["x"]["O"] == 2
    assert props["x"]["%S"] == pytest.approx(100 * (4 / 16 + 3 / 12) / 2)
    assert props["x"]["%C"] == pytest.approx(50.0)
    assert props["x"]["L"] == pytest.approx(1.5)
    assert props["y"]["O"] == 2
    assert props["y"]["%S"] == pytest.approx(100 * (8 / 12 + 1 / 16) / 2)
    assert props["y"]["%C"] == pytest.approx(50.0)
    assert props["y"]["L"] == pytest.approx(1.5)
    assert props["z"]["O"] == 0
    assert all(math.isnan(props["z"][p]) for p in ("%S", "%C", "L"))


def test_properties_against_brute_force():
    """Random masks: every property recomputed with plain per-image loops."""
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(30):
        mask = rng.integers(0, 5, size=(7, 9)).astype(np.uint8)
        mask[rng.random(mask.shape) < 0.1] = IGN
        labels = np.zeros(4, np.int64)
        labels[np.unique(mask[(mask > 0) & (mask != IGN)]) - 1] = 1
        examples.append((mask, labels))
    props = class_groups.class_properties(iter(examples))
    for k in range(4):
        images = [(m, lab) for m, lab in examples if lab[k]]
        shares = [100 * np.sum(m == k + 1) / np.sum(m != IGN) for m, _ in images]
        assert props[str(k)]["O"] == len(images)
        assert props[str(k)]["%S"] == pytest.approx(np.mean(shares))
        assert props[str(k)]["%C"] == pytest.approx(
            100 * np.mean([lab.sum() > 1 for _, lab in images])
        )
        assert props[str(k)]["L"] == pytest.approx(np.mean([lab.sum() for _, lab in images]))


def test_properties_errors():
    with pytest.raises(ValueError, match="no examples"):
        class_groups.class_properties([])
    with pytest.raises(ValueError, match="2 class names for labels of 3"):
        class_groups.class_properties(_examples(), ["x", "y"])


PER_CLASS = {
    "a": {"O": 10, "%S": 5.0, "iou": 40.0},
    "b": {"O": 20, "%S": 15.0, "iou": 60.0},
    "c": {"O": 30, "%S": 30.0, "iou": float("nan")},
    "d": {"O": 40, "%S": 10.0, "iou": 50.0},
}


def test_group_means_by_hand():
    means = class_groups.group_means(PER_CLASS, {"ab": ["a", "b"], "cd": ["c", "d"]})
    assert means["ab"] == {"O": 15.0, "%S": 10.0, "iou": 50.0}
    assert means["cd"] == {"O": 35.0, "%S": 20.0, "iou": 50.0}  # the NaN IoU left out
    with pytest.raises(KeyError, match="'e'"):
        class_groups.group_means(PER_CLASS, {"x": ["a", "e"]})


def test_correlations_against_corrcoef():
    rng = np.random.default_rng(1)
    per_class = {
        f"c{k}": {"O": rng.random(), "%S": rng.random(), "%C": rng.random(), "L": rng.random(),
                  "m1": rng.random(), "m2": rng.random()}
        for k in range(9)
    }  # fmt: skip
    rho = class_groups.correlations(per_class)
    columns = ["O", "%S", "%C", "L", "m1", "m2"]
    matrix = np.array([[row[c] for c in columns] for row in per_class.values()])
    expected = 100 * np.corrcoef(matrix, rowvar=False)
    for i, p in enumerate(class_groups.PROPERTIES):
        for j, c in enumerate(columns):
            assert rho[p][c] == pytest.approx(expected[i, j])


def test_correlations_leave_out_missing_values():
    rho = class_groups.correlations(PER_CLASS, properties=("O",))
    keep = [0, 1, 3]  # class c has no IoU
    o = np.array([10, 20, 30, 40.0])
    iou = np.array([40, 60, np.nan, 50.0])
    assert rho["O"]["iou"] == pytest.approx(100 * np.corrcoef(o[keep], iou[keep])[0, 1])
    assert rho["O"]["O"] == pytest.approx(100.0)
    constant = {k: {"O": 1.0, "x": float(i)} for i, k in enumerate("abc")}
    assert math.isnan(class_groups.correlations(constant, ("O",))["O"]["x"])


def test_voc_groups_are_voc_classes_in_the_devkit_categories():
    """The semantic groups cover the 20 VOC classes once each, as the VOC devkit's person /
    animal / vehicle / indoor categories (host.robots.ox.ac.uk/pascal/VOC/voc2012/htmldoc)."""
    groups = class_groups.PAPER_VOC_GROUPS
    members = list(itertools.chain.from_iterable(groups.values()))
    assert sorted(members) == sorted(voc2012.CLASS_NAMES)
    assert groups["person"] == ["person"]
    assert set(groups["animal"]) == {"bird", "cat", "cow", "dog", "horse", "sheep"}
    assert set(groups["traffic"]) == {
        "aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"
    }  # fmt: skip
    assert set(groups["room"]) == {
        "bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor"
    }  # fmt: skip


def test_tertiles():
    groups = class_groups.tertile_groups(PER_CLASS, "%S", ("s", "m", "l"))
    assert groups == {"s": ["a", "d"], "m": ["b"], "l": ["c"]}
    seven = {str(k): {"O": float(v)} for k, v in enumerate([5, 1, 3, 3, 9, 0, 2])}
    groups = class_groups.tertile_groups(seven, "O", ("lo", "mid", "hi"))
    assert groups == {"lo": ["1", "5", "6"], "mid": ["2", "3"], "hi": ["0", "4"]}


def test_table_layout_and_writers():
    props = {"a": {"O": 1.0, "%S": 10.0, "%C": 0.0, "L": 1.0},
             "b": {"O": 3.0, "%S": 30.0, "%C": 100.0, "L": 2.0}}  # fmt: skip
    iou = {"priors": {"background": 80.0, "a": 40.0, "b": 60.0}, "seg": {"a": 50.0}}
    tab = class_groups.table(props, iou, {"all": ["a", "b"]})
    assert tab["columns"] == ["O", "%S", "%C", "L", "priors", "seg"]
    assert tab["classes"]["a"]["priors"] == 40.0
    assert math.isnan(tab["classes"]["b"]["seg"])
    assert tab["overall"]["priors"] == pytest.approx(60.0)  # mean of 80, 40, 60
    assert tab["overall"]["seg"] == pytest.approx(50.0)
    assert tab["groups"]["all"]["priors"] == pytest.approx(50.0)
    assert tab["correlations"]["%S"]["priors"] == pytest.approx(100.0)
    md = class_groups.to_markdown(tab)
    assert "| a | 1 | 10.0 | 0.0 | 1.0 | 40.0 | 50.0 |" in md
    assert "| b | 3 | 30.0 | 100.0 | 2.0 | 60.0 | – |" in md
    assert "| ρ(%S) |" in md and "| **groups** |" in md
    csv = class_groups.to_csv(tab, prefix=(("split", "val"),)).splitlines()
    assert csv[0] == "split,section,row,O,%S,%C,L,priors,seg"
    assert csv[2] == 'val,class,"b",3,30,100,2,60,'
