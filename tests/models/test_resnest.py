"""ResNeSt backbones against the reference PyTorch package (PyPI ``resnest``, ``resnest.torch``).

Reference models are built with the package's own constructors (the code the official weights
were trained with), given deterministic random weights and non-trivial BatchNorm statistics,
and converted with our converter. Features are compared with rtol 1e-4 and atol 1e-4 times the
feature's largest magnitude: post-ReLU features are mostly exact zeros or O(1..20) values, so a
purely relative bound is meaningless near zero; float32 differences measure ~1e-6 of the scale.
"""

from __future__ import annotations

import hashlib
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.core import optim, weights
from pnoc_jax.models.convert import (
    check_hub_hash,
    main,
    resnest_flax_path,
    torch_resnest_to_flax,
)
from pnoc_jax.models.resnest import build_resnest, resnest_feature_channels

FEATURES = ("stem", "layer1", "layer2", "layer3", "layer4")
STRIDES = {
    32: {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32},
    16: {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16},
    8: {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8},
}
# resnest.torch.resnet.ResNet arguments that give each output stride.
REFERENCE_OS_KWARGS = {32: {}, 16: {"dilation": 2}, 8: {"dilated": True}}
# "resnest_tiny" as a reference model: ResNet(Bottleneck, [1, 1, 1, 1], **TINY_KWARGS).
TINY_KWARGS = dict(
    radix=2,
    groups=1,
    bottleneck_width=16,
    deep_stem=True,
    stem_width=8,
    avg_down=True,
    avd=True,
    avd_first=False,
)
# Backbone parameters without fc, counted on resnest.torch (meta device). With fc
# (2048 * 1000 + 1000) they are the published 27.5M / 48.3M / 70.2M / 110.9M.
PARAM_COUNTS = {
    "resnest50": 25_434_240,
    "resnest101": 46_226_016,
    "resnest200": 68_152_544,
    "resnest269": 108_880_480,
}


@pytest.fixture(scope="module")
def ref():
    """The reference package (tests using it are skipped without torch / resnest)."""
    pytest.importorskip("torch", reason="torch is needed only for the reference")
    return pytest.importorskip("resnest.torch", reason="pip install --no-deps resnest")


# ---------------------------------------------------------------------------------------------
# Torch-side helpers (oracle only)


def _randomise(model, seed: int):
    """Random conv weights/biases, non-trivial BN affine params and running stats; eval mode.

    Conv weights follow the package's own init, N(0, 2 / (k*k*out_channels)). (He fan-in init
    with eval-mode BN lets activations grow ~1000x over resnest50; the attention logits then
    reach 1e3..1e4 and float32 rounding alone moves the softmax weights by ~1e-4.)
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_out) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model.eval()


def _state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _reference_features(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """The package's own forward, with the stem (max-pool) and layer outputs hooked, as NHWC."""
    import torch

    feats: dict[str, np.ndarray] = {}
    hooks = [
        getattr(model, module).register_forward_hook(
            lambda _m, _i, out, key=key: feats.__setitem__(
                key, out.detach().numpy().transpose(0, 2, 3, 1).copy()
            )
        )
        for key, module in zip(FEATURES, ("maxpool", *FEATURES[1:]))
    ]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for hook in hooks:
        hook.remove()
    return feats


def _backbone_variables(state_dict, arch: str) -> dict:
    return {col: tree["backbone"] for col, tree in torch_resnest_to_flax(state_dict, arch).items()}


def _apply(model, variables, x_nchw: np.ndarray, **kwargs):
    x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
    return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def _assert_features_close(out, expected, err: str = "") -> None:
    for key in FEATURES:
        assert out[key].shape == expected[key].shape, (err, key)
        scale = float(np.abs(expected[key]).max())
        np.testing.assert_allclose(
            out[key], expected[key], rtol=1e-4, atol=1e-4 * scale, err_msg=f"{err} {key}"
        )


def _count(tree) -> int:
    return sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree))


