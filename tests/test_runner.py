"""The stage runner's promises, on toy stages: nothing finished is lost, nothing wrong looks
finished, one run per workdir, and a summary of what was measured."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest

from pnoc_jax import pipeline
from pnoc_jax.core import artifacts, fileio
from pnoc_jax.core.errors import UserError


def _toy_run(config, workdir, dataset):
    """Writes out.txt (unless thresholds start at 0.5) and a metrics.json; counts its runs."""
    folder = artifacts.stage_dir(workdir, "toy")
    runs = os.path.join(workdir, "toy_runs.txt")
    with open(runs, "a") as f:
        f.write(f"{config.eval.thresholds}\n")
    if config.eval.thresholds[0] == 0.5:
        return  # a stage that "forgets" an output
    fileio.write_text(os.path.join(folder, "out.txt"), str(config.eval.thresholds))
    fileio.write_json(artifacts.metrics_file(workdir, "toy"), {"miou": 0.25, "split": "val"})


def _toy_missing(config, workdir, dataset):
    del config, dataset
    out = os.path.join(artifacts.stage_dir(workdir, "toy"), "out.txt")
    return artifacts.missing([out, artifacts.metrics_file(workdir, "toy")])


@pytest.fixture
def toy(tiny_config, monkeypatch):
    stage = pipeline.Stage(
        "toy",
        _toy_run,
        ("eval",),
        missing=_toy_missing,
        headline=lambda m: f"toy mIoU ({m['split']}): {100 * m['miou']:.2f}",
    )
    monkeypatch.setitem(pipeline.STAGES, "toy", stage)
    tiny_config.stages = ("toy",)
    return tiny_config


def _runs(workdir, stage="toy"):
    with open(os.path.join(workdir, f"{stage}_runs.txt")) as f:
        return len(f.readlines())


def _out(workdir, stage_dir="toy"):
    with open(os.path.join(workdir, stage_dir, "out.txt")) as f:
        return f.read()


def test_a_config_that_comes_back_reuses_its_folder(toy, tmp_path):
    workdir = str(tmp_path)
    a, b = (0.1, 0.2), (0.2, 0.3)
    toy.eval.thresholds = a
    assert pipeline.run_stage("toy", toy, workdir)
    toy.eval.thresholds = b
    assert pipeline.run_stage("toy", toy, workdir)  # a's folder moved aside, b made
    assert _out(workdir, "toy.stale-1") == str(a) and _out(workdir) == str(b)
    toy.eval.thresholds = a
    assert not pipeline.run_stage("toy", toy, workdir)  # a's finished folder comes back
    assert _runs(workdir) == 2
    assert _out(workdir) == str(a) and _out(workdir, "toy.stale-2") == str(b)
    toy.eval.thresholds = b
    assert not pipeline.run_stage("toy", toy, workdir)
    assert _runs(workdir) == 2 and _out(workdir) == str(b)


def test_a_stage_without_its_outputs_is_not_done(toy, tmp_path):
    workdir = str(tmp_path)
    toy.eval.thresholds = (0.5, 0.6)  # _toy_run writes no out.txt
    with pytest.raises(pipeline.StageError, match=r"missing .*toy/out.txt"):
        pipeline.run_stage("toy", toy, workdir)
    assert not os.path.exists(artifacts.done_file(workdir, "toy"))
    assert not pipeline.is_finished(workdir, "toy", toy)
    with pytest.raises(pipeline.StageError):  # still not done when rerun
        pipeline.run_stage("toy", toy, workdir)


def test_stale_folders_are_kept_reported_and_removed_only_on_request(toy, tmp_path, capsys):
    workdir = str(tmp_path)
    for first in (0.1, 0.2, 0.3, 0.4, 0.45):
        toy.eval.thresholds = (first, 0.9)
        pipeline.run_stages(toy, workdir)
    stale = sorted(d for d in os.listdir(workdir) if d.startswith("toy.stale-"))
    assert stale == [f"toy.stale-{n}" for n in (1, 2, 3, 4)]  # the first recipe's is kept
    assert _out(workdir, "toy.stale-1") == str((0.1, 0.9))
    out = capsys.readouterr().out
    assert "Stale folders (made with other configs or older inputs, kept): toy.stale-1 (" in out
    assert "--remove_stale` deletes them" in out
    target = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    os.rename(os.path.join(workdir, "toy.stale-4"), target)
    os.symlink(target, os.path.join(workdir, "toy.stale-4"))
    lines = pipeline.remove_stale(workdir)
    assert lines[0].startswith(f"removed {workdir}/toy.stale-1 (") and len(lines) == 4
    assert lines[3] == f"removed the link {workdir}/toy.stale-4 (its target {target} is kept)"
    assert not any(d.startswith("toy.stale-") for d in os.listdir(workdir))
    assert (target / "out.txt").exists() and _out(workdir) == str((0.45, 0.9))


def test_a_symlinked_stage_folder_is_moved_aside_as_a_link(toy, tmp_path):
    workdir, target = str(tmp_path / "run"), tmp_path / "elsewhere"
    toy.eval.thresholds = (0.1, 0.2)
    pipeline.run_stage("toy", toy, workdir)
    os.rename(os.path.join(workdir, "toy"), target)
    os.symlink(target, os.path.join(workdir, "toy"))
    toy.eval.thresholds = (0.3, 0.4)
    for _ in range(2):  # the second run: nothing to move, nothing to remove
        pipeline.run_stage("toy", toy, workdir)
    assert os.path.islink(os.path.join(workdir, "toy.stale-1"))
    assert _out(workdir, "toy.stale-1") == str((0.1, 0.2)) and _runs(workdir) == 2


def test_a_finished_stage_with_damaged_outputs_runs_again(toy, tmp_path):
    workdir = str(tmp_path)
    toy.eval.thresholds = (0.1, 0.2)
    pipeline.run_stage("toy", toy, workdir)
    metrics = artifacts.metrics_file(workdir, "toy")
    for damage in ("delete", "empty", "half"):
        if damage == "delete":
            os.remove(metrics)
        else:
            with open(metrics, "r+") as f:
                f.truncate(0 if damage == "empty" else 5)
        assert pipeline.verify("toy", toy, workdir)
        assert pipeline.run_stage("toy", toy, workdir)
        assert not pipeline.verify("toy", toy, workdir)
    assert _runs(workdir) == 4
    assert not pipeline.run_stage("toy", toy, workdir)


def _reader_run(config, workdir, dataset):
    """Copies toy's out.txt; counts its runs."""
    del config, dataset
    with open(os.path.join(workdir, "reader_runs.txt"), "a") as f:
        f.write("run\n")
    fileio.write_text(os.path.join(workdir, "reader", "out.txt"), _out(workdir))


