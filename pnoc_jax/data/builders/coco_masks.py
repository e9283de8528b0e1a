"""COCO instance segmentations to binary masks, in NumPy, as the COCO API rasterises them.

An annotation's ``segmentation`` is one of (the COCO API's `annToMask` reads the same forms):

* a list of polygons ``[[x0, y0, x1, y1, ...], ...]``: the union of the polygons' masks (a
  list whose first entry has exactly 4 numbers is read as ``[x, y, w, h]`` boxes, as the COCO
  API reads it);
* an uncompressed RLE ``{"counts": [n0, n1, ...], "size": [h, w]}`` (crowd regions);
* a compressed RLE ``{"counts": "<string>", "size": [h, w]}``.

RLE: runs of 0s and 1s alternating, starting with 0s, over the pixels in column-major order.
The compressed string stores each count in 5-bit groups (low first; a set 0x20 bit means "more
groups follow", 0x10 in the last group is the sign), each character being 48 + group; from the
third count on, the value stored is the difference to the count two places before.

Polygons follow the COCO API's rasterisation exactly (checked against pycocotools in the
tests): the vertices are scaled by 5 and rounded, every edge is walked densely (one point per
unit step along its longer axis, the other coordinate rounded from the end with the smaller
coordinate on that axis), and wherever the walk crosses the middle of a pixel column the first
pixel centre below the crossing in that column toggles the inside/outside state; a column's
pixels are inside between an odd and the next even toggle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SCALE = 5  # polygon vertices are scaled by this before the edge walk


def _c_int(x: np.ndarray) -> np.ndarray:
    """C's (int) cast of a double: truncation toward zero."""
    return np.trunc(x).astype(np.int64)


def _toggles_to_mask(columns: np.ndarray, rows: np.ndarray, h: int, w: int) -> np.ndarray:
    """bool[h, w] from toggles at (column, row), row in 0..h: from a toggle down its column
    and on through the next columns the state flips (an even count at one place cancels).
    Only the columns from the first to the last toggled one are scanned."""
    mask = np.zeros((h, w), bool)
    if columns.size == 0:
        return mask
    first, last = int(columns.min()), int(columns.max())
    positions = (columns - first) * h + rows
    size = (last - first + 1) * h
    flips = (np.bincount(positions, minlength=size + 1) & 1).astype(np.uint8)
    state = np.bitwise_xor.accumulate(flips[:size]).view(bool)
    mask[:, first : last + 1] = state.reshape(last - first + 1, h).T
    mask[:, last + 1 :] = bool(flips.sum() & 1)  # the state after every toggle (0 if closed)
    return mask


def polygon_mask(xy: Sequence[float], h: int, w: int) -> np.ndarray:
    """bool[h, w]: the pixels inside one polygon ``[x0, y0, x1, y1, ...]`` (COCO API rules)."""
    pts = np.asarray(xy, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros((h, w), bool)
    x = _c_int(SCALE * pts[:, 0] + 0.5)
    y = _c_int(SCALE * pts[:, 1] + 0.5)
    xe, ye = np.roll(x, -1), np.roll(y, -1)  # each edge runs from vertex j to vertex j + 1
    dx, dy = np.abs(xe - x), np.abs(ye - y)
    along_x = dx >= dy
    flip = (along_x & (x > xe)) | (~along_x & (y > ye))
    # The base of each edge is its end with the smaller coordinate on the walked axis.
    bx, by = np.where(flip, xe, x), np.where(flip, ye, y)
    ex, ey = np.where(flip, x, xe), np.where(flip, y, ye)
    steps = np.maximum(dx, dy)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(along_x, (ey - by) / dx, (ex - bx) / dy)
    slope = np.where(steps == 0, 0.0, slope)  # a repeated vertex: one point, its value unused
    n = steps + 1
    edge = np.repeat(np.arange(len(pts)), n)
    d = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    t = np.where(flip[edge], steps[edge] - d, d)  # points in the edge's own direction
    rounded_x = _c_int(bx[edge] + slope[edge] * t + 0.5)
    rounded_y = _c_int(by[edge] + slope[edge] * t + 0.5)
    u = np.where(along_x[edge], t + bx[edge], rounded_x)
    v = np.where(along_x[edge], rounded_y, t + by[edge])
    # Crossings of pixel-column middles: consecutive points whose x differs.
    j = np.flatnonzero(u[1:] != u[:-1]) + 1
    xd = np.where(u[j] < u[j - 1], u[j], u[j] - 1).astype(np.float64)
    xd = (xd + 0.5) / SCALE - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = np.minimum(v[j], v[j - 1]).astype(np.float64)
    yd = np.ceil(np.clip((yd + 0.5) / SCALE - 0.5, 0, h))
    return _toggles_to_mask(xd[keep].astype(np.int64), yd[keep].astype(np.int64), h, w)


def box_mask(box: Sequence[float], h: int, w: int) -> np.ndarray:
    """bool[h, w] of an ``[x, y, width, height]`` box, as the COCO API rasterises it."""
    x0, y0, bw, bh = (float(v) for v in box)
    x1, y1 = x0 + bw, y0 + bh
    return polygon_mask([x0, y0, x0, y1, x1, y1, x1, y0], h, w)


def decode_counts(counts: str | bytes) -> list[int]:
    """The run lengths of a compressed RLE string (see the module docstring)."""
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    out: list[int] = []
    p = 0
    while p < len(text):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError(f"compressed RLE {text[:40]!r}... ends inside a count")
            group = ord(text[p]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"compressed RLE has a character {text[p]!r} outside '0'..'o'")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            p += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift  # negative: sign-extend
        if len(out) > 2:
            value += out[-2]
        out.append(value)
    return out


def rle_mask(counts: Sequence[int], h: int, w: int) -> np.ndarray:
    """bool[h, w] of run lengths over the column-major pixels, 0s first."""
    runs = np.asarray(counts, np.int64)
    if runs.ndim != 1 or (runs < 0).any() or int(runs.sum()) != h * w:
        total = int(runs.sum()) if runs.ndim == 1 else -1
        raise ValueError(f"RLE counts sum to {total}, not h * w = {h} * {w} = {h * w}")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(w, h).T


def annotation_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
    """bool[h, w] of one annotation's ``segmentation`` on an h x w image (module docstring).

    Raises ValueError for an RLE of another size, a polygon with an odd number of
    coordinates, or anything that is none of the three forms.
    """
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if size is None or counts is None:
            raise ValueError("an RLE segmentation needs 'counts' and 'size'")
        if tuple(int(v) for v in size) != (h, w):
            raise ValueError(f"RLE size {list(size)} differs from the image's [{h}, {w}]")
        if isinstance(counts, str | bytes):
            counts = decode_counts(counts)
        return rle_mask(counts, h, w)
    if not isinstance(segmentation, list):
        raise ValueError(f"segmentation of type {type(segmentation).__name__} is not supported")
    mask = np.zeros((h, w), bool)
    if not segmentation:
        return mask
    boxes = len(segmentation[0]) == 4
    for part in segmentation:
        if not isinstance(part, list | tuple) or len(part) % 2:
            raise ValueError("a polygon must be a list of an even number of coordinates")
        mask |= box_mask(part, h, w) if boxes else polygon_mask(part, h, w)
    return mask
