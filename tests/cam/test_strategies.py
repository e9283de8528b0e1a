"""P-NOC's two updates: isolation, the CSE-gradient switch, 1 vs 8 devices, two-state resume."""

import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pnoc_jax.cam import losses, strategies
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import artifacts, distributed, optim, rng, weights
from pnoc_jax.core.checkpoint import Checkpointer
from pnoc_jax.core.loop import Preempted
from pnoc_jax.core.train_state import create_state
from pnoc_jax.data import datasets
from tests.collectives import collectives, unexpected

SIZE, CLASSES, BATCH = 32, 6, 8


def _batch():
    r = np.random.default_rng(1)
    labels = (r.random((BATCH, CLASSES)) < 0.4).astype(np.float32)
    labels[np.arange(BATCH), r.integers(0, CLASSES, BATCH)] = 1.0
    return {"image": r.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32), "labels": labels}


def _setup(config, devices, strategy="pnoc", leak=True):
    mesh = distributed.make_mesh(devices)
    model = cam_train.build_model(config)
    oc_model = cam_train.build_model(config, frozen_bn=True)
    shape = (1, SIZE, SIZE, 3)
    tx, stats = optim.make_optimizer(optim.OptimizerConfig(lr=0.1, total_steps=10))
    oc_cfg = optim.OptimizerConfig(lr=0.05, total_steps=10, frozen=("bn",))
    oc_tx, oc_stats = optim.make_optimizer(oc_cfg)
    states = {
        "f": create_state(model, tx, rng.init_key(0), shape, mesh, step_stats=stats),
        "oc": create_state(oc_model, oc_tx, rng.init_key(1), shape, mesh, step_stats=oc_stats),
    }
    cfg = strategies.StrategyConfig(
        strategy, total_steps=10, label_smoothing=0.1, noc_cse_gradient=leak
    )
    updates = strategies.build_updates(cfg, model=model, oc_model=oc_model, mesh=mesh, seed=0)
    return mesh, states, updates, cfg, model, oc_model


def _run_step(mesh, states, updates, batch, step=3, check_collectives=False):
    """One step of every update; optionally asserts each compiled update communicates only
    what data parallelism needs (all-reduces of gradients and BN statistics)."""
    out, metrics, carry = dict(states), {}, None
    with jax.set_mesh(mesh):
        batch = distributed.to_global(batch, mesh)
        for u in updates:
            others = {k: v for k, v in out.items() if k != u.name}
            if check_collectives:
                args = (out[u.name], others, batch, carry, jnp.asarray(step))
                assert not unexpected(u.fn, *args), (u.name, collectives(u.fn, *args))
            out[u.name], m, carry = u.fn(out[u.name], others, batch, carry, jnp.asarray(step))
            metrics.update(m)
    return out, metrics, carry


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_updates_change_only_their_own_network(tiny_config):
    mesh, states, updates, *_ = _setup(tiny_config, jax.devices())
    before = _host(states)
    gen, noc = updates
    with jax.set_mesh(mesh):
        batch = distributed.to_global(_batch(), mesh)
        f, _, carry = gen.fn(states["f"], {"oc": states["oc"]}, batch, None, jnp.asarray(3))
        assert _equal(_host(states["oc"]), before["oc"])  # generator step: noc bit-identical
        assert not _equal(_host(f.params), before["f"].params)
        oc, _, _ = noc.fn(states["oc"], {"f": f}, batch, carry, jnp.asarray(3))
    f_after = _host(f)
    assert not _equal(_host(oc.params), before["oc"].params)
    assert _equal(_host(f), f_after)  # noc step: generator bit-identical
    assert _equal(_host(oc.batch_stats), before["oc"].batch_stats)  # frozen BN statistics
    bn_scale = lambda p: p["backbone"]["bn1"]["scale"]
    np.testing.assert_array_equal(bn_scale(_host(oc.params)), bn_scale(before["oc"].params))


