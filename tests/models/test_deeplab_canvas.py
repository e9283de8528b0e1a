"""DeepLabV3+'s head width and output stride, and inference on a padded canvas (`valid`)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.models.backbones import feature_channels
from pnoc_jax.models.deeplab import ASPP, DeepLabV3Plus

K = 5


def _init(model, x, **kwargs):
    return model.init(jax.random.key(0), x, **kwargs)


def _randomise(variables, seed: int):
    """Vector parameters (GroupNorm and BN scales and offsets, biases) redrawn around 1, so
    they are not the 1/0 they start at."""
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    params = [
        (1.0 + 0.5 * jax.random.normal(k, x.shape)).astype(x.dtype) if x.ndim == 1 else x
        for k, x in zip(keys, leaves, strict=True)
    ]
    return {**variables, "params": jax.tree.unflatten(tree, params)}


@pytest.mark.slow
@pytest.mark.parametrize(("os_", "size"), [(16, (45, 71)), (8, (37, 29))])
def test_head_width_and_output_stride(os_: int, size: tuple[int, int]) -> None:
    """ASPP on layer4 at the output stride, decoder on layer1 at stride 4, both `head_channels`
    wide (the reduction `low_level_channels`), logits at the input size."""
    model = DeepLabV3Plus("tiny", K, os_, head_channels=12, low_level_channels=8)
    x = jnp.zeros((2, *size, 3))
    shapes = jax.eval_shape(lambda: _init(model, x))["params"]
    c4, c1 = feature_channels("tiny")["layer4"], feature_channels("tiny")["layer1"]
    assert shapes["aspp"]["branch0"]["conv"]["kernel"].shape == (1, 1, c4, 12)
    assert shapes["aspp"]["branch1"]["conv"]["kernel"].shape == (3, 3, c4, 12)
    assert shapes["aspp"]["project"]["conv"]["kernel"].shape == (1, 1, 5 * 12, 12)
    assert shapes["decoder"]["reduce"]["conv"]["kernel"].shape == (1, 1, c1, 8)
    assert shapes["decoder"]["fuse1"]["conv"]["kernel"].shape == (3, 3, 12 + 8, 12)
    assert shapes["decoder"]["classifier"]["kernel"].shape == (1, 1, 12, K)

    captured = {}

    def capture(module, args, kwargs, out):  # the features the head reads
        del kwargs
        if isinstance(module, ASPP):
            captured["layer4"] = args[0].shape
            captured["aspp"] = out.shape
        return out

    variables = _init(model, x)
    with nn_intercept(capture):
        out = model.apply(variables, x)
    assert out.shape == (2, *size, K)
    layer4 = tuple(math.ceil(n / os_) for n in size)
    assert captured["layer4"][1:3] == layer4 and captured["aspp"] == (2, *layer4, 12)


def nn_intercept(fn):
    """flax's method interceptor calling `fn(module, args, kwargs, out)` after each call."""
    import flax.linen as nn

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            out = fn(context.module, args, kwargs, out)
        return out

    return nn.intercept_methods(interceptor)


def test_aspp_on_a_zero_padded_canvas_equals_aspp_on_the_features_alone() -> None:
    """With `valid`, image pooling and GroupNorm see only the image's cells: features padded
    with zeros (what the convolutions' own zero padding sees) give the same output there."""
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2, 7, 5, 16)).astype(np.float32)
    padded = np.zeros((2, 12, 12, 16), np.float32)
    padded[:, :7, :5] = feats
    valid = np.zeros((2, 12, 12), bool)
    valid[:, :7, :5] = True
    aspp = ASPP((1, 2, 3), channels=8)
    variables = _randomise(_init(aspp, jnp.asarray(feats), train=False), seed=1)
    alone = aspp.apply(variables, jnp.asarray(feats), False)
    masked = aspp.apply(variables, jnp.asarray(padded), False, jnp.asarray(valid))
    # float32: GroupNorm's E[x²] − E[x]² over sums taken in another order
    np.testing.assert_allclose(np.asarray(masked)[:, :7, :5], alone, rtol=1e-4, atol=5e-4)
    unmasked = aspp.apply(variables, jnp.asarray(padded), False)
    assert np.abs(np.asarray(unmasked)[:, :7, :5] - alone).max() > 1e-2  # padding would dilute


@pytest.mark.slow
def test_valid_everywhere_changes_nothing_and_masking_shrinks_the_padding_error() -> None:
    """What masking cannot undo: convolutions at the image's border see the canvas, and the
    align_corners=True upsampling maps the canvas's grid, not the image's (measured with this
    random network: mean |Δlogit| 0.33 with the mask, 0.57 without)."""
    model = DeepLabV3Plus("tiny", K, 16, head_channels=8, low_level_channels=4)
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, 40, 56, 3)).astype(np.float32)
    variables = _randomise(_init(model, jnp.asarray(image)), seed=3)
    plain = model.apply(variables, jnp.asarray(image))
    everywhere = model.apply(variables, jnp.asarray(image), valid=jnp.ones((1, 40, 56), bool))
    np.testing.assert_allclose(everywhere, plain, rtol=1e-5, atol=1e-5)

    canvas = np.zeros((1, 96, 96, 3), np.float32)
    canvas[:, :40, :56] = image
    valid = np.zeros((1, 96, 96), bool)
    valid[:, :40, :56] = True
    masked = model.apply(variables, jnp.asarray(canvas), valid=jnp.asarray(valid))
    unmasked = model.apply(variables, jnp.asarray(canvas))
    err_masked = float(np.abs(np.asarray(masked)[:, :40, :56] - plain).mean())
    err_unmasked = float(np.abs(np.asarray(unmasked)[:, :40, :56] - plain).mean())
    assert err_masked < 0.7 * err_unmasked, (err_masked, err_unmasked)