def _reader_missing(config, workdir, dataset):
    del config, dataset
    return artifacts.missing([os.path.join(workdir, "reader", "out.txt")])


def test_a_stage_run_again_runs_its_finished_readers_again_in_fresh_folders(
    toy, tmp_path, monkeypatch, caplog
):
    reader = pipeline.Stage("reader", _reader_run, ("eval",), ("toy",), missing=_reader_missing)
    monkeypatch.setitem(pipeline.STAGES, "reader", reader)
    workdir, toy.stages = str(tmp_path), ("toy", "reader")
    pipeline.run_stages(toy, workdir)
    os.remove(artifacts.metrics_file(workdir, "toy"))
    pipeline.run_stages(toy, workdir)
    assert "stage toy: finished, but its outputs are missing or damaged" in caplog.text
    assert "stage reader: its input stage toy was made again after it ran: running" in caplog.text
    assert _out(workdir, "reader.stale-1") == _out(workdir, "reader")  # the old one kept
    assert _runs(workdir) == 2 and _runs(workdir, "reader") == 2
    pipeline.run_stages(toy, workdir)  # repaired: nothing more runs
    assert _runs(workdir) == 2 and _runs(workdir, "reader") == 2
    os.remove(artifacts.done_file(workdir, "toy"))  # e.g. its repair was interrupted
    pipeline.run_stages(toy, workdir)
    assert (tmp_path / "reader.stale-2").is_dir() and _runs(workdir) == 3
    assert _runs(workdir, "reader") == 3


def test_a_reader_out_of_the_run_is_out_of_date_until_a_run_selects_it(toy, tmp_path, monkeypatch):
    reader = pipeline.Stage("reader", _reader_run, ("eval",), ("toy",), missing=_reader_missing)
    next_reader = pipeline.Stage("next", _reader_run, ("eval",), ("reader",))
    monkeypatch.setitem(pipeline.STAGES, "reader", reader)
    monkeypatch.setitem(pipeline.STAGES, "next", next_reader)
    workdir, toy.stages = str(tmp_path), ("toy", "reader", "next")
    pipeline.run_stages(toy, workdir)
    os.remove(artifacts.metrics_file(workdir, "toy"))
    toy.stages = ("toy",)  # its readers are left out of this run
    pipeline.run_stages(toy, workdir)
    assert _runs(workdir) == 2 and _runs(workdir, "reader") == 2  # reader counts both
    assert pipeline.out_of_date(workdir, "reader", toy) == (
        "its input stage toy was made again after it ran"
    )
    toy.stages = ("next",)  # the stage between them is out of date: the chain is broken
    with pytest.raises(
        pipeline.StageError, match=r"needs stage reader .* \(its input stage toy was"
    ):
        pipeline.run_stages(toy, workdir)
    # Killed after moving the reader aside: its old folder does not come back as finished.
    os.rename(os.path.join(workdir, "reader"), os.path.join(workdir, "reader.stale-9"))
    toy.stages = ("reader", "next")
    pipeline.run_stages(toy, workdir)
    assert _runs(workdir, "reader") == 4 and (tmp_path / "reader.stale-9").is_dir()
    assert pipeline.is_finished(workdir, "next", toy)
    assert not pipeline.run_stage("reader", toy, workdir)


