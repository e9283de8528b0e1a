"""The loop's guards on a toy network: finite checkpoints only, lr/grad_norm, Ctrl-C and SIGTERM."""

import functools
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pnoc_jax.core import artifacts, checkpoint, distributed, optim, rng, writers
from pnoc_jax.core.loop import NonFiniteLoss, Preempted, Update, jit_update, run_training
from pnoc_jax.core.train_state import create_state

STAGE, STATE, STEPS, BATCH = "toy", "toy", 6, 8


class _Toy(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(1, name="head")(x)


class _Plan:
    """Batch s is a pure function of s, like `data.pipeline.TrainingInput`."""

    total_steps = STEPS

    def batches(self, start: int, workers: int = 0):
        del workers  # batches made here, in this process
        for step in range(start, STEPS):
            r = np.random.default_rng(step)
            x = r.normal(size=(BATCH, 4)).astype(np.float32)
            yield {"x": x, "y": x.sum(axis=1, keepdims=True)}


def _update(state, others, batch, carry, step, *, blow_up_at):
    """Least squares; after step `blow_up_at` (1-based) the weights become inf, while the loss
    this step reports (computed before the update) is still finite."""
    del others

    def loss_fn(params):
        return jnp.mean((state.apply_fn({"params": params}, batch["x"]) - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state, stats = state.apply_gradients_with_stats(grads=grads)
    params = jax.tree.map(lambda p: jnp.where(step + 1 == blow_up_at, jnp.inf, p), state.params)
    return state.replace(params=params), {"loss": loss, **stats}, carry


def _train(workdir, *, ckpt_every=2, blow_up_at=-1, accumulate_steps=1, on_step=None):
    mesh = distributed.make_mesh()
    cfg = optim.OptimizerConfig(
        lr=0.01, total_steps=STEPS // accumulate_steps, accumulate_steps=accumulate_steps
    )
    tx, stats = optim.make_optimizer(cfg)
    state = create_state(_Toy(), tx, rng.init_key(0), (1, 4), mesh, step_stats=stats)
    update = Update(STATE, jit_update(functools.partial(_update, blow_up_at=blow_up_at), mesh))
    return run_training(
        workdir=str(workdir),
        stage=STAGE,
        states={STATE: state},
        updates=[update],
        plan=_Plan(),
        mesh=mesh,
        runtime=ml_collections.ConfigDict(
            {"ckpt_every": ckpt_every, "log_every": 1, "input_workers": 0}
        ),
        on_step=on_step,
    )


def _latest(workdir):
    """(latest checkpointed step, its raw state tree) or (None, None)."""
    ckpt = checkpoint.Checkpointer(artifacts.checkpoint_dir(str(workdir), STAGE), save_every=1)
    step = ckpt.latest_step()
    raw = None
    if step is not None:
        args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore()})
        raw = jax.device_get(ckpt.manager.restore(step, args=args)[STATE])
    ckpt.close()
    return step, raw


def _rows(workdir):
    return writers.read_metrics(artifacts.stage_dir(str(workdir), STAGE))


def test_weights_blowing_up_at_a_save_step_are_not_saved(tmp_path):
    # Step 4 is a save step; its reported loss is finite, its updated weights are not.
    with pytest.raises(NonFiniteLoss) as info:
        _train(tmp_path, ckpt_every=2, blow_up_at=4)
    message = str(info.value)
    assert "non-finite values at step 4" in message
    assert "state 'toy' (params 2 of 2 arrays: params/head/bias, params/head/kernel)" in message
    assert "metric" not in message.split("Stopped")[0]  # the loss check alone would pass
    assert "Kept: the checkpoint of step 2" in message
    assert "resumes from step 2" in message
    assert f"{STAGE}.stale-N" in message
    step, raw = _latest(tmp_path)
    assert step == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(raw) if x.dtype.kind == "f")
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3]  # step 4 is not logged either
    assert not os.path.exists(artifacts.weights_file(str(tmp_path), STAGE, STATE))


def test_divergence_before_the_first_checkpoint_says_none_is_kept(tmp_path):
    with pytest.raises(NonFiniteLoss) as info:
        _train(tmp_path, ckpt_every=4, blow_up_at=1)
    message = str(info.value)
    # Step 2's loss is computed with step 1's inf weights: both the metric and the state.
    assert "non-finite values at step 2: metrics grad_norm, loss" in message
    assert "state 'toy'" in message
    assert "No checkpoint had been saved yet" in message and "from scratch" in message
    assert _latest(tmp_path)[0] is None


def test_lr_honours_accumulation_and_grad_norm_is_logged(tmp_path):
    _train(tmp_path, accumulate_steps=2)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    schedule = optim.poly_schedule(0.01, STEPS // 2)
    for r in rows:  # micro-steps 2k and 2k+1 make optimizer step k
        assert r["train/lr"] == pytest.approx(float(schedule((r["step"] - 1) // 2)), rel=1e-6)
        assert np.isfinite(r["train/grad_norm"]) and r["train/grad_norm"] > 0
    assert rows[0]["train/lr"] == rows[1]["train/lr"] > rows[2]["train/lr"]


def test_one_ctrl_c_checkpoints_the_step_two_exit_at_once(tmp_path):
    def ctrl_c(times):
        def hook(step):
            assert step <= 3, "the loop went on after Ctrl-C"
            if step == 3:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)

        return hook

    before = signal.getsignal(signal.SIGINT)  # pytest-xdist workers ignore SIGINT
    once = tmp_path / "once"
    with pytest.raises(Preempted) as info:
        _train(once, ckpt_every=2, on_step=ctrl_c(1))
    assert info.value.signum == signal.SIGINT and info.value.exit_code == 130
    assert _latest(once)[0] == 3
    assert signal.getsignal(signal.SIGINT) is before  # restored
    _train(once)  # resumes from step 3 and finishes
    assert [r["step"] for r in _rows(once)] == list(range(1, STEPS + 1))

    twice = tmp_path / "twice"
    with pytest.raises(KeyboardInterrupt):
        _train(twice, ckpt_every=2, on_step=ctrl_c(2))
    assert _latest(twice)[0] == 2  # no checkpoint at step 3
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_exit_code(tmp_path):
    def sigterm_at_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted) as info:
        _train(tmp_path, on_step=sigterm_at_3)
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert _latest(tmp_path)[0] == 3