@pytest.mark.slow
@pytest.mark.parametrize("leak", [False, True])
def test_noc_update_matches_independent_gradient(tiny_config, leak):
    """noc's step = SGD on λ_noc·ℓ(noc(x ∘ [ψ <= δ]), ỹ) (+ λ_cse·ℓ(noc(x̃_soft), ỹ∖r) if leak)."""
    mesh, states, updates, _, model, oc_model = _setup(tiny_config, jax.devices()[:1], leak=leak)
    batch = _batch()
    before = _host(states)
    out, metrics, carry = _run_step(mesh, states, updates, batch, step=3)

    x, y = jnp.asarray(batch["image"]), jnp.asarray(batch["labels"])
    ys = losses.smooth_labels(y, 0.1)
    f_vars = {"params": before["f"].params, "batch_stats": before["f"].batch_stats}
    _, cams = model.apply(f_vars, x, train=True, mutable=["batch_stats"])[0]
    r = losses.sample_erased_class(rng.step_key(0, rng.Stream.TRAIN, 3), y)
    maps = losses.class_maps(cams, r, SIZE, SIZE)
    psi = np.asarray(maps) / (np.asarray(maps).max(axis=(1, 2), keepdims=True) + 1e-5)
    hard = x * jnp.asarray(psi <= 0.2, jnp.float32)[..., None]
    soft = x * (1 - maps / (maps.max() + 1e-5))[..., None]
    lam_noc = 3 / 10  # 0 -> 1 over 10 steps, at step 3
    lam_cse = 0.3 + 0.7 * 3 / 10

    def noc_objective(params):
        variables = {"params": params, "batch_stats": before["oc"].batch_stats}
        loss = lam_noc * losses.multilabel_soft_margin(oc_model.apply(variables, hard)[0], ys)
        if leak:
            target = losses.smooth_labels(losses.remove_class(y, r), 0.1)
            soft_logits = oc_model.apply(variables, soft)[0]
            loss += lam_cse * losses.multilabel_soft_margin(soft_logits, target)
        return loss

    grads = jax.grad(noc_objective)(before["oc"].params)
    # noc logs its own lr (its optimizer's, at its optimizer step 0) and the norm of the
    # gradients it applied, frozen BN parameters excluded; f logs its own under plain names.
    trained = [g for p, g in jax.tree_util.tree_leaves_with_path(grads) if "bn" not in str(p)]
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in trained))
    assert float(metrics["noc_grad_norm"]) == pytest.approx(norm, rel=1e-4)
    assert float(metrics["noc_lr"]) == pytest.approx(0.05)
    assert float(metrics["lr"]) == pytest.approx(0.1)
    assert float(metrics["grad_norm"]) > 0
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(lr=0.05, total_steps=10, frozen=("bn",)))
    updates_, _ = tx.update(grads, tx.init(before["oc"].params), before["oc"].params)
    expected = jax.tree.map(lambda p, u: p + u, before["oc"].params, updates_)
    got = _host(out["oc"].params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(carry.keep_mask), psi <= 0.2)
    assert (carry.cse_grads is not None) == leak


@pytest.mark.slow
def test_two_updates_same_on_1_and_8_devices(tiny_config, strategy="pnoc"):
    """Same numbers on 1 and 8 devices, and on 8 devices no collective but all-reduces (Puzzle's
    tiles stay on their image's device; the reference's quadrant-major order moved them)."""
    batch = _batch()
    m1, s1, u1, *_ = _setup(tiny_config, jax.devices()[:1], strategy)
    m8, s8, u8, *_ = _setup(tiny_config, jax.devices(), strategy)
    out1, met1, _ = _run_step(m1, s1, u1, batch)
    out8, met8, _ = _run_step(m8, s8, u8, batch, check_collectives=True)
    for k in met1:
        assert float(met1[k]) == pytest.approx(float(met8[k]), rel=1e-5), k
    for a, b in zip(jax.tree.leaves(_host(out1)), jax.tree.leaves(_host(out8)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_pnoc_run_resumes_both_states_exactly(tiny_config, tmp_path):
    tiny_config.train.update(strategy="pnoc", steps=4)
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    cam_train.train_oc(tiny_config, full, datasets.resolve(tiny_config))
    shutil.copytree(os.path.join(full, "train_oc"), os.path.join(cut, "train_oc"))
    cam_train.train_cam(tiny_config, full, datasets.resolve(tiny_config))

    def sigterm_at_2(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        cam_train.train_cam(tiny_config, cut, datasets.resolve(tiny_config), on_step=sigterm_at_2)
    cam_train.train_cam(tiny_config, cut, datasets.resolve(tiny_config))

    def final(workdir):
        ckpt = Checkpointer(os.path.join(workdir, "train_cam", "ckpt"), save_every=1)
        step = ckpt.latest_step()
        items = {k: ocp.args.StandardRestore() for k in ("f", "oc")}
        raw = ckpt.manager.restore(step, args=ocp.args.Composite(**items))
        ckpt.close()
        return step, _host({k: raw[k] for k in items})

    (step_a, a), (step_b, b) = final(full), final(cut)
    assert step_a == step_b == 4
    assert set(a) == {"f", "oc"}
    assert _equal(a, b)
    # P-NOC exports both trained networks: f and noc.
    for state in ("f", "oc"):
        exported = [
            weights.load(artifacts.weights_file(w, "train_cam", state)) for w in (full, cut)
        ]
        assert _equal(*exported)
        assert _equal(exported[0]["params"], a[state]["params"])


@pytest.mark.slow
def test_bf16_compute_with_accumulation_keeps_f32_master_weights(tiny_config):
    """bf16 compute, f32 parameters; with accumulate_steps=2 the first step changes nothing."""
    mesh = distributed.make_mesh(jax.devices()[:1])
    model = cam_train.build_model(tiny_config, dtype="bfloat16")
    oc_model = cam_train.build_model(tiny_config, frozen_bn=True, dtype="bfloat16")
    cfg = optim.OptimizerConfig(lr=0.1, total_steps=10, accumulate_steps=2)
    tx, _ = optim.make_optimizer(cfg)
    shape = (1, SIZE, SIZE, 3)
    states = {
        "f": create_state(model, tx, rng.init_key(0), shape, mesh),
        "oc": create_state(oc_model, tx, rng.init_key(1), shape, mesh),
    }
    strategy = strategies.StrategyConfig("pnoc", total_steps=10, label_smoothing=0.1)
    updates = strategies.build_updates(strategy, model=model, oc_model=oc_model, mesh=mesh, seed=0)
    before = _host(states)
    once, metrics, _ = _run_step(mesh, states, updates, _batch())
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(_host(once["f"].params)))
    assert _equal(_host(once["f"].params), before["f"].params)  # gradient accumulated only
    twice, _, _ = _run_step(mesh, once, updates, _batch(), step=4)
    assert not _equal(_host(twice["f"].params), before["f"].params)
