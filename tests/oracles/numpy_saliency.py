"""Brute-force NumPy oracles (explicit loops, float64) for the saliency losses and pooling."""

from __future__ import annotations

import math

import numpy as np


def clamped_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            na = max(math.sqrt(sum(v * v for v in a[i])), 1e-12)
            nb = max(math.sqrt(sum(v * v for v in b[j])), 1e-12)
            dot = sum(u * v for u, v in zip(a[i], b[j], strict=True))
            out[i, j] = min(max(dot / (na * nb), 0.0005), 0.9995)
    return out


def descending_rank(row, j: int) -> int:
    """Entries strictly greater, plus equal entries at smaller column indices."""
    return sum(v > row[j] for v in row) + sum(row[k] == row[j] for k in range(j))


def sim_max_loss(x: np.ndarray, alpha: float) -> float:
    sim = clamped_cosine(x, x)
    n = len(sim)
    total = 0.0
    for i in range(n):
        for j in range(n):
            rank = descending_rank(sim[i], j) - 1
            total += math.exp(-alpha * rank) * -math.log(sim[i, j])
    return total / (n * n)


def sim_min_loss(bg: np.ndarray, fg: np.ndarray) -> float:
    sim = clamped_cosine(bg, fg)
    n, m = sim.shape
    return sum(-math.log(1.0 - sim[i, j]) for i in range(n) for j in range(m)) / (n * m)


def hint_loss(z: np.ndarray, hints: np.ndarray, fg_threshold: float, smoothing: float) -> float:
    t = 1.0 - smoothing / 2
    total, count = 0.0, 0
    for zi, hi in zip(np.ravel(z).astype(np.float64), np.ravel(hints), strict=True):
        if hi >= fg_threshold:
            s = 1.0 / (1.0 + math.exp(-zi))
            total += -(t * math.log(s) + (1 - t) * math.log(1 - s))
            count += 1
    return total / count if count else 0.0


def foreground_background(z: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z [B, h, w], feats [B, h, w, C] -> fg, bg [B, C] summed cell by cell, divided by h·w."""
    b, h, w, c = feats.shape
    fg, bg = np.zeros((b, c)), np.zeros((b, c))
    for n in range(b):
        for y in range(h):
            for x in range(w):
                p = 1.0 / (1.0 + math.exp(-float(z[n, y, x])))
                fg[n] += p * feats[n, y, x]
                bg[n] += (1.0 - p) * feats[n, y, x]
    return fg / (h * w), bg / (h * w)
