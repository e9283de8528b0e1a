"""torch -> flax ResNet conversion against a hand-written torchvision-structured torch ResNet."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is needed only for the conversion reference")
tnn = torch.nn

from pnoc_jax.core import weights  # noqa: E402
from pnoc_jax.models.classifier import CAMClassifier  # noqa: E402
from pnoc_jax.models.convert import (  # noqa: E402
    main,
    torch_resnet_to_flax,
)
from pnoc_jax.models.resnet import ResNet  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Reference: same module names and dilation rules as torchvision.models.resnet (written here,
# since torchvision is not available). BasicBlock additionally accepts dilation (both 3x3 convs).


class TorchBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        d = dilation
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, padding=d, dilation=d, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, padding=d, dilation=d, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        d = dilation
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, padding=d, dilation=d, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TorchResNet(tnn.Module):
    def __init__(
        self,
        block,
        layers,
        widths=(64, 128, 256, 512),
        stem_width=64,
        replace_stride_with_dilation=(False, False, False),
        num_classes=1000,
    ):
        super().__init__()
        self.inplanes, self.dilation = stem_width, 1
        self.conv1 = tnn.Conv2d(3, stem_width, 7, 2, padding=3, bias=False)
        self.bn1 = tnn.BatchNorm2d(stem_width)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, 2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        for i in range(1, 4):
            layer = self._make_layer(
                block, widths[i], layers[i], 2, dilate=replace_stride_with_dilation[i - 1]
            )
            setattr(self, f"layer{i + 1}", layer)
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Linear(widths[3] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(
                tnn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                tnn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, dilation=self.dilation))
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = {"stem": x}
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats[f"layer{i}"] = x
        return feats


DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
BLOCKS = {"bottleneck": TorchBottleneck, "basic": TorchBasicBlock}


def _randomised(model: tnn.Module, seed: int) -> tnn.Module:
    """Random conv weights and non-trivial BN affine params / running stats; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
            elif isinstance(m, tnn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.num_batches_tracked.fill_(7)
    return model.eval()


def _state_dict(model: tnn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _n_backbone_params(model: tnn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("fc."))


def test_torch_reference_param_counts() -> None:
    """The numbers asserted in test_models.py, counted on the torch reference (meta device)."""
    with torch.device("meta"):
        r50 = TorchResNet(TorchBottleneck, [3, 4, 6, 3])
        r101 = TorchResNet(TorchBottleneck, [3, 4, 23, 3])
        r18 = TorchResNet(TorchBasicBlock, [2, 2, 2, 2])
    assert _n_backbone_params(r50) == 23_508_032
    assert _n_backbone_params(r50) + 2048 * 1000 + 1000 == 25_557_032  # torchvision's total
    assert _n_backbone_params(r101) == 42_500_160
    assert _n_backbone_params(r18) == 11_176_512


STAGES = (1, 2, 2, 2)
STEM, WIDTHS = 16, (16, 32, 64, 128)


@pytest.mark.parametrize("block", ["bottleneck", "basic"])
def test_features_match_torch(block: str) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 67, 75)).astype(np.float32)
    for os_, dilate in DILATE.items():
        tmodel = TorchResNet(BLOCKS[block], STAGES, WIDTHS, STEM, dilate)
        _randomised(tmodel, seed=os_)
        with torch.no_grad():
            ref = {
                k: v.numpy().transpose(0, 2, 3, 1) for k, v in tmodel(torch.from_numpy(x)).items()
            }
        variables = torch_resnet_to_flax(_state_dict(tmodel), STAGES)
        variables = {col: tree["backbone"] for col, tree in variables.items()}
        model = ResNet(STAGES, block, STEM, WIDTHS, output_stride=os_)
        xj = jnp.asarray(x.transpose(0, 2, 3, 1))
        out = jax.jit(partial(model.apply, train=False))(variables, xj)
        for key in ("stem", "layer1", "layer2", "layer3", "layer4"):
            assert out[key].shape == ref[key].shape, (os_, key)
            scale = float(np.abs(ref[key]).max())
            np.testing.assert_allclose(out[key], ref[key], rtol=1e-4, atol=1e-4 * scale)
        if os_ == 16:  # train=True with frozen_bn must give the eval result too.
            frozen = model.clone(frozen_bn=True)
            out_frozen = jax.jit(partial(frozen.apply, train=True))(variables, xj)
            np.testing.assert_allclose(out_frozen["layer4"], out["layer4"], rtol=1e-6, atol=1e-6)


