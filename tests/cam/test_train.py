"""The training loop: data-parallel equivalence, exact resume, preemption and the NaN guard."""

import dataclasses
import functools
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pnoc_jax import pipeline
from pnoc_jax.cam import strategies
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import artifacts, checkpoint, distributed, optim, rng, weights, writers
from pnoc_jax.core.loop import NonFiniteLoss, Preempted
from pnoc_jax.core.train_state import create_state
from pnoc_jax.data import datasets
from tests.core.test_writers import tensorboard_scalars


def _final_params(workdir):
    """The exported final variables of train_cam."""
    return weights.load(artifacts.weights_file(workdir, "train_cam"))


def _checkpointed_params(workdir):
    """The latest checkpoint's f params, restored without a target (no optimizer needed)."""
    ckpt = checkpoint.Checkpointer(artifacts.checkpoint_dir(workdir, "train_cam"), save_every=1)
    step = ckpt.latest_step()
    if step is None:
        ckpt.close()
        return None, None
    raw = ckpt.manager.restore(step, args=ocp.args.Composite(f=ocp.args.StandardRestore()))
    ckpt.close()
    return step, jax.device_get(raw["f"]["params"])


def _rows(workdir):
    """metrics.jsonl of train_cam without the wall-clock column."""
    rows = writers.read_metrics(artifacts.stage_dir(workdir, "train_cam"))
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def _assert_logged_once(workdir, expected_rows):
    """Each step logged once, equal to `expected_rows`, in metrics.jsonl and in TensorBoard."""
    rows = _rows(workdir)
    assert [r["step"] for r in rows] == [r["step"] for r in expected_rows]
    assert rows == expected_rows
    events = tensorboard_scalars(artifacts.stage_dir(workdir, "train_cam"))
    assert set(events) == set(rows[0]) - {"step"}
    for tag, points in events.items():
        assert points == [(r["step"], np.float32(r[tag])) for r in rows], tag


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _one_step(config, devices, batch):
    mesh = distributed.make_mesh(devices)
    model = cam_train.build_model(config)
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(lr=0.1, total_steps=10))
    state = create_state(model, tx, rng.init_key(0), (1, 32, 32, 3), mesh)
    cfg = strategies.StrategyConfig("cam", total_steps=10, label_smoothing=0.1)
    (update,) = strategies.build_updates(cfg, model=model, oc_model=None, mesh=mesh, seed=0)
    with jax.set_mesh(mesh):
        state, metrics, _ = update.fn(
            state, {}, distributed.to_global(batch, mesh), None, jnp.asarray(0)
        )
    return jax.device_get(state.params), jax.device_get(state.batch_stats), float(metrics["loss"])


@pytest.mark.slow
def test_one_step_same_on_1_and_8_devices(tiny_config):
    assert jax.device_count() == 8
    r = np.random.default_rng(0)
    batch = {
        "image": r.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "labels": (r.random((8, 6)) < 0.4).astype(np.float32),
    }
    p1, s1, l1 = _one_step(tiny_config, jax.devices()[:1], batch)
    p8, s8, l8 = _one_step(tiny_config, jax.devices(), batch)
    assert l1 == pytest.approx(l8, rel=1e-6)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p8, s8)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_preempted_and_crashed_runs_resume_exactly(tiny_config, tmp_path):
    full = str(tmp_path / "full")
    cam_train.train_cam(tiny_config, full, datasets.resolve(tiny_config))
    expected = _final_params(full)
    # The exported weights are the final checkpoint's variables.
    step, params = _checkpointed_params(full)
    assert step == tiny_config.train.steps
    _assert_trees_equal(params, expected["params"])
    # Every step logs its losses, the base learning rate (poly, no accumulation) and grad_norm.
    expected_rows = _rows(full)
    _assert_logged_once(full, expected_rows)
    assert {"train/loss", "train/loss_cls", "train/lr", "train/grad_norm"} <= set(expected_rows[0])
    schedule = optim.poly_schedule(tiny_config.train.lr, tiny_config.train.steps)
    for r in expected_rows:
        assert r["train/lr"] == pytest.approx(float(schedule(r["step"] - 1)), rel=1e-6)
        assert np.isfinite(r["train/grad_norm"]) and r["train/grad_norm"] > 0

    # SIGTERM after step 3: a checkpoint at step 3 is written and Preempted raised.
    preempted = str(tmp_path / "preempted")

    def sigterm_at_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted) as info:
        cam_train.train_cam(
            tiny_config, preempted, datasets.resolve(tiny_config), on_step=sigterm_at_3
        )
    assert info.value.exit_code == 143
    assert not os.path.exists(artifacts.weights_file(preempted, "train_cam"))
    ckpt_dir = artifacts.checkpoint_dir(preempted, "train_cam")
    manager = checkpoint.Checkpointer(ckpt_dir, save_every=2)
    assert manager.latest_step() == 3
    manager.close()
    cam_train.train_cam(tiny_config, preempted, datasets.resolve(tiny_config))
    _assert_trees_equal(_final_params(preempted), expected)
    _assert_logged_once(preempted, expected_rows)

    # A hard crash at step 4, after step 3 was logged: resumes from the periodic checkpoint at
    # step 2, and step 3 is logged once, by the resumed run.
    crashed = str(tmp_path / "crashed")

    def crash_at_4(step):
        if step == 4:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        cam_train.train_cam(tiny_config, crashed, datasets.resolve(tiny_config), on_step=crash_at_4)
    assert [r["step"] for r in _rows(crashed)] == [1, 2, 3]
    cam_train.train_cam(tiny_config, crashed, datasets.resolve(tiny_config))
    _assert_trees_equal(_final_params(crashed), expected)
    _assert_logged_once(crashed, expected_rows)


