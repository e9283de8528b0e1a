"""PoolNet (ResNet "locate" variant) and its PyTorch-semantics pooling / resizing helpers."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.models.backbones import build_backbone
from pnoc_jax.models.poolnet import PoolNet, adaptive_avg_pool
from pnoc_jax.models.resize import resize_bilinear

torch = pytest.importorskip("torch", reason="torch transcription of the reference model")
F = torch.nn.functional

from tests.oracles import torch_poolnet  # noqa: E402
from tests.oracles.torch_resnet import TINY, randomise  # noqa: E402
from tests.oracles.torch_resnet import ResNet as TorchResNet  # noqa: E402


def _nchw_to_nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


def _randn(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((28, 28), (5, 5)), ((7, 5), (3, 3)), ((11, 13), (1, 1)), ((4, 9), (5, 2)), ((3, 3), (3, 3))],
)
def test_adaptive_avg_pool_matches_torch(in_size, out_size) -> None:
    x = _randn(0, (2, 3, *in_size))
    ref = _nchw_to_nhwc(F.adaptive_avg_pool2d(torch.from_numpy(x), out_size))
    got = adaptive_avg_pool(jnp.asarray(_nchw_to_nhwc(x)), out_size)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_adaptive_avg_pool_windows_overlap_by_hand() -> None:
    # H = 5 -> 3: windows [0, 2), [1, 4), [3, 5) (start ⌊i·5/3⌋, end ⌈(i+1)·5/3⌉).
    x = jnp.arange(5.0)[None, :, None, None]
    got = np.asarray(adaptive_avg_pool(x, (3, 1)))[0, :, 0, 0]
    np.testing.assert_allclose(got, [0.5, 2.0, 3.5])


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((4, 4), (15, 15)), ((7, 5), (3, 9)), ((1, 1), (5, 3)), ((6, 8), (1, 1)), ((9, 9), (9, 9))],
)
def test_bilinear_align_corners_matches_torch(in_size, out_size) -> None:
    x = _randn(1, (2, 3, *in_size))
    ref = F.interpolate(torch.from_numpy(x), out_size, mode="bilinear", align_corners=True)
    got = resize_bilinear(jnp.asarray(_nchw_to_nhwc(x)), out_size, align_corners=True)
    np.testing.assert_allclose(got, _nchw_to_nhwc(ref), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_pair():
    """(torch PoolNet on the tiny backbone, the same weights as flax variables)."""
    resnet = TorchResNet(TINY["layers"], TINY["widths"], TINY["stem_width"], TINY["block"], 16)
    model = randomise(torch_poolnet.PoolNet(resnet), seed=3).eval()
    variables = torch_poolnet.poolnet_to_flax(model, TINY["layers"])
    return model, jax.tree.map(jnp.asarray, variables)


def test_resnet_conv1_is_the_stem_before_its_max_pool(tiny_pair) -> None:
    """PoolNet's finest tap: the backbone's stride-2 `conv1` feature, pooled into `stem`."""
    variables = {col: tree["backbone"] for col, tree in tiny_pair[1].items()}
    x = jnp.asarray(_randn(2, (2, 37, 41, 3)))
    got = jax.jit(lambda v, x: build_backbone("tiny").apply(v, x, train=False))(variables, x)
    assert got["conv1"].shape == (2, 19, 21, 16)  # stride 2, before the max-pool
    pooled = nn.max_pool(got["conv1"], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(pooled, got["stem"])


def test_poolnet_matches_torch_on_tiny_backbone(tiny_pair) -> None:
    tmodel, variables = tiny_pair
    x = _randn(4, (1, 3, 129, 115))  # odd sizes; the stride-16 maps are 9 x 8
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x))[:, 0].numpy()
    got = jax.jit(PoolNet("tiny").apply)(variables, jnp.asarray(_nchw_to_nhwc(x)))
    assert got.shape == (1, 129, 115) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_narrow_head_matches_torch() -> None:
    """`head_divisor` 8 (the synthetic recipe's detector): every head width / 8, same graph."""
    resnet = TorchResNet(TINY["layers"], TINY["widths"], TINY["stem_width"], TINY["block"], 16)
    tmodel = randomise(torch_poolnet.PoolNet(resnet, divisor=8), seed=5).eval()
    variables = jax.tree.map(jnp.asarray, torch_poolnet.poolnet_to_flax(tmodel, TINY["layers"]))
    assert variables["params"]["deep_pool_0"]["conv_sum_c"]["kernel"].shape == (3, 3, 64, 64)
    x = _randn(6, (2, 3, 121, 130))
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x))[:, 0].numpy()
    got = jax.jit(PoolNet("tiny", head_divisor=8).apply)(variables, jnp.asarray(_nchw_to_nhwc(x)))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    with pytest.raises(ValueError, match="head_divisor=3"):
        narrow = PoolNet("tiny", head_divisor=3)
        jax.eval_shape(lambda: narrow.init(jax.random.key(0), jnp.zeros((1, 121, 130, 3))))


