"""CCAM (C²AM disentangler) against a torch transcription and a NumPy pooling of its features."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.core.optim import param_labels
from pnoc_jax.models.backbones import build_backbone
from pnoc_jax.models.ccam import CCAM
from pnoc_jax.saliency import losses
from tests.oracles import numpy_saliency as brute

torch = pytest.importorskip("torch", reason="torch transcription of the reference model")

from tests.oracles import torch_ccam  # noqa: E402
from tests.oracles.torch_resnet import TINY, ResNet, randomise  # noqa: E402

STAGES = TINY["layers"]


@pytest.fixture(scope="module")
def pair():
    """(torch CCAM with random weights, the same weights as flax variables, input NCHW)."""
    resnet = ResNet(TINY["layers"], TINY["widths"], TINY["stem_width"], TINY["block"], 16)
    model = randomise(torch_ccam.CCAM(resnet), seed=0)
    with torch.no_grad():  # BN(1) of the head: a non-trivial affine map and running statistics
        model.bn_head.weight.fill_(1.3)
        model.bn_head.bias.fill_(-0.2)
        model.bn_head.running_mean.fill_(0.1)
        model.bn_head.running_var.fill_(2.0)
    variables = jax.tree.map(jnp.asarray, torch_ccam.ccam_to_flax(model, STAGES))
    x = np.random.default_rng(0).standard_normal((3, 3, 67, 75)).astype(np.float32)
    return model, variables, x


def _nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def _check(got, ref, rtol=1e-4):
    ref = np.asarray(ref)
    assert got.shape == ref.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


@pytest.mark.parametrize("mode", ["eval", "train", "train_frozen_bn"])
def test_matches_torch(pair, mode: str) -> None:
    tmodel, variables, x = pair
    tmodel = copy.deepcopy(tmodel)  # a training forward updates torch's running statistics
    train = mode != "eval"
    model = CCAM("tiny", output_stride=16, frozen_bn=mode == "train_frozen_bn")
    tmodel.train(train)
    if mode == "train_frozen_bn":
        tmodel.resnet.eval()  # only the backbone's BN is fixed; the head's BN uses the batch
    with torch.no_grad():
        fg, bg, z = (t.numpy() for t in tmodel(torch.from_numpy(x)))
    mutable = ["batch_stats"] if train else False
    out = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=mutable))(variables, _nhwc(x))
    z_j, fg_j, bg_j = out[0] if train else out
    _check(z_j, z[:, 0])
    _check(fg_j, fg)
    _check(bg_j, bg)


def test_embeddings_are_the_sigmoid_weighted_feature_means(pair) -> None:
    """fg / bg recomputed in NumPy (cell loops, float64) from z and the backbone's features."""
    _, variables, x = pair
    model = CCAM("tiny")
    z, fg, bg = jax.jit(model.apply)(variables, _nhwc(x))
    backbone = {col: tree["backbone"] for col, tree in variables.items()}
    feats = jax.jit(lambda v, x: build_backbone("tiny").apply(v, x, train=False))(
        backbone, _nhwc(x)
    )
    features = np.concatenate([feats["layer4"], feats["layer3"]], axis=-1)
    assert features.shape[-1] == fg.shape[-1] == 128 + 64
    ref_fg, ref_bg = brute.foreground_background(np.asarray(z), features)
    np.testing.assert_allclose(fg, ref_fg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bg, ref_bg, rtol=1e-5, atol=1e-6)
    # The embeddings split the feature mean: fg + bg = Σ F / (h·w).
    np.testing.assert_allclose(fg + bg, features.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_loss_gradients_are_finite(pair) -> None:
    _, variables, x = pair
    model = CCAM("tiny")
    hints = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (3, 67, 75)), jnp.float32)

    def loss_fn(params):
        (z, fg, bg), _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            _nhwc(x),
            train=True,
            mutable=["batch_stats"],
        )
        h = losses.resize_hints(hints, z.shape[1:])
        return (
            losses.hint_loss(z, h, 0.4, 0.1)
            + losses.sim_max_loss(fg, 0.25)
            + losses.sim_min_loss(bg, fg)
            + losses.sim_max_loss(bg, 0.25)
        )

    value, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
    assert np.isfinite(float(value))
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(g).all() for g in leaves)
    assert np.abs(grads["disentangler_conv"]["kernel"]).max() > 0


def test_shapes_strides_dtype_and_param_groups() -> None:
    x = jnp.zeros((2, 64, 48, 3))
    model = CCAM("resnet50", output_stride=16, dtype=jnp.bfloat16)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    z, fg, bg = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert (z.shape, fg.shape, bg.shape) == ((2, 4, 3), (2, 3072), (2, 3072))
    assert z.dtype == fg.dtype == bg.dtype == jnp.float32
    assert variables["params"]["disentangler_conv"]["kernel"].shape == (3, 3, 3072, 1)
    assert variables["params"]["disentangler_conv"]["kernel"].dtype == jnp.float32
    labels = param_labels(variables["params"])
    assert labels["disentangler_conv"]["kernel"] == "head_weight"
    assert labels["disentangler_bn"] == {"scale": "head_weight", "bias": "head_bias"}
    assert labels["backbone"]["layer1_0"]["bn1"]["bias"] == "backbone_bias"

    os8 = CCAM("tiny", output_stride=8)
    z8 = jax.eval_shape(lambda: os8.init_with_output(jax.random.key(0), x)[0][0])
    assert z8.shape == (2, 8, 6)
    with pytest.raises(ValueError, match="output stride 32"):
        CCAM("tiny", output_stride=32).init(jax.random.key(0), x)