def _all_finite(tree):
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_exploding_head_is_never_checkpointed(tiny_config, tmp_path):
    """lr 1e38 with the reference's 10x/20x head multipliers: the head's learning rate
    overflows to inf, so the first update makes the head's weights inf while the loss that step
    reports (computed before the update) is finite. Every step is a save step."""
    tiny_config.runtime.ckpt_every = 1
    exploding = tiny_config.copy_and_resolve_references()
    exploding.train.update(lr=1e38, lr_mult=(1.0, 2.0, 10.0, 20.0))

    # Divergence before the first checkpoint: nothing is saved, the run restarts from scratch.
    fresh = str(tmp_path / "fresh")
    with pytest.raises(NonFiniteLoss) as info:
        cam_train.train_cam(exploding, fresh, datasets.resolve(exploding))
    message = str(info.value)
    assert message.startswith("train_cam: non-finite values at step 1: state 'f' (")
    assert "params/classifier/kernel" in message and "metric" not in message.split("Stopped")[0]
    assert "No checkpoint had been saved yet" in message and "from scratch" in message
    assert "train_cam.stale-N" in message
    assert _checkpointed_params(fresh) == (None, None)
    assert not os.path.exists(artifacts.weights_file(fresh, "train_cam"))

    # After good checkpoints (steps 1, 2), the same explosion at step 3 keeps step 2.
    resumed = str(tmp_path / "resumed")

    def sigterm_at_2(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        cam_train.train_cam(
            tiny_config, resumed, datasets.resolve(tiny_config), on_step=sigterm_at_2
        )
    with pytest.raises(NonFiniteLoss) as info:
        cam_train.train_cam(exploding, resumed, datasets.resolve(exploding))
    message = str(info.value)
    assert "non-finite values at step 3: state 'f'" in message
    assert "Kept: the checkpoint of step 2" in message and "resumes from step 2" in message
    step, params = _checkpointed_params(resumed)
    assert step == 2 and _all_finite(params)
    assert [r["step"] for r in _rows(resumed)] == [1, 2]


@pytest.mark.slow
def test_a_preempted_stage_resubmitted_with_other_runtime_knobs_resumes(
    tiny_config, tmp_path, monkeypatch
):
    """`config.runtime` is in no fingerprint: another ckpt_every / log_every / input_workers
    (grain worker processes) resumes the run."""
    workdir = str(tmp_path)

    def sigterm_at_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    stage = pipeline.STAGES["train_cam"]
    preempting = dataclasses.replace(
        stage, run=functools.partial(cam_train.train_cam, on_step=sigterm_at_3)
    )
    monkeypatch.setitem(pipeline.STAGES, "train_cam", preempting)
    with pytest.raises(Preempted):
        pipeline.run_stage("train_cam", tiny_config, workdir)
    monkeypatch.setitem(pipeline.STAGES, "train_cam", stage)
    tiny_config.runtime.update(ckpt_every=5, log_every=2, input_workers=2)
    assert pipeline.run_stage("train_cam", tiny_config, workdir)
    assert not [d for d in os.listdir(workdir) if d.startswith("train_cam.stale")]
    steps = [row["step"] for row in writers.read_metrics(artifacts.stage_dir(workdir, "train_cam"))]
    # Steps 1-3 before the preemption; then every 2nd, and step 5 (a checkpoint step logs too).
    assert steps == [1, 2, 3, 4, 5, 6]


def test_f_and_noc_optimizers_sum_accumulated_gradients_with_weight_decay(tiny_config):
    """f's and noc's optimizers of a B16 x 2 section: one optimizer step over two micro-batches
    equals the reference's w - lr·mult·(g1 + g2 + wd·w) (torch SGD, loss not divided), with the
    section's own lr (no doubling) and the decay counted once."""
    section = tiny_config.train
    section.update(accumulate_steps=2, weight_decay=0.05, lr=0.1, noc_lr_mult=1.0)
    section.lr_mult = (1.0, 2.0, 10.0, 20.0)
    params = {
        "backbone": {"conv": {"kernel": jnp.full((3,), 0.5)}, "bn": {"bias": jnp.full((3,), 0.5)}},
        "classifier": {"kernel": jnp.full((3,), 0.5)},
    }
    g1 = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
    g2 = jax.tree.map(lambda p: jnp.full_like(p, -0.75), params)
    for frozen in ((), ("bn",)):  # f; noc (BN frozen)
        cfg = cam_train.optimizer_config(section, 20, frozen, lr_mult=section.noc_lr_mult)
        assert (cfg.lr, cfg.total_steps, cfg.accumulation) == (0.1, 10, "sum")
        tx, _ = optim.make_optimizer(cfg)
        state = tx.init(params)
        updates, state = tx.update(g1, state, params)
        assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))
        updates, _ = tx.update(g2, state, params)
        # (g1 + g2) = -0.5; weights decay: -0.5 + 0.05 * 0.5 = -0.475.
        np.testing.assert_allclose(updates["backbone"]["conv"]["kernel"], 0.1 * 0.475, rtol=1e-6)
        np.testing.assert_allclose(updates["classifier"]["kernel"], 10 * 0.1 * 0.475, rtol=1e-6)
        bias = 0.0 if frozen else 2 * 0.1 * 0.5  # BN offset: x2, no decay; frozen for noc
        np.testing.assert_allclose(updates["backbone"]["bn"]["bias"], bias, rtol=1e-6)