def test_bfloat16_computes_in_bfloat16_and_returns_float32(tiny_pair) -> None:
    """Traced only: every convolution runs on bf16 operands, the logits come back float32."""
    variables = tiny_pair[1]
    x = jnp.zeros((1, 113, 120, 3))
    jaxpr = jax.make_jaxpr(PoolNet("tiny", dtype=jnp.bfloat16).apply)(variables, x)
    convs = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
    backbone = 1 + 4 * 2 + 3  # stem, 4 basic blocks, 3 projection shortcuts
    head = 5 + 1 + 3 + 1 + 4 + 5 * 4 + 4 + 1  # convert, GGM, infos, FAM 4 each + 4 fuse, score
    assert len(convs) == backbone + head
    assert all(v.aval.dtype == jnp.bfloat16 for e in convs for v in e.invars)
    (out,) = jaxpr.out_avals
    assert out.shape == (1, 113, 120) and out.dtype == jnp.float32


def _equations(jaxpr):
    """All equations of a jaxpr, including those inside nested (e.g. pjit) sub-jaxprs."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _equations(sub)


def test_poolnet_resnet50_structure_matches_torch() -> None:
    """Parameter tree of the ResNet-50 PoolNet = the torch transcription's, and odd output sizes."""
    with torch.device("meta"):
        tmodel = torch_poolnet.PoolNet(TorchResNet((3, 4, 6, 3)))
    n_torch = sum(p.numel() for p in tmodel.parameters())
    model = PoolNet("resnet50")
    for h, w in [(113, 113), (257, 130)]:
        x = jnp.zeros((1, h, w, 3))
        variables = jax.eval_shape(lambda x=x: model.init(jax.random.key(0), x))
        out = jax.eval_shape(lambda v, x=x: model.apply(v, x), variables)
        assert out.shape == (1, h, w) and out.dtype == jnp.float32
    n_flax = sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(variables["params"]))
    assert n_flax == n_torch
    assert variables["params"]["ppms_pre"]["kernel"].shape == (1, 1, 2048, 512)
    assert variables["params"]["convert_0"]["kernel"].shape == (1, 1, 64, 128)
    assert variables["params"]["deep_pool_0"]["conv_sum_c"]["kernel"].shape == (3, 3, 512, 512)
    assert "conv_sum_c" not in variables["params"]["deep_pool_4"]
    assert variables["params"]["score"]["bias"].shape == (1,)


def test_poolnet_rejects_inputs_below_the_pool_size() -> None:
    x = jnp.zeros((1, 112, 200, 3))  # stride-16 maps of 7 rows < the 8x8 average pool
    with pytest.raises(ValueError, match="at least"):
        jax.eval_shape(lambda: PoolNet("tiny").init(jax.random.key(0), x))
