"""DeepLabV3+ and DeepLabV2 (+MSC) against torch references written from the spec.

The flax variables are random (non-trivial BN statistics, GroupNorm affine params, biases) and
are copied into the torch modules of :mod:`tests.oracles.torch_deeplab`; both run in eval mode.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.core.optim import param_labels
from pnoc_jax.models.deeplab import (
    ASPP,
    ASPPV2,
    Decoder,
    DeepLabV2,
    DeepLabV3Plus,
    default_atrous_rates,
)

torch = pytest.importorskip("torch", reason="torch is the reference for the DeepLab heads")

from tests.oracles import torch_deeplab as ref  # noqa: E402

K = 5  # classes
TINY = dict(block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16)


def _nchw(x: np.ndarray):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _shapes(model, x, **kwargs):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, **kwargs))


def _assert_close(out, expected, rel: float = 1e-4) -> float:
    """|out − expected| <= rel · max|expected| everywhere; returns the max absolute difference."""
    out, expected = np.asarray(out), np.asarray(expected)
    assert out.shape == expected.shape
    diff = float(np.abs(out - expected).max())
    assert diff <= rel * float(np.abs(expected).max()), diff
    return diff


@pytest.fixture(scope="module")
def v3_vars():
    """Random DeepLabV3+ ("tiny", K classes) variables; they do not depend on the output stride."""
    shapes = _shapes(DeepLabV3Plus("tiny", K), jnp.zeros((1, 32, 32, 3)))
    return ref.randomised_variables(shapes, seed=0)


@pytest.fixture(scope="module")
def v2_vars():
    shapes = _shapes(DeepLabV2("tiny", K), jnp.zeros((1, 32, 32, 3)))
    return ref.randomised_variables(shapes, seed=1)


# --- DeepLabV3+ ----------------------------------------------------------------------------------


# layer4 is 20x19 at OS16 (every rate, up to 18, reaches real pixels) and 15x13 at OS8 (the
# doubled rate 12 does).
@pytest.mark.parametrize(("os_", "size"), [(16, (305, 291)), (8, (113, 97))])
def test_deeplabv3plus_matches_torch(os_: int, size: tuple[int, int], v3_vars) -> None:
    x = _images(os_, (2, *size, 3))
    model = DeepLabV3Plus("tiny", K, output_stride=os_)
    # A dropout rng is available, but train=False must not use it.
    run = jax.jit(lambda v, x: model.apply(v, x, train=False, rngs={"dropout": jax.random.key(0)}))
    out = run(v3_vars, jnp.asarray(x))
    assert out.shape == (2, *size, K) and out.dtype == jnp.float32

    rates = {16: (6, 12, 18), 8: (12, 24, 36)}[os_]  # literal: the oracle must not import them
    tmodel = ref.TorchDeepLabV3Plus(K, rates, **TINY, output_stride=os_)
    ref.load_flax_variables(tmodel, v3_vars)
    with torch.no_grad():
        expected = _nhwc(tmodel(_nchw(x)))
    _assert_close(out, expected)
    assert float(np.std(expected)) > 0.1  # not a degenerate comparison


@pytest.mark.parametrize("scale", [1.0, 3e-3])
def test_aspp_matches_torch(scale: float) -> None:
    """ASPP alone on a map wider than every rate; tiny inputs make GroupNorm's epsilon count."""
    x = _images(10, (2, 19, 21, 32)) * scale
    rates = (6, 12, 18)
    aspp = ASPP(rates)
    variables = ref.randomised_variables(_shapes(aspp, jnp.asarray(x), train=False), seed=2)
    out = jax.jit(lambda v, x: aspp.apply(v, x, train=False))(variables, jnp.asarray(x))
    taspp = ref.TorchASPP(32, rates)
    ref.load_flax_variables(taspp, variables)
    with torch.no_grad():
        expected = _nhwc(taspp(_nchw(x)))
    _assert_close(out, expected)