def test_converted_tree_layout() -> None:
    tmodel = _randomised(TorchResNet(TorchBottleneck, STAGES, WIDTHS, STEM), seed=1)
    sd = _state_dict(tmodel)
    tree = torch_resnet_to_flax(sd, STAGES)
    assert set(tree) == {"params", "batch_stats"}
    p, s = tree["params"]["backbone"], tree["batch_stats"]["backbone"]
    np.testing.assert_array_equal(
        p["layer3_0"]["downsample_conv"]["kernel"],
        sd["layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(p["layer2_1"]["bn3"]["scale"], sd["layer2.1.bn3.weight"])
    np.testing.assert_array_equal(s["layer4_1"]["bn2"]["var"], sd["layer4.1.bn2.running_var"])
    np.testing.assert_array_equal(s["bn1"]["mean"], sd["bn1.running_mean"])
    assert "downsample_conv" not in p["layer2_1"]
    assert "fc" not in p and "num_batches_tracked" not in s["bn1"]
    n_leaves = len(jax.tree_util.tree_leaves(tree))
    n_kept = sum(not (k.startswith("fc.") or k.endswith("num_batches_tracked")) for k in sd)
    assert n_leaves == n_kept
    # Shapes agree with the flax model's own init.
    shapes = jax.eval_shape(
        lambda: ResNet(STAGES, "bottleneck", STEM, WIDTHS).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
        )
    )
    assert jax.tree.map(np.shape, tree["params"]["backbone"]) == jax.tree.map(
        lambda a: a.shape, shapes["params"]
    )

    missing = dict(sd)
    del missing["layer2.0.downsample.1.running_var"]
    with pytest.raises(KeyError, match=r"layer2\.0\.downsample\.1\.running_var"):
        torch_resnet_to_flax(missing, STAGES)
    with pytest.raises(KeyError, match=r"layer4\.2\.conv1\.weight"):
        torch_resnet_to_flax(sd, (1, 2, 2, 3))
    extra = {**sd, "layer1.0.se.weight": np.zeros(3, np.float32)}
    with pytest.raises(KeyError, match=r"layer1\.0\.se\.weight"):
        torch_resnet_to_flax(extra, STAGES)


def test_npz_roundtrip_and_merge_into_classifier(tmp_path) -> None:
    """tiny == torchvision-structured basic ResNet (1,1,1,1), stem 16, widths 16..128."""
    tmodel = _randomised(TorchResNet(TorchBasicBlock, [1, 1, 1, 1], WIDTHS, STEM, DILATE[16]), 3)
    tree = torch_resnet_to_flax(_state_dict(tmodel), (1, 1, 1, 1))
    path = tmp_path / "sub" / "tiny.npz"
    weights.save(tree, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.npz"]  # no temp left
    loaded = weights.load(path)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(tree)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(tree)):
        np.testing.assert_array_equal(a, b)

    model = CAMClassifier("tiny", num_classes=4, output_stride=16)
    x = np.random.default_rng(1).standard_normal((2, 3, 40, 36)).astype(np.float32)
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), xj))
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)
    merged = weights.merge(variables, loaded)
    np.testing.assert_array_equal(merged["params"]["classifier"]["kernel"], 0.5)  # head kept
    logits, cams = jax.jit(lambda v, x: model.apply(v, x))(merged, xj)
    with torch.no_grad():
        feat = tmodel(torch.from_numpy(x))["layer4"].numpy().transpose(0, 2, 3, 1)
    ref_cams = feat.sum(-1, keepdims=True) * 0.5 * np.ones(4, np.float32)
    np.testing.assert_allclose(cams, ref_cams, rtol=1e-4, atol=1e-4 * np.abs(ref_cams).max())
    np.testing.assert_allclose(logits, ref_cams.mean((1, 2)), rtol=1e-4, atol=1e-4)

    bad = weights.load(path)
    bad["params"]["backbone"]["layer3_0"]["conv2"]["kernel"] = np.zeros((3, 3, 64, 65))
    with pytest.raises(ValueError, match="params/backbone/layer3_0/conv2/kernel"):
        weights.merge(variables, bad)
    del bad["params"]["backbone"]["layer3_0"]["conv2"]
    with pytest.raises(KeyError, match="conv2"):
        weights.merge(variables, bad)