def _init_shapes(model, hw: tuple[int, int] = (64, 64)):
    """(features, variables) of ``model`` on a 2 x hw image, as shapes (traced, not compiled)."""
    x = jnp.zeros((2, *hw, 3))
    return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))


def _assert_feature_shapes(feats, name: str, output_stride: int, hw: int = 64) -> None:
    chans = resnest_feature_channels(name)
    assert set(feats) == set(FEATURES)
    for key, stride in STRIDES[output_stride].items():
        assert feats[key].shape == (2, hw // stride, hw // stride, chans[key]), key


# ---------------------------------------------------------------------------------------------
# Parity with the reference


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_resnest50_matches_reference(ref, output_stride: int) -> None:
    tmodel = ref.resnest50(pretrained=False, **REFERENCE_OS_KWARGS[output_stride])
    _randomise(tmodel, seed=output_stride)
    x = np.random.default_rng(output_stride).standard_normal((2, 3, 64, 64)).astype(np.float32)
    expected = _reference_features(tmodel, x)
    variables = _backbone_variables(_state_dict(tmodel), "resnest50")
    out = _apply(build_resnest("resnest50", output_stride), variables, x, train=False)
    _assert_features_close(out, expected, f"OS{output_stride}")
    for key, stride in STRIDES[output_stride].items():
        assert out[key].shape[1:3] == (64 // stride, 64 // stride), key


@pytest.mark.parametrize(
    ("arch", "output_stride"), [("resnest101", 8), ("resnest200", 32), ("resnest269", 16)]
)
@pytest.mark.slow
def test_deep_resnests_match_reference(ref, arch: str, output_stride: int) -> None:
    """Every shipped depth at full depth, one 64x48 image each; ResNeSt-269 (the paper's) at
    output stride 16, 101 at 8 and 200 at 32 (resnest50 has all three above). The
    residual-branch BN scales (bn3) are drawn 5x smaller: with the package's init and BN scales
    ~U(0.5, 1.5), ResNeSt-269's 89 residual additions grow layer3 to ~1e7 (64x64) and the
    split-attention softmax then flips on float32 rounding; scaled, every stage stays O(10).
    Cost (user + sys CPU): ~20 s for 269, ~30 s for 101 and 200 together, mostly XLA compiling."""
    import torch

    with torch.device("meta"):
        tmodel = getattr(ref, arch)(pretrained=False, **REFERENCE_OS_KWARGS[output_stride])
    tmodel = _randomise(tmodel.to_empty(device="cpu"), seed=output_stride)
    with torch.no_grad():
        for name, m in tmodel.named_modules():
            if name.endswith(".bn3"):
                m.weight.mul_(0.2)
    x = np.random.default_rng(output_stride).standard_normal((1, 3, 64, 48)).astype(np.float32)
    expected = _reference_features(tmodel, x)
    variables = _backbone_variables(_state_dict(tmodel), arch)
    del tmodel
    out = _apply(build_resnest(arch, output_stride), variables, x, train=False)
    _assert_features_close(out, expected, f"{arch} OS{output_stride}")
    chans = resnest_feature_channels(arch)
    for key, stride in STRIDES[output_stride].items():
        assert out[key].shape == (1, -(-64 // stride), -(-48 // stride), chans[key]), key
    assert max(float(np.abs(v).max()) for v in expected.values()) < 100


def test_odd_input_size_matches_reference(ref) -> None:
    """65x47 at OS16: partial ceil_mode windows in the shortcut pools, avd padding at borders."""
    tmodel = _randomise(ref.resnest50(pretrained=False, dilation=2), seed=5)
    x = np.random.default_rng(5).standard_normal((2, 3, 65, 47)).astype(np.float32)
    expected = _reference_features(tmodel, x)
    variables = _backbone_variables(_state_dict(tmodel), "resnest50")
    out = _apply(build_resnest("resnest50", 16), variables, x, train=False)
    _assert_features_close(out, expected, "65x47")
    sizes = {key: out[key].shape[1:3] for key in FEATURES}
    assert sizes == {
        "stem": (17, 12),
        "layer1": (17, 12),
        "layer2": (9, 6),
        "layer3": (5, 3),
        "layer4": (5, 3),
    }


def test_train_mode_batch_statistics_match_reference(ref) -> None:
    """resnest_tiny in train mode (OS16): features and running statistics vs torch.

    flax updates the running variance with the biased batch variance, torch with the unbiased
    one (n / (n - 1) larger, n = N*H*W of the BN input; n = N for the attention BN on pooled
    features), so the expected flax value is derived from torch's update with that factor.
    """
    import torch

    tmodel = ref.resnet.ResNet(ref.resnet.Bottleneck, [1, 1, 1, 1], dilation=2, **TINY_KWARGS)
    _randomise(tmodel, seed=11)
    before = _state_dict(tmodel)
    variables = _backbone_variables(before, "resnest_tiny")
    counts: dict[str, int] = {}
    for name, m in tmodel.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(
                lambda _m, inp, _o, name=name: counts.__setitem__(
                    name, inp[0].numel() // inp[0].shape[1]
                )
            )
    x = np.random.default_rng(11).standard_normal((4, 3, 49, 37)).astype(np.float32)
    expected = _reference_features(tmodel.train(), x)
    after = _state_dict(tmodel)

    model = build_resnest("resnest_tiny", 16)
    out, updates = _apply(model, variables, x, train=True, mutable=["batch_stats"])
    _assert_features_close(out, expected, "train")
    stats = updates["batch_stats"]
    assert counts["layer2.0.conv2.bn1"] == 4  # the attention BN sees one value per image
    for name, n in counts.items():
        node = stats
        for part in resnest_flax_path(name):
            node = node[part]
        old_var = before[f"{name}.running_var"]
        new_var = 0.9 * old_var + (after[f"{name}.running_var"] - 0.9 * old_var) * (n - 1) / n
        np.testing.assert_allclose(node["mean"], after[f"{name}.running_mean"], 1e-4, 1e-5)
        np.testing.assert_allclose(node["var"], new_var, 1e-4, 1e-5, err_msg=name)

    # frozen_bn: train=True uses the running statistics, i.e. gives the eval-mode features.
    frozen = build_resnest("resnest_tiny", 16, frozen_bn=True)
    out_frozen = _apply(frozen, _backbone_variables(after, "resnest_tiny"), x, train=True)
    _assert_features_close(out_frozen, _reference_features(tmodel.eval(), x), "frozen")


# ---------------------------------------------------------------------------------------------
# Conversion


@pytest.mark.parametrize("arch", sorted(PARAM_COUNTS))
def test_conversion_is_complete(ref, arch: str) -> None:
    """Every torch tensor lands on a flax variable of the same shape (no forward pass)."""
    import torch

    with torch.device("meta"):
        tmodel = getattr(ref, arch)(pretrained=False)
    zero = np.zeros((), np.float32)
    state = {k: np.broadcast_to(zero, v.shape) for k, v in tmodel.state_dict().items()}
    tree = torch_resnest_to_flax(state, arch)
    feats, shapes = _init_shapes(build_resnest(arch, output_stride=16))
    _assert_feature_shapes(feats, arch, 16)
    for col in ("params", "batch_stats"):
        assert jax.tree.map(np.shape, tree[col]["backbone"]) == jax.tree.map(
            lambda a: a.shape, shapes[col]
        ), col
    n_torch = sum(p.numel() for k, p in tmodel.named_parameters() if not k.startswith("fc."))
    assert _count(tree["params"]) == _count(shapes["params"]) == n_torch == PARAM_COUNTS[arch]
    n_kept = sum(not (k.startswith("fc.") or k.endswith("num_batches_tracked")) for k in state)
    assert len(jax.tree_util.tree_leaves(tree)) == n_kept


def test_conversion_names_and_errors(ref) -> None:
    assert resnest_flax_path("conv1.4") == ("stem_bn2",)
    assert resnest_flax_path("layer3.0.downsample.1") == ("layer3_0", "downsample_conv")
    assert resnest_flax_path("layer2.1.conv2.fc1") == ("layer2_1", "conv2", "fc1")
    tmodel = ref.resnet.ResNet(ref.resnet.Bottleneck, [1, 1, 1, 1], **TINY_KWARGS)
    sd = _state_dict(_randomise(tmodel, seed=3))
    tree = torch_resnest_to_flax(sd, "resnest_tiny")
    p, s = tree["params"]["backbone"], tree["batch_stats"]["backbone"]
    np.testing.assert_array_equal(
        p["stem_conv3"]["kernel"], sd["conv1.6.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        p["layer4_0"]["conv2"]["conv"]["kernel"],
        sd["layer4.0.conv2.conv.weight"].transpose(2, 3, 1, 0),
    )
    assert p["layer4_0"]["conv2"]["conv"]["kernel"].shape == (3, 3, 64, 256)  # groups = radix
    np.testing.assert_array_equal(
        p["layer2_0"]["conv2"]["fc2"]["bias"], sd["layer2.0.conv2.fc2.bias"]
    )
    np.testing.assert_array_equal(
        s["layer3_0"]["downsample_bn"]["var"], sd["layer3.0.downsample.2.running_var"]
    )
    np.testing.assert_array_equal(s["stem_bn1"]["mean"], sd["conv1.1.running_mean"])

    missing = {k: v for k, v in sd.items() if k != "layer2.0.conv2.bn1.running_var"}
    with pytest.raises(KeyError, match=r"layer2\.0\.conv2\.bn1\.running_var"):
        torch_resnest_to_flax(missing, "resnest_tiny")
    with pytest.raises(KeyError, match=r"unexpected key in torch state_dict: 'layer1\.0\.se\.w'"):
        torch_resnest_to_flax({**sd, "layer1.0.se.w": np.zeros(3)}, "resnest_tiny")
    with pytest.raises(KeyError, match=r"missing keys .*'layer1\.1\.conv1\.weight'"):
        torch_resnest_to_flax(sd, "resnest50")  # tiny has one block per stage
    with pytest.raises(ValueError, match="resnest269"):
        torch_resnest_to_flax(sd, "resnest51")


def test_cli_resnest_and_hub_hash(ref, tmp_path) -> None:
    """--arch resnest50 on a wrapped, "module."-prefixed checkpoint; torch-hub SHA-256 check.

    Most tensors are stride-0 expansions of a scalar so the .pth stays a few KB.
    """
    import torch

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ref.resnest50(pretrained=False).state_dict().items()}
    state = {k: torch.zeros(()).expand(shape) for k, shape in shapes.items()}
    gen = torch.Generator().manual_seed(0)
    for key in ("layer4.2.conv2.conv.weight", "conv1.0.weight", "layer1.0.conv2.fc1.bias"):
        state[key] = torch.randn(shapes[key], generator=gen)
    plain = tmp_path / "plain.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, plain)
    assert check_hub_hash(plain) is None
    digest = hashlib.sha256(plain.read_bytes()).hexdigest()
    good = tmp_path / f"resnest50-{digest[:8]}.pth"
    shutil.copy(plain, good)
    assert check_hub_hash(good) == digest

    out = tmp_path / "rs50.npz"
    main(["--torch_checkpoint", str(good), "--arch", "resnest50", "--out", str(out)])
    tree = weights.load(out)
    p = tree["params"]["backbone"]
    np.testing.assert_array_equal(
        p["layer4_2"]["conv2"]["conv"]["kernel"],
        state["layer4.2.conv2.conv.weight"].numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        p["layer1_0"]["conv2"]["fc1"]["bias"], state["layer1.0.conv2.fc1.bias"]
    )
    assert _count(tree["params"]) == PARAM_COUNTS["resnest50"]

    bad_hash = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    bad = tmp_path / f"resnest50-{bad_hash}.pth"
    shutil.copy(plain, bad)
    with pytest.raises(SystemExit, match=rf"{bad.name}.*{digest}.*{bad_hash}"):
        main(["--torch_checkpoint", str(bad), "--arch", "resnest50", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"is a resnest50 .*--arch resnest50"):
        main(["--torch_checkpoint", str(plain), "--arch", "resnet50", "--out", str(out)])
    with pytest.raises(SystemExit):  # --depth N is an alias of --arch resnetN, not both
        main(["--torch_checkpoint", str(plain), "--arch", "resnet50", "--depth", "50"])


def test_load_backbone_from_a_converted_file_matches_reference(ref, tmp_path) -> None:
    """The notebook entry point: .npz from the converter -> (module, variables) -> features."""
    from pnoc_jax.models.backbones import load_backbone

    tmodel = ref.resnet.ResNet(ref.resnet.Bottleneck, [1, 1, 1, 1], dilation=2, **TINY_KWARGS)
    _randomise(tmodel, seed=21)
    path = str(tmp_path / "tiny.npz")
    weights.save(torch_resnest_to_flax(_state_dict(tmodel), "resnest_tiny"), path)
    module, variables = load_backbone("resnest_tiny", path, output_stride=16)
    x = np.random.default_rng(21).standard_normal((2, 3, 40, 40)).astype(np.float32)
    out = _apply(module, variables, x, train=False)
    _assert_features_close(out, _reference_features(tmodel, x), "load_backbone")


# ---------------------------------------------------------------------------------------------
# The converter's error paths (the CLI, on small checkpoints of stride-0 tensors)


def _save_zeros(path, shapes: dict) -> str:
    """A .pth whose tensors are stride-0 expansions of one zero (a few KB whatever the shapes)."""
    import torch

    torch.save({k: torch.zeros(()).expand(shape) for k, shape in shapes.items()}, path)
    return str(path)


def _shapes_of(builder) -> dict:
    import torch

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in builder().state_dict().items()}


def _convert_cli(path: str, arch: str, out) -> None:
    main(["--torch_checkpoint", path, "--arch", arch, "--out", str(out)])


def test_converter_names_the_architecture_of_another_checkpoint(ref, tmp_path) -> None:
    """A ResNeSt of another depth, a torchvision ResNet, and the reverse: the message says what
    the checkpoint is and which --arch converts it; nothing is written."""
    from tests.models.test_convert import TorchBottleneck, TorchResNet

    rs50 = _save_zeros(tmp_path / "rs50.pth", _shapes_of(lambda: ref.resnest50(pretrained=False)))
    tv50 = _save_zeros(
        tmp_path / "r50.pth", _shapes_of(lambda: TorchResNet(TorchBottleneck, [3, 4, 6, 3]))
    )
    out = tmp_path / "out.npz"
    with pytest.raises(SystemExit, match=r"rs50\.pth: the checkpoint is a resnest50 .*3/4/6/3"):
        _convert_cli(rs50, "resnest269", out)
    with pytest.raises(SystemExit, match=r"is a resnet50 \(its keys: 7x7 stem, bottleneck"):
        _convert_cli(tv50, "resnest50", out)
    with pytest.raises(SystemExit, match=r"is a resnest50 .*--arch resnest50"):
        _convert_cli(rs50, "resnet101", out)
    assert not out.exists()


def test_converter_names_missing_unexpected_and_misshapen_keys(ref, tmp_path) -> None:
    shapes = _shapes_of(lambda: ref.resnest50(pretrained=False))
    out = tmp_path / "out.npz"
    missing = {k: v for k, v in shapes.items() if k != "layer3.2.conv2.fc1.bias"}
    with pytest.raises(SystemExit, match=r"missing key in torch state_dict: 'layer3\.2\.conv2"):
        _convert_cli(_save_zeros(tmp_path / "missing.pth", missing), "resnest50", out)
    extra = {**shapes, "layer1.0.se.fc.weight": (4, 4), "layer2.0.extra.weight": (2,)}
    with pytest.raises(SystemExit, match=r"unexpected keys .*'layer1\.0\.se\.fc\.weight', "):
        _convert_cli(_save_zeros(tmp_path / "extra.pth", extra), "resnest50", out)
    # A truncated checkpoint (layer3 lost its last block) matches no architecture.
    cut = {k: v for k, v in shapes.items() if not k.startswith("layer3.5.")}
    with pytest.raises(SystemExit, match=r"'layer3\.5\.conv1\.weight'.*3/4/5/3 blocks per stage"):
        _convert_cli(_save_zeros(tmp_path / "cut.pth", cut), "resnest50", out)
    # Same names, other widths (as a wide ResNet is to a ResNet): refused by shape, named.
    wide = {**shapes, "layer2.1.conv1.weight": (256, 512, 1, 1)}
    with pytest.raises(SystemExit, match=r"layer2_1/conv1/kernel: \(1, 1, 512, 256\) \(expected"):
        _convert_cli(_save_zeros(tmp_path / "wide.pth", wide), "resnest50", out)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Without the reference


def test_feature_shapes_and_channels() -> None:
    """Strides and channels at every output stride (RS50..269 at OS16: see the conversion test)."""
    for os_ in (32, 16, 8):
        feats, _ = _init_shapes(build_resnest("resnest_tiny", os_))
        _assert_feature_shapes(feats, "resnest_tiny", os_)
    assert resnest_feature_channels("resnest_tiny") == {
        "stem": 16, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048
    }  # fmt: skip
    assert resnest_feature_channels("resnest50")["stem"] == 64
    assert resnest_feature_channels("resnest269")["stem"] == 128


def test_bn_parameters_are_named_bn() -> None:
    """The optimizer freezes BN by the path fragment "bn": exactly the BN params match it."""
    _, variables = _init_shapes(build_resnest("resnest_tiny"))
    bn_modules = {
        path[:-1] for path, _ in jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
    }
    assert len(bn_modules) == 3 + 4 * 5  # stem 3; per block bn1, bn0, attention bn1, bn3, shortcut
    labels = optim.param_labels({"backbone": variables["params"]}, frozen=("bn",))
    for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]:
        assert (label == "frozen") == (path[1:-1] in bn_modules), path
    assert set(variables["params"]["layer1_0"]) == {
        "conv1", "bn1", "conv2", "conv3", "bn3", "downsample_conv", "downsample_bn"
    }  # fmt: skip
    assert set(variables["params"]["layer1_0"]["conv2"]) == {"conv", "bn0", "fc1", "bn1", "fc2"}


def test_bf16_compute() -> None:
    """bf16 compute: float32 params, bf16 features close to the float32 ones."""
    model = build_resnest("resnest_tiny", 16)
    _, shapes = _init_shapes(build_resnest("resnest_tiny", 16, dtype=jnp.bfloat16))
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(shapes))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = math.sqrt(2 / math.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, std, leaf.shape), jnp.float32)
        base = {"scale": 1.0, "var": 1.0}.get(name, 0.0)
        return jnp.asarray(base + 0.1 * np.abs(rng.standard_normal(leaf.shape)), jnp.float32)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    x = rng.standard_normal((2, 3, 48, 40)).astype(np.float32)
    f32 = _apply(model, variables, x, train=False)
    bf16 = _apply(model.clone(dtype=jnp.bfloat16), variables, x, train=False)
    for key in FEATURES:
        assert bf16[key].dtype == jnp.bfloat16, key
        scale = float(jnp.abs(f32[key]).max())
        err = float(jnp.abs(bf16[key].astype(jnp.float32) - f32[key]).max())
        assert err < 0.05 * scale, (key, err, scale)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="resnest269"):
        build_resnest("resnest51")
    with pytest.raises(ValueError, match="resnest_tiny"):
        resnest_feature_channels("resnet50")
