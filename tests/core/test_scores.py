"""Score files: our .npz without pickle, the reference's pickled .npy read by a restricted
unpickler that refuses anything but numpy arrays, and the checks after loading."""

import io
import os
import pickle

import numpy as np
import pytest

from pnoc_jax.core import artifacts, scores
from pnoc_jax.core.errors import UserError

KEYS = np.array([0, 3, 7])


def _cam(k: int = 2, h: int = 5, w: int = 6) -> np.ndarray:
    return np.random.default_rng(0).random((k, h, w)).astype(np.float32)


def _save_official(path: str, record) -> None:
    """What the reference code writes: `np.save(path, dict)`, a pickled 0-d object array."""
    np.save(path, np.array(record, dtype=object), allow_pickle=True)


class _RunsCode:
    """A pickle payload that would run a shell command when unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_npz_roundtrip_without_pickle(tmp_path):
    cam, hr = _cam(h=2, w=2), _cam()
    path = artifacts.cam_file(str(tmp_path), "val", "a")
    assert path.endswith("a.npz")
    scores.write(path, KEYS, cam=cam, hr_cam=hr)
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["cam", "hr_cam", "keys"]
    record = scores.read(path, scores.CAM_FIELDS)
    np.testing.assert_array_equal(record["keys"], KEYS)
    np.testing.assert_array_equal(record["hr_cam"], hr)
    assert record["keys"].dtype == np.int64 and record["cam"].dtype == np.float32


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.npy")
    # Unrestricted, this file runs the command (the test's own check that the payload works).
    _save_official(path, {"keys": KEYS, "hr_cam": _RunsCode(str(marker))})
    np.load(path, allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(scores.RefusedPickleError, match=r"evil\.npy.*'posix\.system'"):
        scores.read(path, ("hr_cam",))
    assert not marker.exists()


def _write_npy_pickle(path: str, payload: bytes) -> None:
    """An `.npy` of a 0-d object array whose pickle is `payload` (as np.save lays it out)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|O", "fortran_order": False, "shape": ()}
    )
    with open(path, "wb") as f:
        f.write(header.getvalue() + payload)  # the header includes the magic string


def test_crafted_pickle_in_a_cam_folder_is_refused(tmp_path):
    """A crafted `<id>.npy` where a stage looks for CAMs: found by `locate`, refused."""
    marker = tmp_path / "pwned"
    cam_dir = artifacts.cam_dir(str(tmp_path), "val")
    os.makedirs(cam_dir)
    payload = pickle.dumps(np.array(_RunsCode(str(marker)), dtype=object), protocol=2)
    _write_npy_pickle(artifacts.official_score_file(cam_dir, "x"), payload)
    with pytest.raises(scores.RefusedPickleError, match=r"x\.npy.*'posix\.system'"):
        scores.read_image(cam_dir, "x", ("hr_cam",))
    assert not marker.exists()


