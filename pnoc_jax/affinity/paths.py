"""Inter-pixel search directions and paths of IRN's ``PathIndex`` (method.md §9), in NumPy.

For a radius R the search directions are (0, x) for x = 1..R-1 and (y, x) for y = 1..R-1,
x = -R+1..R-1 with x² + y² < R² (a half disc, so each unordered pixel pair appears once). The
path of a direction (dy, dx) is the set of lattice points (y, x) of its bounding box whose squared
distance to the line through 0 and (dy, dx) is < 1, ordered farthest-first by |y| + |x| (the first
point is the destination, the last the source itself).

Pairs on an h×w grid follow IRN: sources are the pixels of the grid cropped by R-1 at the bottom
and on both sides (so every destination lies inside the grid), destinations = source + direction.
Directions are kept in the order above (IRN additionally groups them by path length; the order is
internal to this package: pair labels, affinities and the loss all use `search_directions`).

No jax import: used by CPU data workers and by the random walk.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PathIndex",
    "direction_path",
    "grid_pairs",
    "search_directions",
]


def _check_radius(radius: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer):
        raise TypeError(f"radius must be an int, got {type(radius)}")
    if radius < 2:
        raise ValueError(f"radius must be >= 2 (radius 1 has no directions), got {radius}")
    return int(radius)


@functools.lru_cache(maxsize=16)
def _directions(radius: int) -> np.ndarray:
    dirs = [(0, x) for x in range(1, radius)]
    dirs += [
        (y, x)
        for y in range(1, radius)
        for x in range(-radius + 1, radius)
        if x * x + y * y < radius * radius
    ]
    out = np.array(dirs, dtype=np.int64)
    out.flags.writeable = False
    return out


def search_directions(radius: int) -> np.ndarray:
    """(D, 2) int array of (dy, dx) search directions for ``radius`` (read-only)."""
    return _directions(_check_radius(radius))


def direction_path(dy: int, dx: int) -> np.ndarray:
    """(L, 2) int array of the path lattice points of direction (dy, dx), farthest first.

    Points (y, x) in the bounding box of 0 and (dy, dx) with (dy·x − dx·y)² / (dy² + dx²) < 1;
    ties in |y| + |x| keep row-major order (a stable sort, as in IRN).
    """
    if dy == 0 and dx == 0:
        raise ValueError("direction (0, 0) has no path")
    ys = np.arange(min(0, dy), max(0, dy) + 1)
    xs = np.arange(min(0, dx), max(0, dx) + 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    # Integer test of dist² < 1: (dy·x − dx·y)² < dy² + dx².
    on_path = (dy * xx - dx * yy) ** 2 < dy * dy + dx * dx
    pts = np.stack([yy[on_path], xx[on_path]], axis=1)
    order = np.argsort(-(np.abs(pts[:, 0]) + np.abs(pts[:, 1])), kind="stable")
    return pts[order]


def grid_pairs(h: int, w: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat (src, dst) indices of an h×w grid, IRN layout.

    Returns src (S,) and dst (D, S) int64, S = (h - R + 1) (w - 2R + 2): sources are the grid
    cropped by R-1 at the bottom and both sides; dst[d] = src + search_directions(R)[d].
    """
    return PathIndex(radius).pairs(h, w)


@dataclass(frozen=True)
class PathIndex:
    """Search directions and paths for one radius, with grid index helpers."""

    radius: int

    def __post_init__(self) -> None:
        _check_radius(self.radius)

    @property
    def directions(self) -> np.ndarray:
        """(D, 2) (dy, dx) directions."""
        return _directions(self.radius)

    @property
    def paths(self) -> list[np.ndarray]:
        """Per direction, the (L, 2) path offsets (farthest first)."""
        return [direction_path(int(dy), int(dx)) for dy, dx in self.directions]

    def crop(self, h: int, w: int) -> tuple[int, int]:
        """(rows, cols) of the source region: (h - R + 1, w - 2R + 2)."""
        ch, cw = h - (self.radius - 1), w - 2 * (self.radius - 1)
        if ch < 1 or cw < 1:
            raise ValueError(
                f"grid {h}x{w} too small for radius {self.radius}: need h >= {self.radius} "
                f"and w >= {2 * self.radius - 1}"
            )
        return ch, cw

    def _offset_indices(self, h: int, w: int, dy: int, dx: int) -> np.ndarray:
        ch, cw = self.crop(h, w)
        r0 = self.radius - 1
        grid = np.arange(h * w, dtype=np.int64).reshape(h, w)
        return grid[dy : dy + ch, r0 + dx : r0 + dx + cw].ravel()

    def pairs(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """src (S,) and dst (D, S) flat indices on an h×w grid (see `grid_pairs`)."""
        src = self._offset_indices(h, w, 0, 0)
        dst = np.stack([self._offset_indices(h, w, int(dy), int(dx)) for dy, dx in self.directions])
        return src, dst

    def path_indices(self, h: int, w: int) -> list[np.ndarray]:
        """Per direction, (L, S) flat indices of the path points of every source pair.

        Row 0 is the destination, row L-1 the source. aff(src, dst) = 1 − max over rows of edge.
        """
        return [
            np.stack([self._offset_indices(h, w, int(py), int(px)) for py, px in path])
            for path in self.paths
        ]

    def grouped_path_indices(self, h: int, w: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Path indices batched by path length: list of (direction ids (G,), indices (G, L, S)).

        Convenient for fixed-shape gathers (e.g. a jitted loss): one gather + max per group.
        """
        per_dir = self.path_indices(h, w)
        lengths = np.array([p.shape[0] for p in per_dir])
        groups = []
        for length in np.unique(lengths):
            ids = np.flatnonzero(lengths == length)
            groups.append((ids, np.stack([per_dir[i] for i in ids])))
        return groups
