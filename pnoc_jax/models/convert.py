"""Convert torchvision ResNet weights to the flax backbone, and .npz weight I/O.

Name mapping (torch ``state_dict`` key -> flax variables, all under the ``backbone`` module)::

    conv1.weight                       params/backbone/conv1/kernel        OIHW -> HWIO
    bn1.weight / bn1.bias              params/backbone/bn1/scale / bias
    bn1.running_mean / running_var     batch_stats/backbone/bn1/mean / var
    layer{i}.{j}.conv{k}.weight        params/backbone/layer{i}_{j}/conv{k}/kernel
    layer{i}.{j}.bn{k}.*               .../layer{i}_{j}/bn{k}/{scale,bias,mean,var}
    layer{i}.{j}.downsample.0.weight   params/backbone/layer{i}_{j}/downsample_conv/kernel
    layer{i}.{j}.downsample.1.*        .../layer{i}_{j}/downsample_bn/{scale,bias,mean,var}
    fc.*, *.num_batches_tracked        dropped

CLI (torch is imported lazily, only here)::

    python -m pnoc_jax.models.convert --torch_checkpoint resnet101.pth --depth 101 \
        --out resnet101.npz
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

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
    mapping = _name_map(state_dict, stage_sizes, block)
    ignored = [k for k in state_dict if k.startswith("fc.") or k.endswith("num_batches_tracked")]
    unexpected = sorted(set(state_dict) - set(mapping) - set(ignored))
    if unexpected:
        raise KeyError(f"unexpected key in torch state_dict: {unexpected[0]!r}")
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


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if "/" in key:
            raise ValueError(f"key {key!r} contains '/'")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def save_npz_weights(tree: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a nested dict of arrays to ``path`` as an .npz with flat "a/b/c" keys, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = _flatten(tree)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Read an .npz written by :func:`save_npz_weights` back into a nested dict of numpy arrays."""
    tree: dict[str, Any] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            parts = key.split("/")
            node = tree
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = data[key]
    return tree


def _replace_exact(dst: Any, src: Any, path: str) -> Any:
    """Copy of ``src`` cast to ``dst``'s dtypes; key sets and shapes must agree exactly."""
    if isinstance(dst, Mapping) != isinstance(src, Mapping):
        raise ValueError(f"structure mismatch at {path!r}")
    if not isinstance(dst, Mapping):
        if tuple(np.shape(dst)) != tuple(np.shape(src)):
            raise ValueError(
                f"shape mismatch at {path!r}: model {tuple(np.shape(dst))}, "
                f"pretrained {tuple(np.shape(src))}"
            )
        return jnp.asarray(src, dtype=dst.dtype)
    for key in dst:
        if key not in src:
            raise KeyError(f"pretrained weights lack '{path}/{key}'")
    for key in src:
        if key not in dst:
            raise KeyError(f"model has no variable '{path}/{key}' (found in pretrained weights)")
    return {key: _replace_exact(dst[key], src[key], f"{path}/{key}") for key in dst}


def merge_pretrained(
    variables: Mapping[str, Any], pretrained: Mapping[str, Any], prefix: Sequence[str] = ()
) -> dict[str, Any]:
    """Overwrite the subtrees present in ``pretrained`` (e.g. ``backbone``) in ``variables``.

    ``pretrained`` is ``{collection: {module: subtree}}``, e.g. from :func:`torch_resnet_to_flax`
    or :func:`load_npz_weights`. ``prefix`` locates the model inside ``variables`` when it is a
    submodule (e.g. ``("noc",)``). Each replaced subtree must match the model exactly: a differing
    shape raises a ValueError naming the first such path, a missing/extra leaf a KeyError.
    Everything else (e.g. the classifier head) is kept. Returns new plain dicts.
    """
    out = _to_dict(variables)
    for col, modules in pretrained.items():
        if col not in out:
            raise KeyError(f"model variables have no collection {col!r}")
        node = out[col]
        for part in prefix:
            if part not in node:
                raise KeyError(f"model variables have no {col}/{'/'.join(prefix)}")
            node = node[part]
        for module, subtree in modules.items():
            path = "/".join((col, *prefix, module))
            if module not in node:
                raise KeyError(f"model variables have no {path!r}")
            node[module] = _replace_exact(node[module], subtree, path)
    return out


def _to_dict(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def main(argv: Sequence[str] | None = None) -> None:
    """Convert a torchvision ResNet checkpoint (.pth) to an .npz for :func:`merge_pretrained`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch_checkpoint", required=True, help="torchvision .pth state_dict")
    parser.add_argument("--depth", type=int, required=True, choices=sorted(DEPTH_STAGES))
    parser.add_argument("--out", required=True, help="output .npz path")
    args = parser.parse_args(argv)

    import torch  # lazily: torch is only needed for this conversion

    state = torch.load(args.torch_checkpoint, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    state = {
        k.removeprefix("module."): v.detach().float().numpy()
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }
    stages, block = DEPTH_STAGES[args.depth]
    tree = torch_resnet_to_flax(state, stages, block)
    save_npz_weights(tree, args.out)
    n = sum(v.size for v in _flatten(tree["params"]).values())
    print(f"wrote {args.out}: {n:,} backbone params")


if __name__ == "__main__":
    main()
