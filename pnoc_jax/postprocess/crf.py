"""Fully connected CRF (Krähenbühl & Koltun, 2011) in NumPy/SciPy, pydensecrf-compatible.

Mean-field inference with Potts compatibility and two Gaussian kernels (position-only and
bilateral position+RGB). Message passing uses the permutohedral lattice (Adams et al., 2010):
splat / blur / slice are precomputed once per image as float32 sparse matrices and reused across
iterations. The lattice construction follows pydensecrf's (densecrf 2.2) conventions so that the
results agree with `pydensecrf.densecrf.DenseCRF2D` up to float32 rounding:

* features are ``(x / sxy, y / sxy)`` and ``(x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)``;
* each kernel uses NORMALIZE_SYMMETRIC: ``filter(Q) = n * lattice(n * Q)`` with
  ``n = 1 / sqrt(lattice(1))``;
* Potts compatibility ``w``: the message added to the logits is ``+w * filter(Q)``;
* ``Q_0 = softmax(-unary)``; each iteration ``Q <- softmax(-unary + sum_k w_k filter_k(Q))``
  (no self-message subtraction, as in pydensecrf).

How it is made fast: the lattice is built with a vectorised hash (no sort of the N (d+1) corner
codes); Q is kept as (N, K) rows with K padded to a multiple of 4 for scipy's multi-vector sparse
kernels; the products write into reused buffers (a blur adds x through the product's initial
value, the slices accumulate into the logits); each kernel is splatted, blurred and sliced on its
own; the softmax runs in cache-sized blocks; the image-independent position lattice is cached per
image size with its vertices in pixel order; and for a long or wide mean field (iterations x
columns >= 64) the bilateral lattice's vertices are in code order, so each blur reads its
neighbours in increasing order. Timings against pydensecrf2 (`python -m pnoc_jax.cpu_benchmark
--photos-only`) are in docs/performance.md.

No jax import: this runs in CPU worker processes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = [
    "PermutohedralLattice",
    "crf_label_map",
    "dense_crf",
    "dense_crf_labels",
    "dense_crf_unary",
    "unary_from_labels",
    "unary_from_probs",
]

_PROB_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax default clip


_HASH_MULTS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)
_EMPTY = -1


class _KeyTable:
    """Hash set of non-negative int64 codes with dense ids, built in vectorised rounds.

    Each round scatters the pending codes into a power-of-two table (multiplicative hash, last
    write wins); codes that own their slot get ids, the others (collisions) go to the next round
    with another multiplier. Sorting-free, so O(n) rather than np.unique's O(n log n).
    """

    def __init__(self, codes: np.ndarray) -> None:
        self.rounds: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        ids = np.empty(codes.size, dtype=np.int32)
        uniq = []
        pending: np.ndarray | None = None  # None: all codes (first round, avoids copies)
        pend_codes = codes
        size = 0
        while pend_codes.size:
            rnd = len(self.rounds)
            bits = max(8, int(np.ceil(np.log2(pend_codes.size))))
            slot = self._hash(pend_codes, rnd, bits)
            table = np.full(1 << bits, _EMPTY, dtype=np.int64)
            table[slot] = pend_codes
            lost = np.flatnonzero(table[slot] != pend_codes)
            occupied = np.flatnonzero(table != _EMPTY)
            slot_id = np.empty(table.size, dtype=np.int32)  # only occupied slots are ever read
            slot_id[occupied] = np.arange(size, size + occupied.size, dtype=np.int32)
            if pending is None:
                np.take(slot_id, slot, out=ids)  # entries in `lost` are overwritten later
                pending = lost
            else:
                ids[pending] = slot_id[slot]
                pending = pending[lost]
            uniq.append(table[occupied])
            size += occupied.size
            self.rounds.append((rnd, bits, table, slot_id))
            pend_codes = codes[pending]
        self.ids = ids
        self.size = size
        self.codes = np.concatenate(uniq) if uniq else np.zeros(0, np.int64)

    @staticmethod
    def _hash(codes: np.ndarray, rnd: int, bits: int) -> np.ndarray:
        mult = np.uint64(_HASH_MULTS[rnd % len(_HASH_MULTS)])
        h = codes.view(np.uint64) * mult
        if rnd >= len(_HASH_MULTS):
            h ^= h >> np.uint64(29)
            h *= np.uint64(_HASH_MULTS[(rnd + 1) % len(_HASH_MULTS)] + 2 * rnd)
        h >>= np.uint64(64 - bits)
        return h.view(np.int64)

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """int32 ids of ``codes``; missing codes map to ``self.size``."""
        rnd, bits, table, slot_id = self.rounds[0]
        slot = self._hash(codes, rnd, bits)
        found = table[slot]
        hit = found == codes
        # Most codes are settled in the first round: found, or absent (an empty slot).
        out = np.where(hit, slot_id[slot], np.int32(self.size))
        pending = np.flatnonzero(~hit & (found != _EMPTY))
        pend_codes = codes[pending]
        for rnd, bits, table, slot_id in self.rounds[1:]:
            if not pending.size:
                break
            slot = self._hash(pend_codes, rnd, bits)
            found = table[slot]
            hit = found == pend_codes
            out[pending[hit]] = slot_id[slot[hit]]
            # Every code still unplaced was inserted in this round: an empty slot means absent.
            more = ~hit & (found != _EMPTY)
            pending, pend_codes = pending[more], pend_codes[more]
        return out


try:  # the kernels behind scipy's `sparse @ dense`: Y += A X, into a buffer we give
    from scipy.sparse import _sparsetools

    _MATVECS = {"csr": _sparsetools.csr_matvecs, "csc": _sparsetools.csc_matvecs}
except (ImportError, AttributeError):  # a scipy without them: `@` (allocates its result)
    _MATVECS = {}


def _matmul_into(
    a: sp.csr_matrix | sp.csc_matrix,
    x: np.ndarray,
    out: np.ndarray,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """``out[...] = init + a @ x`` (``init`` 0 when None; ``init=out`` accumulates) for float32
    C-contiguous (.., K) ``x``, ``out`` and ``init``.

    Reusing ``out`` matters: a (M, K) product above glibc's mmap threshold (32 MB, e.g. a
    DeepLab-setting lattice of 400k vertices x 24 labels) is otherwise a fresh mapping,
    page-faulted and zeroed by the kernel, at every product of every iteration. ``init`` saves
    a pass: the kernel accumulates into ``out`` anyway.
    """
    kernel = _MATVECS.get(a.format)
    if kernel is None or not (x.flags.c_contiguous and out.flags.c_contiguous):
        out[...] = a @ x if init is None else init + a @ x
        return out
    if init is None:
        out.fill(0.0)
    elif init is not out:  # init=out accumulates
        np.copyto(out, init)
    kernel(a.shape[0], a.shape[1], x.shape[1], a.indptr, a.indices, a.data, x.ravel(), out.ravel())
    return out


def _blur_matrix(n1: np.ndarray, n2: np.ndarray, m: int) -> sp.csr_matrix:
    """CSR of x -> 0.5 (x[n1] + x[n2]) along one lattice axis, the blur's neighbour half (the
    blur adds x itself: `_matmul_into(..., init=x)`); (M,) neighbour indices, ``m`` where a
    neighbour is missing (it counts as zero and is left out)."""
    has1, has2 = n1 < m, n2 < m
    indptr = np.zeros(m + 1, dtype=np.int32)
    np.cumsum(has1.astype(np.int32) + has2, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    indices[indptr[:-1][has1]] = n1[has1]  # a row's n1 entry comes first, its n2 entry last
    indices[indptr[1:][has2] - 1] = n2[has2]
    data = np.full(indptr[-1], 0.5, dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(m, m))


@dataclass(frozen=True)
class PermutohedralLattice:
    """One permutohedral lattice built from N feature vectors of dimension d.

    vertex: (N, d+1) int32, lattice vertex index of each pixel's enclosing-simplex corners.
    weight: (N, d+1) float32, barycentric weights (sum to 1 per pixel).
    blur_idx: (d+1, 2, M) int, neighbours of each vertex along each lattice axis (M = missing,
        counts as zero); the blur x -> x + 0.5 (x[n1] + x[n2]) is applied axis by axis.
    alpha: pydensecrf's output scale 1 / (1 + 2^-d).
    """

    vertex: np.ndarray
    weight: np.ndarray
    blur_idx: np.ndarray
    n_vertices: int
    alpha: float

    @classmethod
    def build(cls, features: np.ndarray, code_order: bool = False) -> PermutohedralLattice:
        """Build the lattice for ``features`` of shape (N, d).

        code_order: number the vertices in the order of their lattice codes (one argsort of
        the M codes) rather than the hash table's. A blur neighbour's code is the vertex's plus
        a constant per axis, so each blur then reads its neighbours in increasing order: faster
        messages, which a long or wide mean field repays the sort with (`_CODE_ORDER_WORK`).
        """
        ft = np.ascontiguousarray(np.asarray(features, dtype=np.float32).T)  # (d, N)
        d, n = ft.shape
        d1 = d + 1
        # Elevate onto the hyperplane sum(x) = 0 (E matrix, Adams et al. p.5), float32 like C++.
        inv_std = float(np.float32(np.sqrt(2.0 / 3.0) * d1))  # stored as float in the reference
        k = np.arange(1, d + 1, dtype=np.float64)
        scale = (1.0 / np.sqrt(k * (k + 1)) * inv_std).astype(np.float32)
        cf = ft * scale[:, None]
        elevated = np.empty((d1, n), dtype=np.float32)
        sm = np.zeros(n, dtype=np.float32)
        for j in range(d, 0, -1):  # sm accumulates from the last feature, like the reference
            elevated[j] = sm - np.float32(j) * cf[j - 1]
            sm += cf[j - 1]
        elevated[0] = sm
        # Closest 0-coloured lattice point: round each coordinate to a multiple of d+1 (ties
        # round down, as in the reference).
        up = np.float32(d1)
        down = np.float32(1.0 / d1)
        rem0 = np.ceil(elevated * down - np.float32(0.5))
        total = rem0.sum(axis=0).astype(np.int32)
        rem0 *= up
        # Rank of each residual in decreasing order (ties: the later coordinate ranks higher).
        diff = elevated - rem0
        rank = np.zeros((d1, n), dtype=np.int32)
        for i in range(d):
            for j in range(i + 1, d1):
                lt = diff[i] < diff[j]
                rank[i] += lt
                rank[j] += ~lt
        del diff, lt
        # Bring the point back onto the plane: cyclic rank shift, moving rem0 by +-(d+1).
        rank += total
        wrap = (rank < 0).astype(np.int32)
        wrap -= rank > d
        rank += d1 * wrap
        rem0 += wrap.astype(np.float32) * up  # float32: an int32 * float32 product is float64
        # Barycentric coordinates (Adams et al. p.10): slot[d - rank_i] = residual_i / (d+1).
        val = (elevated - rem0) * down
        del elevated, cf, wrap
        flat = (d - rank) * n
        flat += np.arange(n, dtype=np.int32)
        slot = np.empty(d1 * n, dtype=np.float32)
        slot[flat.ravel()] = val.ravel()
        slot = slot.reshape(d1, n)
        weight = np.empty((d1, n), dtype=np.float32)
        weight[1:] = slot[1:] - slot[:-1]
        weight[0] = slot[0].astype(np.float64) + (1.0 - slot[d].astype(np.float64))
        del slot, val
        # Corner r of the simplex: key_i = rem0_i + r - (d+1) [rank_i > d - r] (i < d), packed
        # in mixed radix: code_r = code(rem0) + r sum(radix) - (d+1) sum_{rank_i > d-r} radix_i.
        rem0_i = rem0[:d].astype(np.int64)
        lo_k = rem0_i.min(axis=1) - 2 * d1  # corners and their blur neighbours stay >= lo_k
        span = rem0_i.max(axis=1) + 2 * d1 - lo_k + 1
        if float(np.prod(span.astype(np.float64))) >= 2.0**62:
            raise ValueError("CRF features span too large a lattice; check the feature scaling")
        radix = np.ones(d, dtype=np.int64)
        for i in range(d - 2, -1, -1):
            radix[i] = radix[i + 1] * span[i + 1]
        by_rank = np.zeros(d1 * n, dtype=np.int64)  # radix of the coordinate holding each rank
        by_rank[flat[:d].ravel()] = np.repeat(d1 * radix, n)  # flat indexes slot d - rank
        by_rank = by_rank.reshape(d1, n)  # row s holds the coordinate with rank d - s
        codes = np.empty((n, d1), dtype=np.int64)
        code = np.zeros(n, dtype=np.int64)
        for i in range(d):  # an int64 matrix product has no BLAS; d axpys are faster
            code += (rem0_i[i] - lo_k[i]) * radix[i]
        codes[:, 0] = code
        for r in range(1, d1):
            code += radix.sum()
            code -= by_rank[r - 1]  # the coordinate with rank d - r + 1 crosses over
            codes[:, r] = code
        del by_rank, flat, rank, rem0, rem0_i, code
        table = _KeyTable(codes.reshape(-1))
        del codes
        m = table.size
        # Blur neighbours along axis j: (key - 1, key[j] + d) and (key + 1, key[j] - d).
        # n1 = key - 1 + (d+1) e_j is looked up (the code of key - 1 is code - sum(radix)); n2 =
        # key + 1 - (d+1) e_j is its inverse (u = n1(v) exactly when v = n2(u)), so n2 needs no
        # lookup. Codes in the table's order hash to nearby slots: the lookup reads it in order.
        shift = np.append(d1 * radix, 0)[:, None] - radix.sum()  # axis d moves no coordinate
        n1 = table.lookup((table.codes + shift).ravel()).reshape(d1, m)
        ids = table.ids
        if code_order:
            order = np.argsort(table.codes)
            new_id = np.empty(m + 1, dtype=np.int32)  # index m (missing) stays m
            new_id[order] = np.arange(m, dtype=np.int32)
            new_id[m] = m
            ids, n1 = new_id[ids], new_id[n1[:, order]]
        n2 = np.full((d1, m), m, dtype=np.int32)
        vertices = np.arange(m, dtype=np.int32)
        for j in range(d1):
            found = n1[j] < m
            n2[j, n1[j, found]] = vertices[found]
        blur_idx = np.stack([n1, n2], axis=1)
        return cls(
            vertex=ids.reshape(n, d1),
            weight=np.ascontiguousarray(weight.T),
            blur_idx=blur_idx,
            n_vertices=m,
            alpha=1.0 / (1.0 + 2.0 ** (-d)),
        )

    @functools.cached_property
    def blur_matrices(self) -> list[sp.csr_matrix]:
        """One CSR per lattice axis, x -> 0.5 (x[n1] + x[n2]) on (M, K) vertex values; the blur
        along the axis is x + that (built on first use; the cached position lattice keeps its
        own)."""
        return [_blur_matrix(n1, n2, self.n_vertices) for n1, n2 in self.blur_idx]

    def in_pixel_order(self) -> PermutohedralLattice:
        """The same lattice with its vertices numbered in the order of the pixels that touch
        them (hash order otherwise). For the position-only lattice, a 2D grid, this puts a
        vertex's blur neighbours and the vertices of neighbouring pixels close in memory: the
        cached position lattice costs a third of the time per iteration in DeepLab's setting
        (sxy 1: ~200k vertices). Not for the bilateral lattice, whose colour neighbours are far
        apart in pixel order (measured: no gain)."""
        m = self.n_vertices
        corners = self.vertex.ravel()
        owner = np.empty(m, dtype=np.int64)
        owner[corners] = np.arange(corners.size)  # one pixel corner per vertex, any will do
        first = np.zeros(corners.size, dtype=np.int32)
        first[owner] = 1
        new_id = np.append((np.cumsum(first) - 1)[owner].astype(np.int32), np.int32(m))
        blur_idx = np.empty_like(self.blur_idx)
        blur_idx[:, :, new_id[:-1]] = new_id[self.blur_idx]  # index m (missing) stays m
        return PermutohedralLattice(new_id[self.vertex], self.weight, blur_idx, m, self.alpha)

    def splat_matrix(self) -> sp.csc_matrix:
        """(M, N) CSC whose column i holds pixel i's barycentric weights at its simplex's
        corners: ``splat @ values`` splats, and its transpose (a CSR view, no copy) slices."""
        n, d1 = self.vertex.shape
        indptr = np.arange(0, n * d1 + 1, d1, dtype=np.int32)
        return sp.csc_matrix(
            (self.weight.ravel(), self.vertex.ravel(), indptr), shape=(self.n_vertices, n)
        )

    def compute(self, values: np.ndarray) -> np.ndarray:
        """Approximate Gaussian filtering of one (N,) signal: slice(blur(splat(values)))."""
        splat = self.splat_matrix()
        lat = splat @ np.asarray(values, dtype=np.float32)
        for blur in self.blur_matrices:
            lat = lat + blur @ lat
        return np.float32(self.alpha) * (splat.T @ lat)


def _position_features(h: int, w: int, sxy: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xs.ravel() / np.float32(sxy), ys.ravel() / np.float32(sxy)], axis=1)


def _bilateral_features(image: np.ndarray, sxy: float, srgb: float) -> np.ndarray:
    h, w = image.shape[:2]
    pos = _position_features(h, w, sxy)
    rgb = image.reshape(h * w, 3).astype(np.float32) / np.float32(srgb)
    return np.concatenate([pos, rgb], axis=1)


class _MeanField:
    """Precomputed message passing for a set of kernels: per kernel a sparse splat (CSC,
    scatter over pixels), its lattice's blurs (the position lattice's 3 axes, the bilateral
    lattice's 6) and a sparse slice that accumulates into the logits.

    The symmetric normalisation, pydensecrf's alpha and the Potts weight are folded into the
    barycentric weights. Kernel by kernel rather than stacked into one splat and one slice:
    the position lattice's rows are read in pixel order and the bilateral lattice's at random,
    and mixing the two in one product is slower (DeepLab's setting: slice 33 -> 20 ms).
    """

    def __init__(self, kernels: list[tuple[PermutohedralLattice, np.ndarray, float]]) -> None:
        self._kernels = []
        for lat, norm, compat in kernels:
            splat = lat.splat_matrix()
            splat.data = (lat.weight * norm[:, None]).ravel()
            slice_data = splat.data * np.float32(lat.alpha * compat)
            slice_ = sp.csr_matrix((slice_data, splat.indices, splat.indptr), splat.shape[::-1])
            self._kernels.append((splat, lat.blur_matrices, slice_))
        self._width = 0  # messages' buffers, allocated for the width of Q at the first call

    def messages(self, q: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """``offset`` plus the sum over kernels of compat_k * filter_k(Q), for Q and ``offset``
        of shape (N, K) float32 (the mean field's logits, with ``offset`` = -unary).

        The result lives in one of two buffers that the calls take in turn: it stays valid
        through the next call (the mean field's Q) and is overwritten by the one after.
        """
        n, width = q.shape
        if self._width != width:
            self._lattices = [
                [np.empty((splat.shape[0], width), np.float32) for _ in range(2)]
                for splat, _, _ in self._kernels
            ]
            self._out = [np.empty((n, width), np.float32) for _ in range(2)]
            self._width, self._turn = width, 0
        self._turn ^= 1
        out = self._out[self._turn]
        for (splat, blurs, slice_), (src, dst) in zip(self._kernels, self._lattices, strict=True):
            _matmul_into(splat, q, src)
            for blur in blurs:  # x -> x + blur @ x along each lattice axis
                _matmul_into(blur, src, dst, init=src)
                src, dst = dst, src
            _matmul_into(slice_, src, out, init=offset)
            offset = out  # the next kernel's slice accumulates
        return out


def _lattice_and_norm(
    features: np.ndarray, code_order: bool = False
) -> tuple[PermutohedralLattice, np.ndarray]:
    """Lattice plus NORMALIZE_SYMMETRIC factors 1 / sqrt(lattice(1) + 1e-20), float32 (N,)."""
    lat = PermutohedralLattice.build(features, code_order)
    norm = lat.compute(np.ones(features.shape[0], dtype=np.float32))
    return lat, (1.0 / np.sqrt(norm.astype(np.float64) + 1e-20)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _position_lattice(h: int, w: int, sxy: float) -> tuple[PermutohedralLattice, np.ndarray]:
    """Position-only lattice: image independent, so cached per (h, w, sxy)."""
    lat, norm = _lattice_and_norm(_position_features(h, w, sxy))
    lat = lat.in_pixel_order()
    for arr in (lat.vertex, lat.weight, lat.blur_idx, norm):
        arr.flags.writeable = False
    return lat, norm


_PAD_LOGIT = np.float32(-1e30)  # -unary of padding labels: exp() = 0, so they stay at Q = 0


def _padded_labels(k: int) -> int:
    """Label count rounded up to a multiple of 4: scipy's multi-vector sparse products run
    markedly faster for such widths (e.g. 3 -> 4 or 7 -> 8 labels), padding labels stay at 0."""
    return -(-k // 4) * 4


_SOFTMAX_BLOCK = 1 << 17  # floats per block of rows (512 KiB): stays in cache across passes


def _softmax_rows(
    logits: np.ndarray,
    subtract_max: bool | None = True,
    out_k: int | None = None,
    group: int | None = None,
) -> np.ndarray:
    """Softmax over each group of ``group`` columns (default: all) of a (N, C) float32 array,
    in place, in blocks of rows so that the max, exp, sum and scale passes over a block run in
    cache.

    subtract_max: True shifts every row (group) by its max; False never (the caller knows every
    max is 0); None only in blocks whose max is 60 or more, for groups whose max is known to be
    >= 0 (exp then neither overflows nor underflows a whole group). Group sums go through BLAS
    (a product with a 0/1 (C, C / group) matrix), much faster than ``sum(axis=-1)``. With
    ``out_k`` (one group) the first ``out_k`` labels are returned as a new C-contiguous
    (out_k, N) array.
    """
    n, width = logits.shape
    group = group or width
    groups = width // group
    sums = np.repeat(np.eye(groups, dtype=np.float32), group, axis=0)  # (C, groups)
    out = None if out_k is None else np.empty((out_k, n), dtype=np.float32)
    rows = max(1, _SOFTMAX_BLOCK // width)
    for start in range(0, n, rows):
        block = logits[start : start + rows]
        grouped = block.reshape(len(block), groups, group)
        if subtract_max or (subtract_max is None and block.max() >= 60.0):
            grouped -= grouped.max(axis=2, keepdims=True)
        np.exp(block, out=block)
        inv = 1.0 / (block @ sums)
        if out is None:
            grouped *= inv[:, :, None]
        else:
            np.multiply(block[:, :out_k].T, inv.T, out=out[:, start : start + len(block)])
    return logits if out is None else out


def _padded_neg_unary(neg_unary: np.ndarray) -> np.ndarray:
    """(N, Kp) float32 -unary for the mean field from a (K, N) float32 -unary (shifted in
    place): every row max 0 (softmax is shift-invariant), padding labels at _PAD_LOGIT."""
    k, n = neg_unary.shape
    neg_unary -= neg_unary.max(axis=0)
    out = np.empty((n, _padded_labels(k)), dtype=np.float32)
    out[:, :k] = neg_unary.T
    out[:, k:] = _PAD_LOGIT
    return out


# The bilateral lattice is numbered in code order when the mean field's messages are at least
# this much work (iterations x columns): the argsort is then repaid. Measured on 5 photographs
# (interleaved, best of 5), code / hash order, same maps: DeepLab's 21-class softmax (24 columns,
# t 10) 0.93 end to end, 6 labels (8 columns) at t 10 0.94-0.95, a 16-map sweep (64 columns) 0.94
# at t 10 and 0.98 at t 1; 2-3 labels (4 columns) at t 10 0.99-1.02; and the pseudo-labels' t 1
# with 4-8 columns 1.03-1.05, where one iteration does not repay the sort.
_CODE_ORDER_WORK = 64


def _kernels(
    image: np.ndarray,
    iterations: int,
    width: int,
    gauss_sxy: float,
    gauss_compat: float,
    bilateral_sxy: float,
    bilateral_srgb: float,
    bilateral_compat: float,
) -> list[tuple[PermutohedralLattice, np.ndarray, float]]:
    """The pairwise kernels of a mean field of ``iterations`` on ``image`` over (N, ``width``)
    messages: (lattice, normalisation, compat) for each kernel whose compat is not 0 (none when
    there are no iterations)."""
    h, w = image.shape[:2]
    kernels = []
    if iterations > 0 and gauss_compat != 0:
        _check_positive(gauss_sxy=gauss_sxy)
        kernels.append((*_position_lattice(h, w, float(gauss_sxy)), float(gauss_compat)))
    if iterations > 0 and bilateral_compat != 0:
        _check_positive(bilateral_sxy=bilateral_sxy, bilateral_srgb=bilateral_srgb)
        feats = _bilateral_features(image, bilateral_sxy, bilateral_srgb)
        code_order = iterations * width >= _CODE_ORDER_WORK
        kernels.append((*_lattice_and_norm(feats, code_order), float(bilateral_compat)))
    return kernels


def _mean_field(
    kernels: list[tuple[PermutohedralLattice, np.ndarray, float]],
    neg_unary: np.ndarray,
    q: np.ndarray | None,
    iterations: int,
    out_k: int | None = None,
    group: int | None = None,
) -> np.ndarray:
    """Mean-field inference on (N, C) float32 columns, softmax over each group of ``group``
    columns (default: all; a sweep's maps side by side); returns Q (N, C), or with ``out_k``
    (one group) its first ``out_k`` labels as a (out_k, N) array.

    neg_unary: -unary shifted so that every group's row max is 0 (softmax is shift-invariant),
    padding labels at _PAD_LOGIT; q: softmax(neg_unary) if the caller has it cheaply, else None.
    """
    if not kernels:
        if q is None:
            return _softmax_rows(neg_unary.copy(), subtract_max=False, out_k=out_k, group=group)
        return q if out_k is None else np.ascontiguousarray(q[:, :out_k].T)
    if q is None:
        q = _softmax_rows(neg_unary.copy(), subtract_max=False, group=group)
    mf = _MeanField(kernels)
    # With every compat >= 0 the messages are >= 0 and every row max of -unary is 0, so every
    # row max is >= 0: only blocks with large logits need shifting.
    shift = None if all(compat >= 0 for _, _, compat in kernels) else True
    for it in range(iterations):
        logits = mf.messages(q, neg_unary)
        last = it == iterations - 1
        q = _softmax_rows(logits, subtract_max=shift, out_k=out_k if last else None, group=group)
    return q


def _marginals(
    image: np.ndarray, neg_unary: np.ndarray, iterations: int, *kernel_params: float
) -> np.ndarray:
    """Mean-field marginals (K, H, W) for a (K, N) float32 -unary (shifted in place)."""
    k = neg_unary.shape[0]
    kernels = _kernels(image, iterations, _padded_labels(k), *kernel_params)
    q = _mean_field(kernels, _padded_neg_unary(neg_unary), None, iterations, out_k=k)
    return q.reshape(k, *image.shape[:2])


def _label_unary(
    maps: list[np.ndarray], n_labels: int, gt_prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """pydensecrf's ``unary_from_labels(..., zero_unsure=False)`` of M label maps (N,) side by
    side: -unary (N, M * Kp) float32, each map's rows shifted to max 0 and padded with
    _PAD_LOGIT, and its softmax Q_0 in closed form (the unary is two-valued)."""
    n_energy = np.float32(-np.log((1.0 - gt_prob) / (n_labels - 1)))
    p_energy = np.float32(-np.log(gt_prob))
    shift = min(n_energy, p_energy)
    e_n, e_p = np.exp(np.float64(shift - n_energy)), np.exp(np.float64(shift - p_energy))
    z = e_p + (n_labels - 1) * e_n
    n, kp = maps[0].size, _padded_labels(n_labels)
    neg_unary = np.full((n, len(maps), kp), shift - n_energy, dtype=np.float32)
    neg_unary[:, :, n_labels:] = _PAD_LOGIT
    q0 = np.full((n, len(maps), kp), e_n / z, dtype=np.float32)
    q0[:, :, n_labels:] = 0.0
    rows = np.arange(n)
    for block, labels in enumerate(maps):
        neg_unary[rows, block, labels.ravel()] = shift - p_energy
        q0[rows, block, labels.ravel()] = e_p / z
    return neg_unary.reshape(n, -1), q0.reshape(n, -1)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy uint8 array of shape (H, W, 3), got {type(image)}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8 (RGB 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be non-empty, got shape {image.shape}")
    return np.ascontiguousarray(image)


def _check_iterations(iterations: int) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int | np.integer):
        raise TypeError(f"iterations must be an int, got {type(iterations)}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    return int(iterations)


def _check_positive(**kwargs: float) -> None:
    for name, value in kwargs.items():
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value}")


def unary_from_probs(probs: np.ndarray) -> np.ndarray:
    """Unary energy -log(clip(p, 1e-5, 1)) of (K, H, W) probabilities, float32."""
    return -np.log(np.clip(probs, _PROB_CLIP, 1.0)).astype(np.float32)


def unary_from_labels(labels: np.ndarray, n_labels: int, gt_prob: float) -> np.ndarray:
    """pydensecrf ``unary_from_labels(..., zero_unsure=False)``: (H, W) -> (K, H, W) float32."""
    n_energy = np.float32(-np.log((1.0 - gt_prob) / (n_labels - 1)))
    p_energy = np.float32(-np.log(gt_prob))
    u = np.full((n_labels, *labels.shape), n_energy, dtype=np.float32)
    np.put_along_axis(u, labels[None].astype(np.intp), p_energy, axis=0)
    return u


def dense_crf_unary(
    image: np.ndarray,
    unary: np.ndarray,
    iterations: int = 10,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 50,
    bilateral_srgb: float = 5,
    bilateral_compat: float = 10,
) -> np.ndarray:
    """Mean-field marginals (K, H, W) float32 for a unary energy (K, H, W).

    A compat of 0 drops that kernel. ``iterations=0`` returns softmax(-unary).
    """
    image = _check_image(image)
    iterations = _check_iterations(iterations)
    h, w = image.shape[:2]
    unary = np.asarray(unary)
    if unary.ndim != 3 or unary.shape[1:] != (h, w):
        raise ValueError(f"unary must have shape (K, {h}, {w}) matching image, got {unary.shape}")
    if not np.all(np.isfinite(unary)):
        raise ValueError("unary contains NaN or inf")
    neg_unary = np.negative(unary.reshape(unary.shape[0], h * w), dtype=np.float32)
    kernel_params = (gauss_sxy, gauss_compat, bilateral_sxy, bilateral_srgb, bilateral_compat)
    return _marginals(image, neg_unary, iterations, *kernel_params)


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int = 10,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 50,
    bilateral_srgb: float = 5,
    bilateral_compat: float = 10,
) -> np.ndarray:
    """Dense CRF on softmax probabilities.

    image: uint8 (H, W, 3) RGB; probs: float (K, H, W), summing to 1 over K.
    Unary = -log(clip(p, 1e-5)) (pydensecrf ``unary_from_softmax``). Returns float32 (K, H, W).
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probs must be a float array, got dtype {probs.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != (h, w):
        raise ValueError(f"probs must have shape (K, {h}, {w}) matching image, got {probs.shape}")
    if probs.shape[0] < 2:
        raise ValueError(f"probs must have at least 2 labels (K >= 2), got K={probs.shape[0]}")
    if not (probs >= 0).all():  # NaN fails this too
        if np.isnan(probs).any():
            raise ValueError("probs contains NaN")
        raise ValueError("probs must be non-negative")
    sums = probs.sum(axis=0, dtype=np.result_type(probs.dtype, np.float32))
    if not np.allclose(sums, 1.0, atol=1e-3, rtol=0):
        worst = float(np.abs(sums - 1.0).max())
        raise ValueError(f"probs must sum to 1 over K (tolerance 1e-3); max deviation {worst:.3g}")
    iterations = _check_iterations(iterations)
    k = probs.shape[0]
    # -unary_from_probs(probs), computed in float32 without the intermediate copies
    log_probs = np.log(np.clip(probs, _PROB_CLIP, 1.0), dtype=np.float32)
    kernel_params = (gauss_sxy, gauss_compat, bilateral_sxy, bilateral_srgb, bilateral_compat)
    return _marginals(image, log_probs.reshape(k, h * w), iterations, *kernel_params)


def _check_labels(labels: np.ndarray, n_labels: int, hw: tuple[int, int]) -> np.ndarray:
    if isinstance(n_labels, bool) or not isinstance(n_labels, int | np.integer):
        raise TypeError(f"n_labels must be an int, got {type(n_labels)}")
    if n_labels < 2:
        raise ValueError(f"n_labels must be >= 2, got {n_labels}")
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.shape != hw:
        raise ValueError(f"labels must have shape {hw} matching image, got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(
            f"labels must lie in [0, n_labels={n_labels}), got range "
            f"[{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.intp)


def dense_crf_labels(
    image: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    gt_prob: float = 0.7,
    iterations: int = 10,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 50,
    bilateral_srgb: float = 5,
    bilateral_compat: float = 10,
) -> np.ndarray:
    """Dense CRF on a hard label map (P-NOC ``crf_inference_label`` semantics).

    image: uint8 (H, W, 3); labels: int (H, W) in [0, n_labels). Unary is pydensecrf's
    ``unary_from_labels(labels, n_labels, gt_prob, zero_unsure=False)``. Returns float32
    marginals (n_labels, H, W).
    """
    image = _check_image(image)
    iterations = _check_iterations(iterations)
    labels = _check_labels(labels, n_labels, image.shape[:2])
    if not 0.0 < gt_prob < 1.0:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    neg_unary, q0 = _label_unary([labels], n_labels, gt_prob)
    kernel_params = (gauss_sxy, gauss_compat, bilateral_sxy, bilateral_srgb, bilateral_compat)
    kernels = _kernels(image, iterations, neg_unary.shape[1], *kernel_params)
    q = _mean_field(kernels, neg_unary, q0, iterations, out_k=n_labels)
    return q.reshape(n_labels, *labels.shape)


def crf_label_map(
    image: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    gt_prob: float = 0.7,
    iterations: int = 10,
    **kernel_params: float,
) -> np.ndarray:
    """argmax of `dense_crf_labels` as uint8 (H, W) (n_labels <= 256)."""
    if n_labels > 256:
        raise ValueError(f"crf_label_map returns uint8; n_labels must be <= 256, got {n_labels}")
    q = dense_crf_labels(image, labels, n_labels, gt_prob, iterations, **kernel_params)
    return q.argmax(axis=0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Many label maps of one image (the CRF variant of a threshold sweep, method.md §6.3): the kernels
# are built once, and every distinct map's mean field runs in the same sparse products.


def crf_label_maps(
    image: np.ndarray,
    label_maps: np.ndarray,
    n_labels: int,
    gt_prob: float = 0.7,
    iterations: int = 10,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 50,
    bilateral_srgb: float = 5,
    bilateral_compat: float = 10,
) -> np.ndarray:
    """`crf_label_map` of every map of `label_maps` (T, H, W) on one image: uint8 (T, H, W).

    The pairwise kernels (the lattices) are built once for the image and identical maps are
    solved once; the distinct maps' mean fields run side by side as blocks of columns of one
    (N, M * Kp) array, each block normalised by its own softmax. Marginals agree with
    `dense_crf_labels` map by map up to float32 rounding of the normalisation.
    """
    image = _check_image(image)
    iterations = _check_iterations(iterations)
    label_maps = np.asarray(label_maps)
    if label_maps.ndim != 3:
        raise ValueError(f"label_maps must have shape (T, H, W), got {label_maps.shape}")
    if n_labels > 256:
        raise ValueError(f"crf_label_maps returns uint8; n_labels must be <= 256, got {n_labels}")
    if not 0.0 < gt_prob < 1.0:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    h, w = image.shape[:2]
    maps = [_check_labels(m, n_labels, (h, w)) for m in label_maps]
    distinct: dict[bytes, int] = {}
    which = [distinct.setdefault(m.tobytes(), len(distinct)) for m in maps]
    unique = [maps[which.index(i)] for i in range(len(distinct))]
    kp = _padded_labels(n_labels)
    neg_unary, q0 = _label_unary(unique, n_labels, gt_prob)
    kernel_params = (gauss_sxy, gauss_compat, bilateral_sxy, bilateral_srgb, bilateral_compat)
    kernels = _kernels(image, iterations, neg_unary.shape[1], *kernel_params)
    q = _mean_field(kernels, neg_unary, q0, iterations, group=kp)
    best = q.reshape(h * w, len(unique), kp)[:, :, :n_labels].argmax(axis=2).astype(np.uint8)
    return np.stack([best[:, i].reshape(h, w) for i in which])
