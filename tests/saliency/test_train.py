"""C²AM(-H) and detector updates: data-parallel equivalence, the losses they minimise, inputs."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pnoc_jax.core import distributed, rng
from pnoc_jax.core.loop import jit_update
from pnoc_jax.core.train_state import create_state
from pnoc_jax.data import transforms
from pnoc_jax.models.ccam import CCAM
from pnoc_jax.models.poolnet import PoolNet
from pnoc_jax.saliency import losses, train_detector
from pnoc_jax.saliency import train as saliency_train

SGD = ml_collections.ConfigDict(
    dict(lr=0.05, accumulate_steps=1, weight_decay=1e-4, momentum=0.9, poly_power=0.9,
         lr_mult=(1.0, 2.0, 10.0, 20.0))
)  # fmt: skip


def _ccam_step(devices, batch, hints: bool):
    mesh = distributed.make_mesh(devices)
    model = CCAM("tiny", output_stride=8)
    tx, stats = saliency_train.make_optimizer(SGD, 10)
    state = create_state(model, tx, rng.init_key(0), (1, 32, 32, 3), mesh, None, stats)
    fn = functools.partial(
        saliency_train.ccam_update, model=model, alpha=0.25, hint_weight=1.0,
        hint_threshold=0.4, label_smoothing=0.1, hints=hints,
    )  # fmt: skip
    before = jax.device_get(state.params)  # the update donates the state
    with jax.set_mesh(mesh):
        new, metrics, _ = jit_update(fn, mesh)(
            state, {}, distributed.to_global(batch, mesh), None, jnp.asarray(0)
        )
    return before, jax.device_get(new), jax.device_get(metrics)


@pytest.mark.slow
@pytest.mark.parametrize("hints", [False, True])
def test_ccam_update_same_on_1_and_8_devices(hints: bool):
    """The contrastive losses pair every image of the global batch, whatever the sharding."""
    assert jax.device_count() == 8
    r = np.random.default_rng(0)
    batch = {
        "image": r.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "hint": r.uniform(0, 1, (8, 32, 32)).astype(np.float32),
    }
    _, one, m1 = _ccam_step(jax.devices()[:1], batch, hints)
    before, eight, m8 = _ccam_step(jax.devices(), batch, hints)
    assert set(m1) == {"loss", "loss_pos_fg", "loss_neg", "loss_pos_bg", "fg_fraction", "lr",
                       "grad_norm", *(["loss_hint"] if hints else [])}  # fmt: skip
    for k in m1:
        assert m1[k] == pytest.approx(m8[k], rel=1e-5), k
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    for a, b in zip(
        jax.tree.leaves(one.batch_stats), jax.tree.leaves(eight.batch_stats), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before, one.params)
    assert moved["disentangler_conv"]["kernel"] > 0


@pytest.mark.slow
def test_ccam_update_loss_is_the_sum_of_the_pure_losses():
    """The logged loss recomputed from the model outputs with the pure loss functions."""
    r = np.random.default_rng(1)
    batch = {
        "image": r.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "hint": r.uniform(0, 1, (8, 32, 32)).astype(np.float32),
    }
    before, _, metrics = _ccam_step(jax.devices()[:1], batch, True)
    model = CCAM("tiny", output_stride=8)
    variables = jax.jit(lambda: model.init(rng.init_key(0), jnp.zeros((1, 32, 32, 3))))()
    (z, fg, bg), _ = model.apply(
        {"params": before, "batch_stats": variables["batch_stats"]},
        batch["image"],
        train=True,
        mutable=["batch_stats"],
    )
    hints = losses.resize_hints(jnp.asarray(batch["hint"]), z.shape[1:])
    parts = {
        "loss_pos_fg": losses.sim_max_loss(fg, 0.25),
        "loss_neg": losses.sim_min_loss(bg, fg),
        "loss_pos_bg": losses.sim_max_loss(bg, 0.25),
        "loss_hint": losses.hint_loss(z, hints, 0.4, 0.1),
    }
    for k, v in parts.items():
        assert metrics[k] == pytest.approx(float(v), rel=1e-5), k
    assert metrics["loss"] == pytest.approx(sum(float(v) for v in parts.values()), rel=1e-5)


def _detector_step(devices, batch):
    mesh = distributed.make_mesh(devices)
    model = PoolNet("tiny", head_divisor=8)
    cfg = ml_collections.ConfigDict(dict(lr=1e-3, accumulate_steps=1, weight_decay=5e-4))
    tx, stats = train_detector.make_optimizer(cfg)
    state = create_state(model, tx, rng.init_key(0), (1, 128, 128, 3), mesh, None, stats)
    fn = functools.partial(train_detector.detector_update, model=model)
    before = jax.device_get(state)  # the update donates the state
    with jax.set_mesh(mesh):
        new, metrics, _ = jit_update(fn, mesh)(
            state, {}, distributed.to_global(batch, mesh), None, jnp.asarray(0)
        )
    return before, jax.device_get(new), jax.device_get(metrics)


@pytest.mark.slow
def test_detector_update_same_on_1_and_8_devices_masked_loss_and_frozen_bn():
    r = np.random.default_rng(2)
    valid = np.zeros((8, 128, 128), np.float32)
    for b, (h, w) in enumerate(r.integers(80, 128, (8, 2))):
        valid[b, :h, :w] = 1
    batch = {
        "image": (r.normal(size=(8, 128, 128, 3)) * valid[..., None]).astype(np.float32),
        "target": (r.uniform(0, 1, (8, 128, 128)) * valid).astype(np.float32),
        "valid": valid,
    }
    before, one, m1 = _detector_step(jax.devices()[:1], batch)
    _, eight, m8 = _detector_step(jax.devices(), batch)
    assert m1["loss"] == pytest.approx(m8["loss"], rel=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # loss = Σ valid BCE / B, recomputed from the logits.
    model = PoolNet("tiny", head_divisor=8)
    logits = np.asarray(
        model.apply({"params": before.params, "batch_stats": before.batch_stats}, batch["image"]),
        np.float64,
    )
    t = batch["target"]
    bce = np.maximum(logits, 0) - logits * t + np.log1p(np.exp(-np.abs(logits)))
    assert m1["loss"] == pytest.approx((bce * valid).sum() / 8, rel=1e-4)
    assert m1["loss_per_pixel"] == pytest.approx((bce * valid).sum() / valid.sum(), rel=1e-4)
    # BatchNorm never moves (statistics and affine parameters); everything else does.
    moved = jax.tree_util.tree_flatten_with_path(
        jax.tree.map(lambda a, b: bool(np.any(a != b)), before.params, one.params)
    )[0]
    for path, changed in moved:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        assert changed == ("bn" not in name), name
    for a, b in zip(
        jax.tree.leaves(before.batch_stats), jax.tree.leaves(one.batch_stats), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_saliency_transform_moves_the_hint_with_the_image():
    """A hint equal to the image's red channel stays equal to it after resize, flip and crop."""
    r = np.random.default_rng(3)
    image = r.integers(0, 256, (40, 60, 3)).astype(np.uint8)
    image[..., 1:] = image[..., :1]  # grey image: the red channel is the image
    example = {"image": image, "hint": image[..., 0].astype(np.float32) / 255}
    transform = transforms.SaliencyTransform(resize_size=50, crop_size=32)
    for seed in range(4):
        out = transform(example, np.random.default_rng(seed))
        assert out["image"].shape == (32, 32, 3) and out["hint"].shape == (32, 32)
        red = out["image"][..., 0] * transforms.IMAGENET_STD[0] + transforms.IMAGENET_MEAN[0]
        # PIL resizes uint8 images in fixed point, float maps in float: within a grey level
        # (a map left unflipped or shifted by one pixel is off by ~0.3 on this noise).
        np.testing.assert_allclose(red, out["hint"], atol=1.01 / 255)
    padded = transforms.SaliencyTransform(resize_size=20, crop_size=32)(example, r)
    assert padded["hint"].sum() > 0 and (padded["hint"] == 0).sum() >= 32 * 32 - 20 * 20
    no_hint = transforms.SaliencyTransform(50, 32)({"image": image}, r)
    assert not no_hint["hint"].any()


def test_detector_transform_pads_onto_the_canvas_and_flips_the_target_with_the_image():
    r = np.random.default_rng(4)
    image = r.integers(0, 256, (30, 45, 3)).astype(np.uint8)
    image[..., 1:] = image[..., :1]
    example = {"id": "x", "image": image, "saliency": image[..., 0] / 255.0}
    transform = transforms.DetectorTransform(canvas=64)
    for seed in range(4):
        out = transform(example, np.random.default_rng(seed))
        assert out["valid"].sum() == 30 * 45 and out["valid"][:30, :45].all()
        red = out["image"][..., 0] * transforms.IMAGENET_STD[0] + transforms.IMAGENET_MEAN[0]
        np.testing.assert_allclose(red[:30, :45], out["target"][:30, :45], atol=1e-6)
        assert not out["target"][30:].any() and not out["image"][:, 45:].any()
    scaled = transforms.DetectorTransform(canvas=64, input_scale=1.4)(example, r)
    assert scaled["valid"].sum() == 42 * 63
    with pytest.raises(ValueError, match="larger than the detector's canvas"):
        transforms.DetectorTransform(canvas=40)(example, r)