def test_torch_tensor_is_refused_with_a_conversion_hint(tmp_path):
    """The reference's `cam` is a torch tensor: refused by name, with how to convert it."""
    path = str(tmp_path / "ref.npy")
    # GLOBAL 'torch._utils _rebuild_tensor_v2', empty tuple, REDUCE, STOP.
    _write_npy_pickle(path, b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.")
    with pytest.raises(
        scores.RefusedPickleError, match=r"ref\.npy.*'torch\._utils\._rebuild_tensor_v2'"
    ) as e:
        scores.read(path, ("hr_cam",))
    assert "np.savez" in str(e.value) and "torch is installed" in str(e.value)


@pytest.mark.parametrize("protocol", [2, 3])
def test_official_dict_npy_is_read(tmp_path, protocol):
    cam, hr = _cam(h=2, w=2), _cam()
    record = {"keys": KEYS, "cam": cam, "hr_cam": hr, "extra": [np.int64(1), (2.0, "s")]}
    path = artifacts.official_score_file(str(tmp_path), "a")
    _save_official(path, record)
    out = scores.read(path, scores.CAM_FIELDS)
    np.testing.assert_array_equal(out["keys"], KEYS)
    np.testing.assert_array_equal(out["cam"], cam)
    np.testing.assert_array_equal(out["hr_cam"], hr)
    # numpy 1.x pickles (protocol 3 in np.save; 2 in older code) name numpy.core.*: read too.
    payload = pickle.dumps(np.array(record, dtype=object), protocol=protocol)
    old = payload.replace(b"cnumpy._core.", b"cnumpy.core.")
    assert old != payload and b"numpy._core" not in old
    _write_npy_pickle(path, old)
    np.testing.assert_array_equal(scores.read(path, ("hr_cam",))["hr_cam"], hr)


def test_locate_prefers_ours_and_falls_back_to_the_official_file(tmp_path):
    directory = str(tmp_path)
    assert scores.locate(directory, "a") == artifacts.score_file(directory, "a")
    assert not scores.exists(directory, "a")
    with pytest.raises(FileNotFoundError, match=r"a\.npz: score file missing"):
        scores.read_image(directory, "a", ("rw",))
    _save_official(artifacts.official_score_file(directory, "a"), {"keys": KEYS, "rw": _cam()})
    assert scores.locate(directory, "a").endswith("a.npy") and scores.exists(directory, "a")
    scores.write(artifacts.score_file(directory, "a"), KEYS, rw=2 * _cam())
    assert scores.locate(directory, "a").endswith("a.npz")
    np.testing.assert_array_equal(scores.read_image(directory, "a", ("rw",))["rw"], 2 * _cam())


@pytest.mark.parametrize(
    "record, message",
    [
        ({"keys": np.array([1, 3, 7]), "hr_cam": _cam()}, "'keys' must be 1-D integers"),
        ({"keys": np.array([0, 3, 3]), "hr_cam": _cam()}, "'keys' must be 1-D integers"),
        ({"keys": np.array([0.0, 3, 7]), "hr_cam": _cam()}, "'keys' must be 1-D integers"),
        ({"keys": np.array([[0, 3, 7]]), "hr_cam": _cam()}, "'keys' must be 1-D integers"),
        ({"keys": KEYS, "hr_cam": _cam(k=3)}, r"K = len\(keys\) - 1 = 2, got float32 \(3, 5, 6\)"),
        ({"keys": KEYS, "hr_cam": _cam()[0]}, r"'hr_cam' must be a float array \[K, h, w\]"),
        ({"keys": KEYS, "hr_cam": _cam().astype(np.int32)}, "got int32"),
        ({"keys": KEYS, "hr_cam": _cam().tolist()}, "'hr_cam' must be a numpy array"),
        ({"keys": KEYS}, r"no \['hr_cam'\] entry"),
    ],
)
def test_bad_records_give_errors_naming_the_file(tmp_path, record, message):
    path = str(tmp_path / "bad.npy")
    _save_official(path, record)
    with pytest.raises(ValueError, match=message) as e:
        scores.read(path, ("hr_cam",))
    assert str(e.value).startswith(path)


def test_nan_scores_are_refused_in_both_formats(tmp_path):
    cam = _cam()
    cam[1, 2, 3] = np.nan
    official = str(tmp_path / "nan.npy")
    _save_official(official, {"keys": KEYS, "hr_cam": cam})
    with pytest.raises(ValueError, match=r"nan\.npy: 'hr_cam' has 1 NaN/Inf values"):
        scores.read(official, ("hr_cam",))
    ours = str(tmp_path / "nan.npz")
    with pytest.raises(ValueError, match=r"nan\.npz: 'hr_cam' has 1 NaN/Inf"):
        scores.write(ours, KEYS, hr_cam=cam)
    assert not os.path.exists(ours)
    np.savez(ours, keys=KEYS, hr_cam=cam)
    with pytest.raises(ValueError, match=r"nan\.npz: 'hr_cam' has 1 NaN/Inf"):
        scores.read(ours, ("hr_cam",))


def test_npz_errors_name_the_file(tmp_path):
    missing_array = str(tmp_path / "m.npz")
    np.savez(missing_array, keys=KEYS, cam=_cam())
    with pytest.raises(ValueError, match=r"m\.npz: no array \['rw'\]"):
        scores.read(missing_array, ("rw",))
    pickled = str(tmp_path / "p.npz")
    with open(pickled, "wb") as f:
        np.save(f, np.array({"keys": KEYS}, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"p\.npz: not a readable score file"):
        scores.read(pickled, ("rw",))
    cut = str(tmp_path / "cut.npz")
    np.savez(cut, keys=KEYS, cam=_cam())
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) // 2)
    with pytest.raises(UserError, match=r"cut\.npz: not a readable score file .*; delete it and "
                       r"rerun the stage that wrote it$"):  # fmt: skip
        scores.read(cut, ("cam",))
    plain = str(tmp_path / "plain.npy")
    np.save(plain, _cam())
    with pytest.raises(ValueError, match=r"plain\.npy: expected the reference's pickled dict"):
        scores.read(plain, ("rw",))
    with pytest.raises(ValueError, match=r"x\.txt: a score file is an \.npz"):
        scores.read(str(tmp_path / "x.txt"), ("rw",))
