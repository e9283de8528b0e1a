"""VOC image labels from Annotations/<id>.xml (§11), not from the masks, when it exists."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pnoc_jax.core import fileio
from pnoc_jax.data import datasets
from pnoc_jax.data.builders import voc2012
from tests.data.voc_devkit import (
    SPECS,
    expected_labels,
    expected_xml_labels,
    write_annotations,
    write_voc,
)


@pytest.fixture(autouse=True)
def _fresh_identities():
    datasets.clear_identity_cache()
    yield
    datasets.clear_identity_cache()


def _labels(data_dir: str, manual: str) -> dict[str, np.ndarray]:
    out = {}
    for split in ("train", "val"):
        source = datasets.load_split("voc2012", split, data_dir, manual)
        out.update((i, lab) for i, lab in source.ids_and_labels())
    return out


def _record(data_dir: str, manual: str) -> dict:
    source = datasets.source_fingerprint("voc2012", manual)
    return fileio.read_json(f"{datasets.build_path('voc2012', data_dir, source)}/source.json")


def test_labels_come_from_the_xml_when_the_folder_has_them(tmp_path):
    voc = write_voc(tmp_path / "a")
    manual, data_dir = str(tmp_path / "a"), str(tmp_path / "tfds")
    from_masks = _labels(data_dir, manual)
    for ex_id in SPECS:
        np.testing.assert_array_equal(from_masks[ex_id], expected_labels(ex_id))
    assert "segmentation masks" in _record(data_dir, manual)["labels"]
    before = datasets.source_fingerprint("voc2012", manual)

    write_annotations(voc)
    assert datasets.source_fingerprint("voc2012", manual) != before  # a new build
    from_xml = _labels(data_dir, manual)
    for ex_id in SPECS:
        np.testing.assert_array_equal(from_xml[ex_id], expected_xml_labels(ex_id), err_msg=ex_id)
    # The XML adds objects the masks do not show: a difficult bottle, a sofa whose box is
    # clipped to the image; a zero-width cat and a box wholly outside the image are skipped.
    assert from_xml["2007_000032"].sum() == from_masks["2007_000032"].sum() + 1
    assert not from_xml["2007_000039"][voc2012.CLASS_NAMES.index("cat")]
    assert "Annotations/<id>.xml" in _record(data_dir, manual)["labels"]


def test_read_xml_labels_rules(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(
        "<annotation><size><width>20</width><height>10</height></size>"
        "<object><name>dog</name><bndbox><xmin>3</xmin><ymin>2</ymin><xmax>3.9</xmax>"
        "<ymax>8</ymax></bndbox></object>"  # 3..3 after truncation: skipped
        "<object><name>cat</name><bndbox><xmin>-5</xmin><ymin>0</ymin><xmax>0</xmax>"
        "<ymax>9</ymax></bndbox></object>"  # clipped to 0..0: skipped
        "<object><name>horse</name><bndbox><xmin>19</xmin><ymin>9</ymin><xmax>40</xmax>"
        "<ymax>30</ymax></bndbox></object>"  # clipped to 19..19 / 9..9: skipped
        "<object><name>person</name><bndbox><xmin>18.7</xmin><ymin>1</ymin><xmax>25</xmax>"
        "<ymax>2</ymax></bndbox></object>"  # 18..19 x 1..2: kept
        "</annotation>"
    )
    labels = voc2012.read_xml_labels(path)
    assert [voc2012.CLASS_NAMES[i] for i in np.flatnonzero(labels)] == ["person"]


def test_bad_annotations_name_the_file(tmp_path):
    voc = write_voc(tmp_path / "a")
    write_annotations(voc)
    xml = voc / "Annotations" / "2008_000002.xml"
    xml.unlink()
    with pytest.raises(datasets.SourceError, match=re.escape(str(xml))):
        datasets.source_fingerprint("voc2012", str(tmp_path / "a"))
    write_annotations(voc)
    xml.write_text(xml.read_text().replace("<name>bird</name>", "<name>birdd</name>"))
    with pytest.raises(ValueError, match=re.escape(str(xml)) + ".*'birdd'"):
        datasets.prepare("voc2012", str(tmp_path / "tfds"), str(tmp_path / "a"))
    xml.write_text("<annotation><size>")
    with pytest.raises(ValueError, match=re.escape(str(xml)) + "' is not valid XML"):
        voc2012.read_xml_labels(xml)
    assert datasets.list_builds("voc2012", str(tmp_path / "tfds")) == []
