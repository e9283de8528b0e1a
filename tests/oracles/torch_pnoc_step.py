"""The P-NOC training step in PyTorch, as the reference runs it (method.md §5): the speed yardstick
for `python -m pnoc_jax.benchmark --strategy pnoc`.

    python -m tests.oracles.torch_pnoc_step --backbone resnet50 --batch 8 --size 160

prints JSON (step time, images/s, threads). Same work per step as ours: the generator f on the
batch and on its Puzzle tiles, noc on the softly erased images (eval-mode BN, the CSE gradient
kept in noc's .grad as the official code does), one SGD step of f; then noc on the hard-masked
images and one SGD step of noc. float32, torch's own CPU threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from tests.oracles.torch_resnet import TINY, ResNet

ARCHS = {
    "tiny": TINY,
    "resnet50": dict(layers=(3, 4, 6, 3)),
    "resnet101": dict(layers=(3, 4, 23, 3)),
}


class CAMNet(nn.Module):
    """Backbone -> 1x1 classifier without bias: CAMs A; logits = GAP(A)."""

    def __init__(self, arch: str, classes: int, output_stride: int):
        super().__init__()
        self.backbone = ResNet(**ARCHS[arch], output_stride=output_stride)
        self.classifier = nn.Conv2d(self.backbone.channels["layer4"], classes, 1, bias=False)

    def forward(self, x):
        cams = self.classifier(self.backbone(x)["layer4"])
        return cams.mean(dim=(2, 3)), cams


def tile(x):
    """[B, C, H, W] -> [4B, C, H/2, W/2]: each image's quadrants (TL, TR, BL, BR) in a row."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(4 * b, c, h // 2, w // 2)


def merge(t):
    n, c, h, w = t.shape
    t = t.reshape(n // 4, 2, 2, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(n // 4, c, 2 * h, 2 * w)


def pnoc_step(f, noc, opt_f, opt_noc, x, y, ls=0.1, lambda_re=4.0, lambda_cse=1.0, delta=0.2):
    """One P-NOC iteration: the generator's update, then noc's."""
    y_s = y * (1 - ls) + ls / 2
    f.train()
    noc.eval()  # noc's BatchNorm is frozen
    logits, cams = f(x)
    loss = F.multilabel_soft_margin_loss(logits, y_s)
    _, tile_cams = f(tile(x))
    merged = merge(tile_cams)
    loss = loss + F.multilabel_soft_margin_loss(merged.mean(dim=(2, 3)), y_s)
    loss = loss + lambda_re * ((cams - merged).abs() * y[:, :, None, None]).mean()
    classes = torch.multinomial(y + 1e-6, 1)[:, 0]
    maps = F.relu(cams[torch.arange(len(x)), classes])[:, None]
    maps = F.interpolate(maps, x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    erased = x * (1 - maps / (maps.max() + 1e-5))[:, None]
    y_removed = y * (1 - F.one_hot(classes, y.shape[1]).float())
    o_logits, _ = noc(erased)
    o = F.multilabel_soft_margin_loss(o_logits, y_removed * (1 - ls) + ls / 2)
    loss = loss + lambda_cse * o
    opt_f.zero_grad()
    opt_noc.zero_grad()
    loss.backward()  # noc's .grad keeps λ_cse·∇o (official code)
    opt_f.step()
    psi = maps.detach() / (maps.detach().amax(dim=(1, 2), keepdim=True) + 1e-5)
    n_logits, _ = noc(x * (psi <= delta).float()[:, None])
    F.multilabel_soft_margin_loss(n_logits, y_s).backward()
    opt_noc.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50", choices=sorted(ARCHS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--output_stride", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--channels_last", type=int, default=1, help="1: NHWC memory format")
    args = parser.parse_args()
    torch.manual_seed(0)
    f = CAMNet(args.backbone, args.classes, args.output_stride)
    noc = CAMNet(args.backbone, args.classes, args.output_stride)
    opt_f = torch.optim.SGD(f.parameters(), lr=0.01, weight_decay=1e-4)
    opt_noc = torch.optim.SGD(noc.parameters(), lr=0.01, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size)
    if args.channels_last:  # NHWC in memory, as XLA lays out convolutions
        f, noc = f.to(memory_format=torch.channels_last), noc.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(args.batch, args.classes) < 0.2).float()
    y[:, 0] = 1.0  # every image has a class to erase
    pnoc_step(f, noc, opt_f, opt_noc, x, y)  # warm-up
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        pnoc_step(f, noc, opt_f, opt_noc, x, y)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {
        "framework": f"torch {torch.__version__}",
        "strategy": "pnoc",
        **{k: v for k, v in vars(args).items() if k != "steps"},
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "train_step_s": median,
        "train_images_per_s": args.batch / median,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
