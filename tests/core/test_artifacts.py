"""`artifacts.damage`: the cheap check of a finished stage's outputs, against files damaged by
hand (deleted, emptied, cut short, replaced)."""

import numpy as np
import pytest

from pnoc_jax.core import artifacts, fileio


@pytest.mark.parametrize("name", ["a.npz", "a.png", "a.json"])
def test_whole_files_pass_and_cut_ones_do_not(tmp_path, name):
    path = str(tmp_path / name)
    writers = {
        "a.npz": lambda: fileio.write_npz(path, {"x": np.zeros(5)}),
        "a.png": lambda: fileio.write_png(path, np.zeros((4, 4), np.uint8)),
        "a.json": lambda: fileio.write_json(path, {"miou": 0.5}),
    }
    writers[name]()
    assert artifacts.damage(path) is None
    whole = fileio.read_bytes(path)
    expected = "not valid JSON" if name.endswith(".json") else "truncated"
    for cut in (len(whole) - 3, 10):
        (tmp_path / name).write_bytes(whole[:cut])
        assert artifacts.damage(path) == expected, cut
    (tmp_path / name).write_bytes(b"")
    assert artifacts.damage(path) == "empty"
    (tmp_path / name).write_bytes(b"<html>an error page</html>")
    assert artifacts.damage(path) == (
        "not valid JSON" if name == "a.json" else f"not a .{name[2:]} file"
    )


def test_missing_and_in_the_way(tmp_path):
    assert artifacts.damage(str(tmp_path / "none.png")) == "missing"
    (tmp_path / "weights").write_text("")
    assert (
        artifacts.damage(str(tmp_path / "weights" / "f.npz")) == "a file where a folder should be"
    )
    (tmp_path / "m.json").mkdir()
    assert artifacts.damage(str(tmp_path / "m.json")) == "a folder where a file should be"
    paths = [str(tmp_path / f"{i}.png") for i in range(5)]
    assert artifacts.missing(paths, show=2) == [*paths[:2], "... 5 files missing or damaged in all"]
