"""Dense CRF: hand-checkable properties, input validation, and agreement with pydensecrf2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pnoc_jax.cpu_benchmark import synthetic_photo, synthetic_probs
from pnoc_jax.postprocess.crf import (
    PermutohedralLattice,
    crf_label_map,
    dense_crf,
    dense_crf_labels,
    unary_from_labels,
    unary_from_probs,
)

H, W = 120, 160


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return synthetic_photo(H, W, seed=0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Properties


def test_zero_iterations_is_softmax_of_minus_unary(photo):
    probs = synthetic_probs(H, W, 4, seed=1)
    np.testing.assert_allclose(
        dense_crf(photo, probs, iterations=0), _softmax(-unary_from_probs(probs)), atol=1e-6
    )
    labels = probs.argmax(axis=0)
    q = dense_crf_labels(photo, labels, 4, gt_prob=0.7, iterations=0)
    np.testing.assert_allclose(q, _softmax(-unary_from_labels(labels, 4, 0.7)), atol=1e-6)
    # Hand value: gt_prob on the given label, (1 - gt_prob) / (n - 1) elsewhere.
    np.testing.assert_allclose(q[labels[0, 0], 0, 0], 0.7, atol=1e-6)
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-6)


def test_unary_from_labels_values():
    u = unary_from_labels(np.array([[0, 2]]), 3, 0.8)
    np.testing.assert_allclose(u[:, 0, 0], -np.log([0.8, 0.1, 0.1]), rtol=1e-6)
    np.testing.assert_allclose(u[:, 0, 1], -np.log([0.1, 0.1, 0.8]), rtol=1e-6)


def test_uniform_stays_uniform():
    image = np.full((20, 30, 3), 128, np.uint8)
    probs = np.full((5, 20, 30), 0.2, np.float32)
    q = dense_crf(image, probs, iterations=5)
    np.testing.assert_allclose(q, 0.2, atol=1e-6)


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_marginals_are_distributions(photo, iterations):
    probs = synthetic_probs(H, W, 6, seed=2)
    for q in (
        dense_crf(photo, probs, iterations=iterations),
        dense_crf_labels(photo, probs.argmax(0), 6, iterations=iterations),
    ):
        assert q.shape == (6, H, W) and q.dtype == np.float32
        assert np.all(q >= 0)
        np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-5)


def test_crf_smooths_isolated_label_noise():
    # Two flat colour halves; labels follow the halves except for salt noise: CRF removes it.
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = (200, 60, 30)
    truth = np.zeros((40, 60), np.int64)
    truth[:, 30:] = 1
    noisy = truth.copy()
    flip = rng.random(truth.shape) < 0.1
    noisy[flip] = 1 - noisy[flip]
    out = crf_label_map(image, noisy, 2, gt_prob=0.7, iterations=5)
    assert out.dtype == np.uint8
    assert (out == truth).mean() > 0.99 > (noisy == truth).mean()


def test_lattice_weights_are_barycentric(photo):
    feats = np.random.default_rng(0).normal(size=(500, 5)).astype(np.float32) * 3
    lat = PermutohedralLattice.build(feats)
    assert lat.vertex.shape == lat.weight.shape == (500, 6)
    assert np.all(lat.weight >= -1e-6)
    np.testing.assert_allclose(lat.weight.sum(axis=1), 1.0, atol=1e-5)
    # A pixel's corners are distinct lattice vertices.
    assert all(len(set(row)) == 6 for row in lat.vertex.tolist())


@pytest.mark.parametrize("features", ["position", "bilateral"])
def test_pixel_order_renumbering_filters_the_same(photo, features):
    from pnoc_jax.postprocess import crf

    if features == "position":
        feats = crf._position_features(H, W, 1.0)
    else:
        feats = crf._bilateral_features(photo, 50.0, 5.0)
    lat = PermutohedralLattice.build(feats)
    renumbered = lat.in_pixel_order()
    assert sorted(np.unique(renumbered.vertex)) == list(range(lat.n_vertices))

    # neighbouring pixels' corners get nearby numbers (hash order scatters them)
    def gap(vertex: np.ndarray) -> float:
        return float(np.median(np.abs(np.diff(vertex[:, 0].astype(np.int64)))))

    assert gap(renumbered.vertex) < gap(lat.vertex) / 5
    values = np.random.default_rng(1).random(H * W, dtype=np.float32)
    np.testing.assert_array_equal(lat.compute(values), renumbered.compute(values))


def test_code_order_filters_the_same(photo):
    from pnoc_jax.postprocess import crf

    feats = crf._bilateral_features(photo, 50.0, 5.0)
    hashed = PermutohedralLattice.build(feats)
    ordered = PermutohedralLattice.build(feats, code_order=True)
    assert ordered.n_vertices == hashed.n_vertices
    assert sorted(np.unique(ordered.vertex)) == list(range(ordered.n_vertices))

    # a blur neighbour's code is the vertex's plus a constant per axis: in code order every
    # axis reads its neighbours in increasing order (in hash order it does not)
    def increasing(lat: PermutohedralLattice) -> bool:
        m = lat.n_vertices
        return all(bool(np.all(np.diff(n[n < m]) > 0)) for pair in lat.blur_idx for n in pair)

    assert increasing(ordered) and not increasing(hashed)
    values = np.random.default_rng(1).random(H * W, dtype=np.float32)
    np.testing.assert_array_equal(hashed.compute(values), ordered.compute(values))


def test_long_or_wide_mean_fields_use_the_code_order(photo, monkeypatch):
    """The bilateral lattice is in code order when iterations x columns >= 64: DeepLab's 21-class
    softmax (24 columns) at t 3, 7 labels (8 columns) at t 10, not 3 labels (4 columns) at t 1.
    Both orders give the same marginals bit for bit."""
    from pnoc_jax.postprocess import crf

    seen = []  # code_order of each bilateral (5-D) lattice built
    build = PermutohedralLattice.build.__func__

    def recording_build(cls, features, code_order=False):
        if features.shape[1] == 5:
            seen.append(code_order)
        return build(cls, features, code_order)

    monkeypatch.setattr(PermutohedralLattice, "build", classmethod(recording_build))
    probs = synthetic_probs(H, W, 21, seed=4)
    deeplab = dict(gauss_sxy=1, bilateral_sxy=67, bilateral_srgb=3)
    ordered = dense_crf(photo, probs, 3, **deeplab)
    dense_crf_labels(photo, probs.argmax(0) % 7, 7, iterations=10)
    dense_crf_labels(photo, probs.argmax(0) % 3, 3, iterations=1)
    assert seen == [True, True, False]
    monkeypatch.setattr(crf, "_CODE_ORDER_WORK", 1 << 20)
    np.testing.assert_array_equal(ordered, dense_crf(photo, probs, 3, **deeplab))
    assert seen[-1] is False


def test_position_kernel_cache_is_not_mutated(photo):
    labels = synthetic_probs(H, W, 3, seed=3).argmax(0)
    a = dense_crf_labels(photo, labels, 3, iterations=3)
    b = dense_crf_labels(photo, labels, 3, iterations=3)
    np.testing.assert_array_equal(a, b)


def test_cpu_modules_do_not_import_jax():
    # CRF / random walk / affinity labels run in worker processes without accelerators.
    code = (
        "import sys; import pnoc_jax.postprocess.crf, pnoc_jax.cpu_benchmark, "
        "pnoc_jax.affinity.paths, pnoc_jax.affinity.random_walk, pnoc_jax.affinity.labels, "
        "pnoc_jax.affinity.tasks, pnoc_jax.core.pool; "
        "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=root)


# ---------------------------------------------------------------------------------------------
# Validation


def _img(h=8, w=9):
    return np.zeros((h, w, 3), np.uint8)


def _probs(k=3, h=8, w=9):
    return np.full((k, h, w), 1.0 / k, np.float32)


@pytest.mark.parametrize(
    ("image", "probs", "kwargs", "exc", "match"),
    [
        (_img().astype(np.float32), _probs(), {}, TypeError, "image must have dtype uint8"),
        (_img()[..., :2], _probs(), {}, ValueError, r"image must have shape \(H, W, 3\)"),
        (_img(), _probs(h=7), {}, ValueError, "probs must have shape"),
        (_img(), _probs() * 1.01, {}, ValueError, "sum to 1"),
        (_img(), _probs() - 0.5, {}, ValueError, "non-negative"),
        (_img(), np.where(_probs() > 0, np.nan, 0), {}, ValueError, "NaN"),
        (_img(), _probs().astype(np.int64), {}, TypeError, "float"),
        (_img(), _probs(), {"iterations": -1}, ValueError, "iterations must be >= 0"),
        (_img(), _probs(), {"iterations": 1.5}, TypeError, "iterations must be an int"),
    ],
)
def test_dense_crf_rejects_bad_inputs(image, probs, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dense_crf(image, probs, **kwargs)


@pytest.mark.parametrize(
    ("labels", "n_labels", "kwargs", "exc", "match"),
    [
        (np.full((8, 9), 3), 3, {}, ValueError, r"labels must lie in \[0, n_labels=3\)"),
        (np.full((8, 9), -1), 3, {}, ValueError, "labels must lie in"),
        (np.zeros((8, 9)), 3, {}, TypeError, "labels must be an integer array"),
        (np.zeros((8, 8), np.int64), 3, {}, ValueError, "labels must have shape"),
        (np.zeros((8, 9), np.int64), 1, {}, ValueError, "n_labels must be >= 2"),
        (np.zeros((8, 9), np.int64), 2, {"gt_prob": 1.0}, ValueError, "gt_prob"),
        (np.zeros((8, 9), np.int64), 2, {"iterations": -2}, ValueError, "iterations"),
    ],
)
def test_dense_crf_labels_rejects_bad_inputs(labels, n_labels, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dense_crf_labels(_img(), labels, n_labels, **kwargs)


# ---------------------------------------------------------------------------------------------
# Agreement with the reference implementation (pydensecrf2)


@pytest.fixture(scope="module")
def dcrf():
    return pytest.importorskip(
        "pydensecrf.densecrf",
        reason="reference CRF not installed: pip install pydensecrf2 (module pydensecrf)",
    )


def _reference(dcrf, image, unary, t):
    k, h, w = unary.shape
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(k, -1), dtype=np.float32))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image), compat=10)
    return np.array(d.inference(t)).reshape(k, h, w)


def _assert_close(ours, ref):
    agreement = (ours.argmax(0) == ref.argmax(0)).mean()
    mad = np.abs(ours - ref).mean()
    assert agreement >= 0.99, agreement
    assert mad <= 0.02, mad


@pytest.mark.parametrize("k", [3, 8, 21])
@pytest.mark.parametrize(("gt_prob", "t"), [(0.7, 10), (0.9, 1)])
def test_labels_match_pydensecrf(dcrf, photo, k, gt_prob, t):
    labels = synthetic_probs(H, W, k, seed=k).argmax(axis=0)
    ours = dense_crf_labels(photo, labels, k, gt_prob=gt_prob, iterations=t)
    ref = _reference(dcrf, photo, unary_from_labels(labels, k, gt_prob), t)
    _assert_close(ours, ref)


@pytest.mark.parametrize("k", [3, 21])
def test_probs_match_pydensecrf(dcrf, photo, k):
    probs = synthetic_probs(H, W, k, seed=10 + k)
    ours = dense_crf(photo, probs, iterations=10)
    ref = _reference(dcrf, photo, unary_from_probs(probs), 10)
    _assert_close(ours, ref)


def test_noise_image_and_custom_params_match_pydensecrf(dcrf):
    # Worst case for the lattice (every pixel its own colour) and non-default kernel parameters.
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    probs = synthetic_probs(48, 64, 5, seed=6)
    params = {"gauss_sxy": 1, "bilateral_sxy": 67, "bilateral_srgb": 3, "bilateral_compat": 4}
    ours = dense_crf(image, probs, 5, **params)
    d = dcrf.DenseCRF2D(64, 48, 5)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_probs(probs).reshape(5, -1)))
    d.addPairwiseGaussian(sxy=1, compat=3)
    d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=image, compat=4)
    _assert_close(ours, np.array(d.inference(5)).reshape(5, 48, 64))


def test_products_into_buffers_equal_scipy_matmul(photo, monkeypatch):
    # The mean field writes its sparse products into reused buffers through scipy's own
    # kernels; without them (`_MATVECS` empty) it falls back to `@`: the same numbers, up to
    # float32 rounding (the kernel accumulates the slice into -unary, `@` adds it after).
    from pnoc_jax.postprocess import crf

    labels = synthetic_probs(H, W, 5, seed=3).argmax(axis=0)
    maps = np.stack([labels, np.roll(labels, 7, axis=1)])
    buffered = dense_crf_labels(photo, labels, 5, iterations=4)
    buffered_maps = crf.crf_label_maps(photo, maps, 5, iterations=4)
    monkeypatch.setattr(crf, "_MATVECS", {})
    unbuffered = dense_crf_labels(photo, labels, 5, iterations=4)
    np.testing.assert_allclose(buffered, unbuffered, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(buffered_maps, crf.crf_label_maps(photo, maps, 5, iterations=4))


def test_photo_benchmark_covers_every_pipeline_setting(dcrf, tmp_path):
    import cv2

    from pnoc_jax import cpu_benchmark

    path = str(tmp_path / "photo.png")
    cv2.imwrite(path, synthetic_photo(48, 64, seed=9)[..., ::-1])
    result = cpu_benchmark.bench_crf_photos([path], repeats=1, longer_side=64)
    assert result["settings"].keys() == cpu_benchmark.pipeline_crf_settings().keys()
    for setting in result["settings"].values():
        row = setting["photos"]["photo.png"]
        assert row["hw"] == [48, 64]
        assert row["argmax_agreement"] >= 0.99
        assert setting["worst_ratio"] == row["ratio"] > 0
    (tmp_path / "not_an_image.txt").write_text("x")
    with pytest.raises(ValueError, match=r"not_an_image\.txt: not an image"):
        cpu_benchmark.read_photo(str(tmp_path / "not_an_image.txt"))


def test_photo_label_map_has_the_asked_classes():
    from pnoc_jax import cpu_benchmark

    image = synthetic_photo(96, 128, seed=4)
    labels = cpu_benchmark.photo_label_map(image, 6)
    assert labels.shape == (96, 128) and set(np.unique(labels)) == set(range(6))
    probs = cpu_benchmark.photo_probs(labels, 6)
    assert probs.shape == (6, 96, 128) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert (probs.argmax(axis=0) == labels).mean() > 0.8