def test_atrous_rates() -> None:
    assert default_atrous_rates(16) == (6, 12, 18)
    assert default_atrous_rates(8) == (12, 24, 36)
    with pytest.raises(ValueError, match="8 or 16"):
        default_atrous_rates(32)
    with pytest.raises(ValueError, match="8 or 16"):
        _shapes(DeepLabV3Plus("tiny", K, output_stride=32), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize(("name", "os_"), [("tiny", 16), ("tiny", 8), ("resnet50", 16)])
def test_output_shapes(name: str, os_: int) -> None:
    sizes = [(33, 50), (65, 31)] if name == "tiny" else [(33, 50)]
    for size in sizes:
        x = jnp.zeros((2, *size, 3))
        v3 = DeepLabV3Plus(name, 21, output_stride=os_)
        out = jax.eval_shape(lambda x, m=v3: m.init_with_output(jax.random.key(0), x)[0], x)
        assert out.shape == (2, *size, 21) and out.dtype == jnp.float32

        v2 = DeepLabV2(name, 21, output_stride=os_)
        outs = jax.eval_shape(
            lambda x, m=v2: m.init_with_output(jax.random.key(0), x, method="msc")[0], x
        )
        feat = tuple(math.ceil(n / os_) for n in size)
        expected = [feat]
        for s in v2.msc_scales:
            expected.append(tuple(math.ceil(math.floor(n * s) / os_) for n in size))
        expected.append(feat)
        assert [o.shape for o in outs] == [(2, *hw, 21) for hw in expected], size


def test_param_groups(v3_vars, v2_vars) -> None:
    for variables in (v3_vars, v2_vars):
        labels = param_labels(variables["params"])
        flat = jax.tree_util.tree_leaves_with_path(labels)
        heads = 0
        for path, label in flat:
            keys = [p.key for p in path]
            kind = "weight" if keys[-1] in ("kernel", "scale") else "bias"
            prefix = "backbone" if keys[0] == "backbone" else "head"
            assert label == f"{prefix}_{kind}", keys
            heads += prefix == "head"
        assert heads > 0
    v3_head = set(v3_vars["params"]) - {"backbone"}
    assert v3_head == {"aspp", "decoder"}
    # Head: every conv kernel and GroupNorm scale 10x with decay, GN offsets and the bias 20x.
    labels = param_labels(v3_vars["params"])
    assert labels["decoder"]["classifier"]["bias"] == "head_bias"
    assert labels["aspp"]["pool"]["gn"]["scale"] == "head_weight"
    assert labels["aspp"]["branch3"]["conv"]["kernel"] == "head_weight"
    assert labels["backbone"]["layer4_0"]["bn1"]["bias"] == "backbone_bias"
    assert param_labels(v2_vars["params"])["aspp"]["c3"]["bias"] == "head_bias"


def test_head_init_follows_reference() -> None:
    """kaiming_normal_ (fan-in) head kernels, GroupNorm 1/0, torch-default classifier bias.

    The head modules are initialised alone, with the "rbg" PRNG: threefry and the full model's
    init are slow to compile on CPU.
    """
    key = jax.random.key(0, impl="rbg")
    low, high = jnp.zeros((1, 8, 8, 8)), jnp.zeros((1, 4, 4, 256))
    decoder = jax.jit(lambda: Decoder(K).init(key, high, low, train=False))()["params"]
    kernel = np.asarray(decoder["fuse2"]["conv"]["kernel"])  # fan-in 3·3·256 (ASPP: same helper)
    assert abs(kernel.std() - math.sqrt(2 / 2304)) < 0.05 * math.sqrt(2 / 2304)
    np.testing.assert_array_equal(decoder["fuse1"]["gn"]["scale"], 1.0)
    np.testing.assert_array_equal(decoder["fuse1"]["gn"]["bias"], 0.0)
    bias = np.asarray(decoder["classifier"]["bias"])
    assert np.all(np.abs(bias) <= 1 / 16) and np.any(bias != 0)

    v2 = jax.jit(lambda: ASPPV2(K).init(key, jnp.zeros((1, 4, 4, 64))))()["params"]
    assert abs(float(np.std(v2["c0"]["kernel"])) - 0.01) < 1e-3
    np.testing.assert_array_equal(v2["c0"]["bias"], 0.0)


def test_dropout_only_in_train_mode(v3_vars) -> None:
    model = DeepLabV3Plus("tiny", K, output_stride=16)
    x = jnp.asarray(_images(3, (2, 32, 40, 3)))

    @jax.jit
    def train(key):
        out, _ = model.apply(v3_vars, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])
        return out

    a, b, a2 = train(jax.random.key(1)), train(jax.random.key(2)), train(jax.random.key(1))
    np.testing.assert_array_equal(a, a2)
    assert not np.allclose(a, b, atol=1e-3)
    # (train=False ignores the dropout rng: test_deeplabv3plus_matches_torch.)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda: model.apply(v3_vars, x, train=True, mutable=["batch_stats"]))


