"""The split sweep reads score files through `core.scores`: ours, the reference's, never code."""

import os
import pickle

import numpy as np
import pytest

from pnoc_jax.core import artifacts, scores
from pnoc_jax.evaluation import miou, sweep

THRESHOLDS = np.array([0.2, 0.5])


def _examples(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        mask = np.zeros((6, 7), np.uint8)
        mask[1:4, 2 : 4 + i] = 3
        out.append({"id": f"im{i}", "mask": mask, "labels": np.eye(5)[2]})
        out[-1]["scores"] = rng.random((1, 6, 7)).astype(np.float32)
    return out


def test_sweep_reads_ours_and_the_official_format(tmp_path):
    examples, directory, keys = _examples(3), str(tmp_path), np.array([0, 3])
    scores.write(artifacts.score_file(directory, "im0"), keys, hr_cam=examples[0]["scores"])
    for ex in examples[1:]:
        record = np.array({"keys": keys, "hr_cam": ex["scores"]}, dtype=object)
        np.save(artifacts.official_score_file(directory, ex["id"]), record, allow_pickle=True)
    total = sweep.sweep_confusions(examples, directory, "hr_cam", THRESHOLDS, 6).local
    expected = sum(
        miou.sweep_confusions(ex["mask"], ex["scores"], keys, THRESHOLDS, 6) for ex in examples
    )
    np.testing.assert_array_equal(total, expected)


def test_sweep_refuses_a_crafted_file_and_runs_nothing(tmp_path):
    examples, directory, marker = _examples(1), str(tmp_path), tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(artifacts.official_score_file(directory, "im0"), "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        pickle.dump(np.array(RunsCode(), dtype=object), f, protocol=3)
    with pytest.raises(scores.RefusedPickleError, match=r"im0\.npy.*'posix\.system'"):
        sweep.sweep_confusions(examples, directory, "hr_cam", THRESHOLDS, 6)
    assert not marker.exists()


def test_sweep_errors_name_the_file(tmp_path):
    examples, directory = _examples(1), str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"im0\.npz: score file missing"):
        sweep.sweep_confusions(examples, directory, "hr_cam", THRESHOLDS, 6)
    scores.write(artifacts.score_file(directory, "im0"), np.array([0, 3]), rw=np.ones((1, 5, 7)))
    with pytest.raises(ValueError, match=r"im0\.npz: no array \['hr_cam'\]"):
        sweep.sweep_confusions(examples, directory, "hr_cam", THRESHOLDS, 6)
    with pytest.raises(ValueError, match=r"im0\.npz: rw \(5, 7\) does not match the mask"):
        sweep.sweep_confusions(examples, directory, "rw", THRESHOLDS, 6)
