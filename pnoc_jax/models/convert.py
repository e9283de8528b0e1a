"""Convert torchvision ResNet weights to the flax backbone (`pnoc_jax.core.weights` .npz files).

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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pnoc_jax.core import weights
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


def main(argv: Sequence[str] | None = None) -> None:
    """Convert a torchvision ResNet checkpoint (.pth) to an .npz of backbone weights."""
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
    weights.save(tree, args.out)
    n = weights.count_parameters(tree)
    print(f"wrote {args.out}: {n:,} backbone params")


if __name__ == "__main__":
    main()
