"""Convert torchvision ResNet and ``resnest.torch`` ResNeSt weights to `core.weights` .npz files.

ResNet name mapping (torch ``state_dict`` key -> flax variables, all under ``backbone``)::

    conv1.weight                       params/backbone/conv1/kernel        OIHW -> HWIO
    bn1.weight / bn1.bias              params/backbone/bn1/scale / bias
    bn1.running_mean / running_var     batch_stats/backbone/bn1/mean / var
    layer{i}.{j}.conv{k}.weight        params/backbone/layer{i}_{j}/conv{k}/kernel
    layer{i}.{j}.bn{k}.*               .../layer{i}_{j}/bn{k}/{scale,bias,mean,var}
    layer{i}.{j}.downsample.0.weight   params/backbone/layer{i}_{j}/downsample_conv/kernel
    layer{i}.{j}.downsample.1.*        .../layer{i}_{j}/downsample_bn/{scale,bias,mean,var}
    fc.*, *.num_batches_tracked        dropped

ResNeSt (:func:`torch_resnest_to_flax`): the torch module path maps to the flax path by
:func:`resnest_flax_path` (``.`` separates modules; a numeric Sequential index joins its
parent: ``layer{i}.{j}`` -> ``layer{i}_{j}``, and ``conv1.{0,1,3,4,6}`` / ``downsample.{1,2}``
take the names in ``RESNEST_RENAMES``); leaves map as above, conv ``bias`` -> ``bias``.

CLI (torch is imported lazily, only here)::

    python -m pnoc_jax.models.convert --torch_checkpoint resnest269-0cc87c48.pth \
        --arch resnest269 --out resnest269.npz

``--arch`` is one of ``ARCHS`` (``--depth N`` still means ``--arch resnetN``). A checkpoint
named like torch hub's ``<name>-<hex>.pth`` (8 or more lowercase hex digits) must have a
SHA-256 starting with ``<hex>``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pnoc_jax.core import fileio, weights
from pnoc_jax.core.errors import first_line
from pnoc_jax.models.resnest import RESNEST_CONFIGS, resnest_config, resnest_plan
from pnoc_jax.models.resnet import stage_plan

_BN_MAP = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}

DEPTH_STAGES: dict[int, tuple[tuple[int, ...], str]] = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}


def _get(state_dict: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in state_dict:
        raise KeyError(f"missing key in torch state_dict: {key!r}")
    return np.asarray(state_dict[key], dtype=np.float32)


def _name_map(
    state_dict: Mapping[str, Any], stage_sizes: Sequence[int], block: str | None
) -> dict[str, tuple[str, tuple[str, ...], str]]:
    """torch key -> (collection, flax module path, kind) for every expected key."""
    if block is None:
        block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    stem_width = _get(state_dict, "conv1.weight").shape[0]
    widths = [_get(state_dict, f"layer{i}.0.conv1.weight").shape[0] for i in range(1, 5)]
    plan = stage_plan(stage_sizes, block, stem_width, widths, 32)
    n_convs = 3 if block == "bottleneck" else 2

    mapping: dict[str, tuple[str, tuple[str, ...], str]] = {}

    def add_conv(tkey: str, path: tuple[str, ...]) -> None:
        mapping[f"{tkey}.weight"] = ("params", (*path, "kernel"), "conv")

    def add_bn(tkey: str, path: tuple[str, ...]) -> None:
        for tname, (col, fname) in _BN_MAP.items():
            mapping[f"{tkey}.{tname}"] = (col, (*path, fname), "bn")

    add_conv("conv1", ("conv1",))
    add_bn("bn1", ("bn1",))
    for i, blocks in enumerate(plan, start=1):
        for j, cfg in enumerate(blocks):
            prefix, mod = f"layer{i}.{j}", f"layer{i}_{j}"
            for k in range(1, n_convs + 1):
                add_conv(f"{prefix}.conv{k}", (mod, f"conv{k}"))
                add_bn(f"{prefix}.bn{k}", (mod, f"bn{k}"))
            if cfg["downsample"]:
                add_conv(f"{prefix}.downsample.0", (mod, "downsample_conv"))
                add_bn(f"{prefix}.downsample.1", (mod, "downsample_bn"))
    return mapping


def torch_resnet_to_flax(
    state_dict: Mapping[str, Any], stage_sizes: Sequence[int], block: str | None = None
) -> dict[str, Any]:
    """Map a torchvision ResNet ``state_dict`` onto ``{"params"|"batch_stats": {"backbone": ...}}``.

    Values may be numpy arrays or CPU torch tensors. ``block`` ("bottleneck"/"basic") is
    inferred from the keys when omitted. ``fc.*`` and ``num_batches_tracked`` are ignored; any
    other missing or unexpected key raises a KeyError naming it.
    """
    return _convert(state_dict, _name_map(state_dict, stage_sizes, block))


def _is_ignored(key: str) -> bool:
    return key.startswith("fc.") or key.endswith("num_batches_tracked")


def _key_error(kind: str, keys: Sequence[str]) -> KeyError:
    shown = ", ".join(repr(k) for k in keys[:5])
    more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
    return KeyError(f"{kind} key{'s' if len(keys) > 1 else ''} in torch state_dict: {shown}{more}")


def _convert(
    state_dict: Mapping[str, Any], mapping: Mapping[str, tuple[str, tuple[str, ...], str]]
) -> dict[str, Any]:
    """Apply ``mapping`` (torch key -> (collection, flax path, kind)) to ``state_dict``.

    Unexpected keys (other than ``fc.*`` / ``num_batches_tracked``) and missing keys raise a
    KeyError naming them; kind "conv" values are transposed OIHW -> HWIO.
    """
    unexpected = [k for k in state_dict if k not in mapping and not _is_ignored(k)]
    if unexpected:
        raise _key_error("unexpected", unexpected)
    missing = [k for k in mapping if k not in state_dict]
    if missing:
        raise _key_error("missing", missing)
    out: dict[str, Any] = {"params": {"backbone": {}}, "batch_stats": {"backbone": {}}}
    for tkey, (col, path, kind) in mapping.items():
        value = _get(state_dict, tkey)
        if kind == "conv":
            value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        node = out[col]["backbone"]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


# ---------------------------------------------------------------------------------------------
# ResNeSt (resnest.torch.resnest{50,101,200,269})

# Sequential children that are not blocks: torch "parent.index" -> flax module name. BNs keep
# "bn" in their name (the optimizer freezes BN parameters by that fragment).
RESNEST_RENAMES = {
    "conv1.0": "stem_conv1",
    "conv1.1": "stem_bn1",
    "conv1.3": "stem_conv2",
    "conv1.4": "stem_bn2",
    "conv1.6": "stem_conv3",
    "downsample.1": "downsample_conv",  # downsample.0 is the (parameter-free) avg-pool
    "downsample.2": "downsample_bn",
}


def resnest_flax_path(torch_module: str) -> tuple[str, ...]:
    """Flax module path of a ``resnest.torch`` module, e.g. ``layer2.0.conv2.fc1``.

    ``layer2.0.conv2.fc1`` -> ``("layer2_0", "conv2", "fc1")``;
    ``layer2.0.downsample.1`` -> ``("layer2_0", "downsample_conv")``;
    ``conv1.4`` -> ``("stem_bn2",)``.
    """
    path: list[str] = []
    for part in torch_module.split("."):
        if part.isdigit():
            parent = path.pop()
            path.append(RESNEST_RENAMES.get(f"{parent}.{part}", f"{parent}_{part}"))
        else:
            path.append(part)
    return tuple(path)


def resnest_torch_modules(arch: str) -> dict[str, str]:
    """Torch module name -> kind ("conv", "conv_bias" or "bn") of every parametrised module."""
    cfg = resnest_config(arch)
    modules = {
        "conv1.0": "conv",
        "conv1.1": "bn",
        "conv1.3": "conv",
        "conv1.4": "bn",
        "conv1.6": "conv",
        "bn1": "bn",
    }
    plan = resnest_plan(cfg["stage_sizes"], cfg["stem_width"], 32)
    for i, blocks in enumerate(plan, start=1):
        for j, block in enumerate(blocks):
            prefix = f"layer{i}.{j}"
            for name, kind in (
                ("conv1", "conv"),
                ("bn1", "bn"),
                ("conv2.conv", "conv"),
                ("conv2.bn0", "bn"),
                ("conv2.fc1", "conv_bias"),
                ("conv2.bn1", "bn"),
                ("conv2.fc2", "conv_bias"),
                ("conv3", "conv"),
                ("bn3", "bn"),
            ):
                modules[f"{prefix}.{name}"] = kind
            if block["downsample"]:
                modules[f"{prefix}.downsample.1"] = "conv"
                modules[f"{prefix}.downsample.2"] = "bn"
    return modules


def torch_resnest_to_flax(state_dict: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """Map a ``resnest.torch`` ``state_dict`` onto ``{"params"|"batch_stats": {"backbone": ...}}``.

    ``arch`` is a name in :data:`pnoc_jax.models.resnest.RESNEST_CONFIGS` (e.g. "resnest269").
    Values may be numpy arrays or CPU torch tensors. ``fc.*`` and ``num_batches_tracked`` are
    ignored; any other missing or unexpected key raises a KeyError naming it. Shapes are checked
    later, against the model, by `pnoc_jax.core.weights.merge`.
    """
    mapping: dict[str, tuple[str, tuple[str, ...], str]] = {}
    for module, kind in resnest_torch_modules(arch).items():
        path = resnest_flax_path(module)
        if kind == "bn":
            for tname, (col, fname) in _BN_MAP.items():
                mapping[f"{module}.{tname}"] = (col, (*path, fname), "bn")
        else:
            mapping[f"{module}.weight"] = ("params", (*path, "kernel"), "conv")
            if kind == "conv_bias":
                mapping[f"{module}.bias"] = ("params", (*path, "bias"), "bias")
    return _convert(state_dict, mapping)


# ---------------------------------------------------------------------------------------------
# Any supported architecture

RESNEST_ARCHS = ("resnest50", "resnest101", "resnest200", "resnest269")
ARCHS = (*(f"resnet{d}" for d in DEPTH_STAGES), *RESNEST_ARCHS)


_BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.")


def identify(state_dict: Mapping[str, Any]) -> str | None:
    """The architecture (a name of :data:`ARCHS`, or "resnest_tiny") whose key layout the
    checkpoint has, from its key names alone: the deep stem and split-attention keys of a
    ResNeSt, torchvision's bottleneck ``conv3`` or basic blocks, and the blocks per stage.
    None when no known layout matches."""
    sizes = _blocks_per_stage(state_dict)
    if "conv1.0.weight" in state_dict and "layer1.0.conv2.fc1.weight" in state_dict:
        for name, cfg in RESNEST_CONFIGS.items():
            if tuple(cfg["stage_sizes"]) == sizes:
                return name
        return None
    if "conv1.weight" in state_dict:
        block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
        for depth, (stages, kind) in DEPTH_STAGES.items():
            if stages == sizes and kind == block:
                return f"resnet{depth}"
    return None


def torch_to_flax(state_dict: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """Convert a torch ``state_dict`` of the architecture ``arch`` (one of :data:`ARCHS`).

    A checkpoint of another known architecture is refused with a ValueError naming it (and the
    ``--arch`` that converts it); otherwise a missing or unexpected key is a KeyError naming it.
    """
    if arch not in ARCHS and arch not in RESNEST_CONFIGS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    found = identify(state_dict)
    if found is not None and found != arch:
        raise ValueError(
            f"the checkpoint is a {found} (its keys: {_layout(state_dict)}), not a {arch}; "
            f"convert it with --arch {found}, or use the {arch} weights"
        )
    try:
        if arch in RESNEST_CONFIGS:
            return torch_resnest_to_flax(state_dict, arch)
        stages, block = DEPTH_STAGES[int(arch.removeprefix("resnet"))]
        return torch_resnet_to_flax(state_dict, stages, block)
    except KeyError as e:
        raise KeyError(
            f"{e.args[0]} (converting to {arch}; the checkpoint's keys match no known "
            f"architecture: {_layout(state_dict)})"
        ) from None


def _blocks_per_stage(state_dict: Mapping[str, Any]) -> tuple[int, ...]:
    blocks = [0, 0, 0, 0]
    for key in state_dict:
        match = _BLOCK_KEY.match(key)
        if match:
            layer = int(match.group(1)) - 1
            blocks[layer] = max(blocks[layer], int(match.group(2)) + 1)
    return tuple(blocks)


def _layout(state_dict: Mapping[str, Any]) -> str:
    """A one-line description of a checkpoint's keys: stem, block kind, blocks per stage."""
    blocks = _blocks_per_stage(state_dict)
    stem = "deep stem" if "conv1.0.weight" in state_dict else "7x7 stem"
    if "layer1.0.conv2.fc1.weight" in state_dict:
        kind = "split-attention blocks"
    elif "layer1.0.conv3.weight" in state_dict:
        kind = "bottleneck blocks"
    else:
        kind = "basic blocks"
    return f"{stem}, {kind}, {'/'.join(map(str, blocks))} blocks per stage"