def test_a_partial_run_keeps_the_summary_rows_of_the_other_stages(toy, tmp_path, monkeypatch):
    workdir = str(tmp_path)
    other = dataclasses.replace(pipeline.STAGES["toy"], name="toy2")
    monkeypatch.setitem(pipeline.STAGES, "toy2", other)
    monkeypatch.setattr(artifacts, "stage_dir", lambda w, s: os.path.join(w, "toy"))
    pipeline.run_stages(toy, workdir)
    toy.stages = ()
    table = pipeline.write_summary(toy, workdir)
    assert "| toy | toy mIoU (val): 25.00 |" in table


def test_corrupted_records_name_the_file(toy, tmp_path):
    workdir = str(tmp_path)
    pipeline.run_stage("toy", toy, workdir)
    with open(artifacts.done_file(workdir, "toy"), "w") as f:
        f.write("{not json")
    with pytest.raises(UserError, match=r"toy/DONE.json is not valid JSON"):
        pipeline.run_stage("toy", toy, workdir)


def test_summary_lists_evaluated_stages_also_when_all_were_skipped(toy, tmp_path, capsys):
    workdir = str(tmp_path)
    pipeline.run_stages(toy, workdir)
    pipeline.run_stages(toy, workdir)  # everything skipped: the summary still prints
    out = capsys.readouterr().out
    assert out.count("| toy | toy mIoU (val): 25.00 |") == 2
    json_path, md_path = artifacts.summary_files(workdir)
    assert fileio.read_json(json_path) == {"toy": {"miou": 0.25}}
    with open(md_path) as f:
        assert artifacts.stage_dir(workdir, "toy") in f.read()


def test_a_second_run_on_the_workdir_is_refused(toy, tmp_path):
    workdir = str(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pnoc_jax import pipeline
                with pipeline.workdir_lock({workdir!r}):
                    print("locked", flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by pid {holder.pid} on "):
            pipeline.run_stages(toy, workdir)
        assert not os.path.exists(artifacts.stage_dir(workdir, "toy"))
    finally:
        holder.kill()
        holder.wait()
    pipeline.run_stages(toy, workdir)  # the lock died with its holder
    assert pipeline.is_finished(workdir, "toy", toy)


def test_a_failing_stage_keeps_the_finished_folder_of_the_previous_config(toy, tmp_path):
    """A stage that fails at run time leaves the old folder aside; fixing the config reuses it."""
    workdir = str(tmp_path)
    toy.eval.thresholds = (0.1, 0.2)
    pipeline.run_stage("toy", toy, workdir)
    broken = dataclasses.replace(pipeline.STAGES["toy"], run=lambda c, w, d: 1 / 0)
    pipeline.STAGES["toy"] = broken
    toy.eval.thresholds = (0.3, 0.4)
    with pytest.raises(ZeroDivisionError):
        pipeline.run_stage("toy", toy, workdir)
    toy.eval.thresholds = (0.1, 0.2)  # the typo is fixed: nothing is redone
    assert not pipeline.run_stage("toy", toy, workdir)
    assert _out(workdir) == str((0.1, 0.2)) and _runs(workdir) == 1


def test_a_stopped_stage_leaves_no_temporary_files(toy, tmp_path):
    def interrupted(config, workdir, dataset):
        del config
        leftover = os.path.join(artifacts.stage_dir(workdir, "toy"), "val", ".a.png.x1y2.tmp")
        os.makedirs(os.path.dirname(leftover))
        fileio.write_text(os.path.join(os.path.dirname(leftover), "b.png"), "whole")
        open(leftover, "w").close()  # what a write cut short by SIGKILL of a worker leaves
        raise KeyboardInterrupt

    pipeline.STAGES["toy"] = dataclasses.replace(pipeline.STAGES["toy"], run=interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_stage("toy", toy, str(tmp_path))
    assert os.listdir(tmp_path / "toy" / "val") == ["b.png"]
