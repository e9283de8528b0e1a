"""Shape, stride, parameter-count and BatchNorm behaviour of the ResNet backbones and CAM head."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.models.backbones import build_backbone, feature_channels
from pnoc_jax.models.classifier import CAMClassifier

STRIDES = {
    32: {"conv1": 2, "stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32},
    16: {"conv1": 2, "stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16},
    8: {"conv1": 2, "stem": 4, "layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8},
}


def _apply(model, variables, x, **kwargs):
    """Jitted ``model.apply`` (one compile instead of one per primitive)."""
    return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def _randn(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def _init_shapes(model, x):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


@pytest.fixture(scope="module")
def tiny_vars():
    """Random tiny-backbone variables (params do not depend on output stride or dtype).

    Filled from numpy rather than ``model.init`` to skip compiling the PRNG (slow on CPU).
    """
    shapes = _init_shapes(build_backbone("tiny"), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return jnp.asarray(rng.normal(0, math.sqrt(2 / fan_in), leaf.shape), jnp.float32)
        base = {"scale": 1.0, "var": 1.0}.get(name, 0.0)
        return jnp.asarray(base + 0.1 * rng.standard_normal(leaf.shape), jnp.float32)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])  # var > 0
    return variables


@pytest.fixture(scope="module")
def cam_vars(tiny_vars):
    """Tiny CAMClassifier variables with 5 classes: backbone from ``tiny_vars`` + a random head."""
    head = np.random.default_rng(0).normal(0, 0.1, (1, 1, 128, 5)).astype(np.float32)
    return {
        "params": {"backbone": tiny_vars["params"], "classifier": {"kernel": jnp.asarray(head)}},
        "batch_stats": {"backbone": tiny_vars["batch_stats"]},
    }


@pytest.mark.parametrize("name", ["resnet50", "tiny"])
@pytest.mark.parametrize("os_", [32, 16, 8])
def test_feature_shapes_and_strides(name: str, os_: int, tiny_vars) -> None:
    model = build_backbone(name, output_stride=os_)
    x = jnp.zeros((2, 64, 64, 3), jnp.float32)
    if name == "tiny":
        variables = tiny_vars
        feats = _apply(model, variables, x, train=False)
    else:
        variables = _init_shapes(model, x)
        feats = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    chans = feature_channels(name)
    assert set(feats) == set(STRIDES[os_])
    for key, stride in STRIDES[os_].items():
        assert feats[key].shape == (2, 64 // stride, 64 // stride, chans[key]), key


def test_odd_input_sizes_follow_torch_arithmetic() -> None:
    # torch: out = floor((n + 2p - d(k-1) - 1) / s) + 1 at every strided layer.
    model = build_backbone("tiny", output_stride=32)
    x = jnp.zeros((1, 67, 75, 3))
    feats = jax.eval_shape(
        lambda: model.apply(model.init(jax.random.key(0), x, train=False), x, train=False)
    )
    h, w = 67, 75
    sizes = []
    for _ in range(5):  # conv1, maxpool, layer2, layer3, layer4 each halve with ceil-ish rounding
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append((h, w))
    assert feats["stem"].shape[1:3] == sizes[1]
    assert feats["layer2"].shape[1:3] == sizes[2]
    assert feats["layer4"].shape[1:3] == sizes[4]


def test_param_counts_match_torchvision() -> None:
    x = jnp.zeros((1, 32, 32, 3))
    # torchvision resnet50/101 without fc (fc adds 2048*1000+1000); verified in test_convert.py.
    expected = {"resnet50": 23_508_032, "resnet101": 42_500_160, "resnet18": 11_176_512}
    for name, n in expected.items():
        variables = _init_shapes(build_backbone(name), x)
        assert _count(variables["params"]) == n, name
    tiny = _count(_init_shapes(build_backbone("tiny"), x)["params"])
    assert tiny == 309_456  # basic blocks, widths (16, 32, 64, 128)


def test_param_naming() -> None:
    variables = _init_shapes(build_backbone("resnet50"), jnp.zeros((1, 32, 32, 3)))
    p = variables["params"]
    assert p["conv1"]["kernel"].shape == (7, 7, 3, 64)
    assert set(p["bn1"]) == {"scale", "bias"}
    assert set(variables["batch_stats"]["bn1"]) == {"mean", "var"}
    assert set(p["layer1_0"]) == {
        "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn"
    }  # fmt: skip
    assert "downsample_conv" not in p["layer1_1"]
    assert p["layer4_0"]["downsample_conv"]["kernel"].shape == (1, 1, 1024, 2048)
    assert p["layer3_5"]["conv2"]["kernel"].shape == (3, 3, 256, 256)
    assert "layer3_6" not in p
    # BN params are identifiable by path (for the optimizer's freeze mask); convs are not.
    for path, _ in jax.tree_util.tree_leaves_with_path(p):
        keys = [k.key for k in path]
        assert ("bn" in keys[-2]) == (keys[-1] in ("scale", "bias")), keys


def test_unknown_backbone_name() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("resnet51")
    with pytest.raises(ValueError, match="tiny"):
        feature_channels("vgg16")


@pytest.mark.parametrize("frozen", [False, True])
def test_frozen_bn(frozen: bool, tiny_vars) -> None:
    model = build_backbone("tiny", output_stride=16, frozen_bn=frozen)
    x = _randn(1, (2, 48, 40, 3)) * 2.0 + 0.5
    variables = tiny_vars
    out, updates = _apply(model, variables, x, train=True, mutable=["batch_stats"])
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    new = jax.tree_util.tree_leaves(updates.get("batch_stats", variables["batch_stats"]))
    changed = any(not np.array_equal(a, b) for a, b in zip(old, new, strict=True))
    assert changed != frozen
    evals = _apply(model, variables, x, train=False)
    same = np.allclose(out["layer4"], evals["layer4"], atol=1e-6)
    assert same == frozen


def test_cam_classifier_init() -> None:
    model = CAMClassifier("tiny", num_classes=5, output_stride=16)
    x = jnp.zeros((2, 64, 48, 3))
    variables = _init_shapes(model, x)
    assert set(variables["params"]) == {"backbone", "classifier"}
    assert set(variables["params"]["classifier"]) == {"kernel"}  # no bias
    assert variables["params"]["classifier"]["kernel"].shape == (1, 1, 128, 5)
    assert jax.tree.map(lambda a: a.shape, variables["params"]["backbone"]) == jax.tree.map(
        lambda a: a.shape, _init_shapes(build_backbone("tiny"), x)["params"]
    )


def test_cam_classifier_logits_are_mean_of_cams(cam_vars) -> None:
    model = CAMClassifier("tiny", num_classes=5, output_stride=16)
    x = _randn(0, (2, 64, 48, 3))
    variables = cam_vars
    logits, cams = _apply(model, variables, x)
    assert logits.shape == (2, 5) and cams.shape == (2, 4, 3, 5)
    assert logits.dtype == cams.dtype == jnp.float32
    np.testing.assert_allclose(logits, cams.mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
    # GAP-then-conv equals conv-then-GAP.
    feats = _apply(
        build_backbone("tiny", 16),
        {"params": variables["params"]["backbone"], **_sub(variables, "batch_stats")},
        x,
        train=False,
    )
    gap = feats["layer4"].mean(axis=(1, 2)) @ variables["params"]["classifier"]["kernel"][0, 0]
    np.testing.assert_allclose(logits, gap, rtol=1e-5, atol=1e-5)
    assert float(cams.min()) < 0.0  # raw CAMs, not rectified


def _sub(variables, col: str) -> dict:
    return {col: variables[col]["backbone"]}


def test_bf16_compute_returns_float32(cam_vars) -> None:
    model = CAMClassifier("tiny", num_classes=5, output_stride=8, dtype=jnp.bfloat16)
    x = _randn(0, (2, 32, 32, 3))
    shapes = _init_shapes(model, x)
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(shapes))
    variables = cam_vars
    # Train mode: BN batch statistics computed from bf16 activations.
    (logits, cams), stats = _apply(model, variables, x, train=True, mutable=["batch_stats"])
    assert logits.dtype == cams.dtype == jnp.float32
    assert cams.shape == (2, 4, 4, 5)
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(stats))
    ref = CAMClassifier("tiny", 5, output_stride=8)
    (ref_logits, _), _ = _apply(ref, variables, x, train=True, mutable=["batch_stats"])
    assert np.all(np.isfinite(logits))
    np.testing.assert_allclose(logits, ref_logits, atol=0.1 * float(jnp.abs(ref_logits).max()))


def test_remat_recomputes_the_same_values_and_gradients():
    """`remat=True` (runtime.remat) keeps the parameter tree, the features, the new BatchNorm
    statistics and the gradients: only what the backward pass stores changes. Compiled with
    the backward pass, XLA fuses the blocks inside their remat boundaries differently, so
    float32 gradients differ by rounding (in float64 every difference is below 3e-16).
    Gradients are compared with BN on running statistics: with batch statistics over two
    images some gradients are mathematically zero and numerically noise, which any change of
    fusion reshuffles (measured: BN statistics then differ by 9e-5 of their largest value)."""
    x = _randn(0, (2, 32, 32, 3))
    plain, remat = (build_backbone("resnest_tiny", 16, remat=r) for r in (False, True))
    variables = plain.init(jax.random.key(0), x, train=False)
    assert jax.tree.structure(remat.init(jax.random.key(0), x, train=False)) == jax.tree.structure(
        variables
    )
    forward = [_apply(m, variables, x, train=True, mutable=["batch_stats"]) for m in (plain, remat)]
    for a, b in zip(*(jax.tree.leaves(f) for f in forward), strict=True):
        np.testing.assert_array_equal(a, b)

    def loss(params, model):
        feats = model.apply({**variables, "params": params}, x, train=False)
        return jnp.sum(feats["layer4"] ** 2) + jnp.sum(feats["layer2"])

    grads = [
        jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], m) for m in (plain, remat)
    ]
    for a, b in zip(*(jax.tree.leaves(g) for g in grads), strict=True):
        assert float(jnp.abs(a - b).max()) <= 1e-5 * float(jnp.abs(b).max())  # measured 3e-7