def test_bf16_compute_returns_float32(v3_vars) -> None:
    x = _images(4, (1, 33, 41, 3))
    b16 = DeepLabV3Plus("tiny", K, dtype=jnp.bfloat16)
    assert all(
        leaf.dtype == jnp.float32
        for leaf in jax.tree_util.tree_leaves(_shapes(b16, jnp.asarray(x)))
    )
    out16 = jax.jit(lambda v, x: b16.apply(v, x))(v3_vars, jnp.asarray(x))
    assert out16.dtype == jnp.float32 and out16.shape == (1, 33, 41, K)
    tmodel = ref.TorchDeepLabV3Plus(K, (6, 12, 18), **TINY, output_stride=16)
    ref.load_flax_variables(tmodel, v3_vars)
    with torch.no_grad():
        expected = _nhwc(tmodel(_nchw(x)))
    _assert_close(out16, expected, rel=0.1)


# --- DeepLabV2 ----------------------------------------------------------------------------------


def test_deeplabv2_msc_matches_torch(v2_vars) -> None:
    """MSC outputs, max fusion and both inference modes vs torch; train mode with frozen BN."""
    size = (45, 51)
    x = _images(5, (2, *size, 3))
    model = DeepLabV2("tiny", K, output_stride=8)

    @jax.jit
    def run(v, x):
        train = model.apply(v, x, train=True, method="msc", mutable=["batch_stats"])
        single = model.apply(v, x, multi_scale=False, method="predict")
        return model.apply(v, x, method="msc"), model.apply(v, x, method="predict"), single, train

    outs, pred, single, (train_outs, updates) = run(v2_vars, jnp.asarray(x))
    tbase = ref.TorchDeepLabV2(K, (6, 12, 18, 24), **TINY, output_stride=8)
    ref.load_flax_variables(tbase, v2_vars)
    with torch.no_grad():
        expected = ref.TorchMSC(tbase, scales=(0.5, 0.75))(_nchw(x))
        expected_pred, expected_single = (
            torch.nn.functional.interpolate(e, size=size, mode="bilinear", align_corners=False)
            for e in (expected[-1], expected[0])
        )
    assert len(outs) == 4
    for out, exp in zip(outs, expected, strict=True):
        assert out.dtype == jnp.float32
        _assert_close(out, _nhwc(exp))
    # The fusion is a real max over scales, not a copy of one of them.
    assert np.any(_nhwc(expected[-1]) > _nhwc(expected[0]) + 1e-3)
    assert pred.shape == single.shape == (2, *size, K)
    _assert_close(pred, _nhwc(expected_pred))
    _assert_close(single, _nhwc(expected_single))
    # deeplab-pytorch trains with frozen BN (the default here): train mode changes nothing.
    for a, b in zip(train_outs, outs, strict=True):
        np.testing.assert_array_equal(a, b)
    stats = updates.get("batch_stats", v2_vars["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, stats, v2_vars["batch_stats"])


def test_deeplabv2_aspp_is_a_sum(v2_vars) -> None:
    """Zeroing all but one ASPP conv leaves that conv's output; the four add up."""
    model = DeepLabV2("tiny", K)
    x = jnp.asarray(_images(6, (1, 24, 24, 3)))
    apply = jax.jit(lambda v: model.apply(v, x))
    total = apply(v2_vars)
    parts = []
    for keep in range(4):
        params = dict(v2_vars["params"])
        params["aspp"] = {
            name: conv if name == f"c{keep}" else jax.tree.map(jnp.zeros_like, conv)
            for name, conv in v2_vars["params"]["aspp"].items()
        }
        parts.append(apply({**v2_vars, "params": params}))
    _assert_close(sum(parts), total, rel=1e-5)
