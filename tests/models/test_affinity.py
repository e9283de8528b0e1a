"""AffinityNet: output grid, feature strides, and which parameters can learn."""

import jax
import jax.numpy as jnp
import pytest

from pnoc_jax.core import optim
from pnoc_jax.models.affinity import AffinityNet
from pnoc_jax.models.backbones import feature_strides


@pytest.mark.parametrize("output_stride", [16, 8])
def test_affinity_net_shape_and_stride(output_stride):
    model = AffinityNet("tiny", output_stride=output_stride)
    x = jax.ShapeDtypeStruct((2, 50, 72, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (2, 13, 18) and out.dtype == jnp.float32  # ⌈50/4⌉, ⌈72/4⌉
    strides = feature_strides(output_stride)
    assert strides == {
        "stem": 4,
        "layer1": 4,
        "layer2": 8,
        "layer3": output_stride,
        "layer4": output_stride,
    }
    params = variables["params"]
    edge = {f"edge{i}" for i in range(1, 6)} | {f"gn{i}" for i in range(1, 6)} | {"edge_out"}
    assert set(params) - {"backbone"} == edge
    assert params["edge1"]["kernel"].shape == (1, 1, 16, 32) and "bias" not in params["edge1"]
    assert params["edge_out"]["kernel"].shape == (1, 1, 160, 1) and "bias" in params["edge_out"]
    groups = optim.param_labels(params, frozen=("backbone",))
    assert set(jax.tree.leaves(groups["backbone"])) == {"frozen"}
    assert "frozen" not in jax.tree.leaves({k: v for k, v in groups.items() if k != "backbone"})


@pytest.mark.slow
def test_edge_layers_start_as_pytorch_defaults_and_all_decay():
    """Edge kernels and the output bias ~ U(±1/√fan_in) (PyTorch's Conv2d defaults, which the
    reference keeps), GroupNorm (1, 0); the optimizer decays every edge parameter."""
    import numpy as np

    from pnoc_jax.affinity import train as affinity_train
    from pnoc_jax.config_lib import base_config

    model = AffinityNet("resnet50", output_stride=16)
    x = jnp.zeros((1, 64, 64, 3))
    params = jax.jit(model.init)(jax.random.key(3), x)["params"]
    for name, fan_in in (("edge5", 2048), ("edge2", 256), ("edge_out", 160)):
        kernel = np.asarray(params[name]["kernel"]).ravel()
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(kernel).max() <= bound
        # U(-b, b): std b/√3 (flax's default lecun_normal would give std b, N(0, 1/fan_in)).
        assert abs(kernel.std() / (bound / np.sqrt(3)) - 1) < 0.1, name
    bias = float(params["edge_out"]["bias"][0])
    assert 0 < abs(bias) <= 1 / np.sqrt(160)  # drawn, not zero
    assert float(jnp.abs(params["gn3"]["scale"] - 1).max()) == 0
    assert float(jnp.abs(params["gn3"]["bias"]).max()) == 0

    cfg = base_config().affinity
    tx, _ = affinity_train.make_optimizer(cfg, total_steps=10)
    edge = {k: v for k, v in params.items() if k != "backbone"}
    ones = jax.tree.map(jnp.ones_like, edge)
    updates, _ = tx.update(ones, tx.init(edge), ones)
    for leaf in jax.tree.leaves(updates):  # -lr (g + wd·w) with g = w = 1, lr 0.1, wd 1e-4
        np.testing.assert_allclose(leaf, -cfg.lr * (1 + cfg.weight_decay), rtol=1e-6)