def _shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_shapes(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = tuple(getattr(value, "shape", None) or np.shape(value))
    return out


def check_shapes(tree: Mapping[str, Any], arch: str) -> None:
    """Every converted array against the shapes of the backbone ``arch`` (ValueError naming the
    first mismatches: a checkpoint with the right names but other widths, e.g. a wide ResNet)."""
    import jax
    import jax.numpy as jnp

    from pnoc_jax.models.backbones import build_backbone

    model = build_backbone(arch, output_stride=16)
    x = jnp.zeros((1, 64, 64, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    wrong = []
    for col in ("params", "batch_stats"):
        exp = _shapes(shapes[col])
        got = _shapes(tree[col]["backbone"])
        wrong += [
            f"{col}/backbone/{k}: {got[k]} (expected {shape})"
            for k, shape in exp.items()
            if k in got and got[k] != shape
        ]
    if wrong:
        more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
        raise ValueError(
            f"the checkpoint's shapes do not fit {arch}: {'; '.join(wrong[:5])}{more} "
            "(same parameter names, other widths: a checkpoint of another architecture)"
        )


_HUB_FILENAME = re.compile(r".+-([0-9a-f]{8,64})\.pth")


def check_hub_hash(path: str | os.PathLike) -> str | None:
    """Verify a checkpoint named like torch hub's ``<name>-<hex>.pth`` against its SHA-256.

    torch hub names published weights by the first hex digits of the file's SHA-256 (e.g.
    ``resnest269-0cc87c48.pth``). Returns the full hex digest when the name has such a suffix
    and it matches, None when the name has none; raises a ValueError naming the file and both
    hashes when the digest does not start with the suffix (truncated or substituted file).
    """
    match = _HUB_FILENAME.fullmatch(Path(path).name)
    if match is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    actual, expected = digest.hexdigest(), match.group(1)
    if not actual.startswith(expected):
        raise ValueError(
            f"{path}: SHA-256 {actual} does not start with {expected} (the hash in the file "
            "name, torch hub convention); the download is corrupt or not the published file"
        )
    return actual


def main(argv: Sequence[str] | None = None) -> None:
    """Convert a torch checkpoint (.pth) to an .npz of backbone weights (`core.weights`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch_checkpoint", required=True, help="torch .pth state_dict")
    arch = parser.add_mutually_exclusive_group(required=True)
    arch.add_argument("--arch", choices=ARCHS)
    arch.add_argument(
        "--depth", type=int, choices=sorted(DEPTH_STAGES), help="alias of --arch resnet<depth>"
    )
    parser.add_argument("--out", required=True, help="output .npz path")
    args = parser.parse_args(argv)
    name = args.arch or f"resnet{args.depth}"
    source, out = fileio.expand(args.torch_checkpoint), fileio.expand(args.out)
    if not fileio.isfile(source):
        raise SystemExit(f"error: --torch_checkpoint {source}: no such file")

    try:
        digest = check_hub_hash(source)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if digest is not None:
        print(f"{source}: SHA-256 {digest[:16]}... matches the file name")

    state = _read_state_dict(source)
    try:
        tree = torch_to_flax(state, name)
        check_shapes(tree, name)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: {source}: {e.args[0]}") from None
    weights.save(tree, out)
    n = weights.count_parameters(tree)
    print(f"wrote {out}: {name}, {n:,} backbone params")


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The float arrays of the torch state_dict in `path` (unwrapped from {"state_dict": ...} or
    {"model": ...}; "module." prefixes dropped); SystemExit with one line naming the file when
    it is not a torch checkpoint of tensors (truncated, another format, a list)."""
    import torch  # lazily: torch is only needed for this conversion

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        first = first_line(e, 200)
        raise SystemExit(
            f"error: {path}: not a torch checkpoint torch can read (truncated, or another "
            f"format?): {first}"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise SystemExit(
            f"error: {path}: holds a {type(state).__name__}, not a state_dict (a dict of "
            f"tensor names to tensors)"
        )
    return {
        k.removeprefix("module."): v.detach().float().numpy()
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }


if __name__ == "__main__":
    main()
