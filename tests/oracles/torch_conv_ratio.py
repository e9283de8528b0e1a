"""Where XLA:CPU loses to PyTorch in a ResNet-50 step: each distinct convolution of the
network (ResNet-50 at OS16), forward and forward + backward (input and weight gradients), in
JAX (`lax.conv_general_dilated`, NHWC / HWIO, jitted) and in PyTorch (`nn.Conv2d`,
channels_last float32), on this machine's cores.

    python -m tests.oracles.torch_conv_ratio --batch 4 --size 224

prints JSON: milliseconds per convolution and the ratios torch / jax (below 1: JAX slower).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

# (name, input side as a fraction of the crop, in channels, out channels, kernel, stride,
# dilation): one of each shape class of ResNet-50 at output stride 16.
CONVS = (
    ("stem_7x7_s2", 1, 3, 64, 7, 2, 1),
    ("layer1_3x3", 1 / 4, 64, 64, 3, 1, 1),
    ("layer1_1x1_expand", 1 / 4, 64, 256, 1, 1, 1),
    ("layer2_3x3", 1 / 8, 128, 128, 3, 1, 1),
    ("layer3_3x3", 1 / 16, 256, 256, 3, 1, 1),
    ("layer4_3x3_dilated", 1 / 16, 512, 512, 3, 1, 2),
    ("layer4_1x1_expand", 1 / 16, 512, 2048, 1, 1, 1),
)


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def time_conv(batch, side, cin, cout, k, stride, dilation, repeats=5) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.random((batch, side, side, cin), dtype=np.float32)
    w = rng.random((k, k, cin, cout), dtype=np.float32) * 0.01
    pad = dilation * (k - 1) // 2

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (stride, stride), [(pad, pad)] * 2, rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip

    forward = jax.jit(conv)
    both = jax.jit(jax.value_and_grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1)))
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    layer = torch.nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False)
    layer = layer.to(memory_format=torch.channels_last)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    xt.requires_grad_(True)

    def torch_both():
        layer.zero_grad()
        xt.grad = None
        layer(xt).sum().backward()

    with torch.no_grad():
        torch_fwd = _best_ms(lambda: layer(xt), repeats)
    row = {
        "jax_fwd_ms": _best_ms(lambda: forward(xj, wj).block_until_ready(), repeats),
        "torch_fwd_ms": torch_fwd,
        "jax_fwd_bwd_ms": _best_ms(lambda: jax.block_until_ready(both(xj, wj)), repeats),
        "torch_fwd_bwd_ms": _best_ms(torch_both, repeats),
    }
    row = {k: round(v, 2) for k, v in row.items()}
    row["fwd_ratio_torch_over_jax"] = round(row["torch_fwd_ms"] / row["jax_fwd_ms"], 2)
    row["fwd_bwd_ratio_torch_over_jax"] = round(row["torch_fwd_bwd_ms"] / row["jax_fwd_bwd_ms"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = {"batch": args.batch, "size": args.size, "torch_threads": torch.get_num_threads()}
    result["cores"] = os.cpu_count()
    for name, fraction, cin, cout, k, stride, dilation in CONVS:
        side = max(1, round(args.size * fraction))
        result[name] = time_conv(args.batch, side, cin, cout, k, stride, dilation, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