def test_cli(tmp_path) -> None:
    tmodel = TorchResNet(TorchBasicBlock, [2, 2, 2, 2])
    ckpt, out = tmp_path / "r18.pth", tmp_path / "r18.npz"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tmodel.state_dict().items()}}, ckpt)
    main(["--torch_checkpoint", str(ckpt), "--depth", "18", "--out", str(out)])
    tree = weights.load(out)
    np.testing.assert_array_equal(
        tree["params"]["backbone"]["layer4_1"]["conv2"]["kernel"],
        tmodel.layer4[1].conv2.weight.detach().numpy().transpose(2, 3, 1, 0),
    )
    n = sum(a.size for a in jax.tree_util.tree_leaves(tree["params"]))
    assert n == 11_176_512


def test_command_line_bad_input_is_one_line_and_out_expands_home(tmp_path, monkeypatch) -> None:
    """A missing file, a truncated .pth, an .npz and a pickled list: one line naming the file
    (`python -m pnoc_jax.models.convert` for the truncated one: exit 1, no traceback; the
    others through `main`, which the command runs); `--out=~/x.npz` writes under $HOME. The two
    command-line runs go at once (each start imports torch and JAX)."""
    tmodel = TorchResNet(TorchBasicBlock, [2, 2, 2, 2])
    good = tmp_path / "r18.pth"
    torch.save(tmodel.state_dict(), good)
    truncated, as_npz, as_list = tmp_path / "cut.pth", tmp_path / "w.npz", tmp_path / "list.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    np.savez(as_npz, a=np.zeros(3))
    torch.save([torch.zeros(2)], as_list)
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": os.path.abspath(REPO_ROOT)}
    command = [sys.executable, "-m", "pnoc_jax.models.convert", "--depth=18", "--out=~/x.npz"]
    runs = {
        path: subprocess.Popen(
            [*command, f"--torch_checkpoint={path}"],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for path in (truncated, good)
    }
    in_process = {
        tmp_path / "none.pth": "none.pth: no such file",
        as_npz: "w.npz: not a torch checkpoint torch can read",
        as_list: "list.pth: holds a list, not a state_dict",
    }
    for path, expected in in_process.items():
        with pytest.raises(SystemExit) as exit_info:
            main(["--torch_checkpoint", str(path), "--depth", "18", "--out", "x.npz"])
        message = str(exit_info.value.code)
        assert message.startswith("error: ") and expected in message and "\n" not in message
    stdout, stderr = runs[truncated].communicate(timeout=300)
    assert runs[truncated].returncode == 1, stderr[-2000:]
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("error: ") and "cut.pth: not a torch checkpoint" in stderr, stderr
    stdout, stderr = runs[good].communicate(timeout=300)
    assert runs[good].returncode == 0, stderr[-2000:]
    assert f"wrote {tmp_path}/x.npz: resnet18" in stdout
    assert not (tmp_path / "~").exists()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert "backbone" in weights.load("~/x.npz")["params"]  # every weights key: ~ expanded
