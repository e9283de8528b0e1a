"""The per-image driver under SIGTERM and Ctrl-C: the images in flight finish, the stage stops
with `Preempted` (exit 143 / 130), no temporary file stays, and a rerun does only the rest."""

import os
import signal

import pytest

from pnoc_jax.core import artifacts, fileio
from pnoc_jax.core.loop import Preempted
from pnoc_jax.data import datasets
from pnoc_jax.inference import per_image


def write_one(task: tuple[str, str]) -> str:
    """The worker: one small file per image (module level: the pool pickles it by name)."""
    path, image_id = task
    fileio.write_text(path, image_id)
    return path


@pytest.mark.parametrize(
    ("signum", "workers"),
    [pytest.param(signal.SIGTERM, 2, marks=pytest.mark.slow), (signal.SIGINT, 1)],
)  # the pool (forkserver start: 14 s measured) drains the tasks in flight
def test_a_stop_signal_finishes_the_images_in_flight_and_a_rerun_the_rest(
    tiny_config, tmp_path, monkeypatch, signum, workers
):
    tiny_config.runtime.update(num_workers=workers, predict_batch_size=4)
    folder = tmp_path / "toy"

    def outputs(split, image_id, labelled):
        del labelled
        return [str(folder / split / f"{image_id}.txt")]

    batches, signalled = [], []

    def compute(examples):
        batches.append(len(examples))
        if len(batches) == 3 and not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signum)  # the signal arrives while the third batch is computed
        return [None] * len(examples)

    dataset = datasets.resolve(tiny_config)

    def run():
        per_image.run(
            "toy", dataset, ["val"], outputs, compute,
            lambda split, example, _: (outputs(split, example["id"], True)[0], example["id"]),
            write_one, runtime=tiny_config.runtime, compute_unlabelled=True,
        )  # fmt: skip

    name = signal.Signals(signum).name
    expected = (
        rf"toy: after \d+ more image\(s\) of val: stopped by {name}; what is written is whole"
    )
    with pytest.raises(Preempted, match=expected) as info:
        run()
    assert info.value.exit_code == 128 + signum
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored
    written = sorted(os.listdir(folder / "val"))
    total = len(dataset.index("val"))
    assert 8 <= len(written) < total  # the batches before the signal, written whole
    assert not [n for n in written if n.endswith(".tmp")]
    assert all(artifacts.damage(str(folder / "val" / n)) is None for n in written)
    batches.clear()
    run()  # no signal now: the rest only
    assert sum(batches) == total - len(written)
    assert not per_image.missing(dataset, ["val"], outputs)
