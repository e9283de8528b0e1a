"""The AffinityNet loss against an independent NumPy computation along IRN's paths."""

import jax.numpy as jnp
import numpy as np

from pnoc_jax.affinity import labels as aff_labels
from pnoc_jax.affinity import losses
from pnoc_jax.affinity.paths import PathIndex


def _numpy_loss(edge_logits, label_maps, radius, num_labels):
    """Independent NumPy version: per direction, path max over IRN's path indices."""
    index = PathIndex(radius)
    sums = np.zeros(3)
    counts = np.zeros(3)
    for logits, label in zip(edge_logits, label_maps, strict=True):
        h, w = label.shape
        prob = (1 / (1 + np.exp(-logits.astype(np.float64)))).ravel()
        aff = np.stack([1 - prob[p].max(axis=0) for p in index.path_indices(h, w)])
        bg, fg, neg = aff_labels.pair_labels(label, radius, num_labels)
        pos_loss, neg_loss = -np.log(aff + 1e-5), -np.log(1 + 1e-5 - aff)
        for i, (mask, values) in enumerate(((bg, pos_loss), (fg, pos_loss), (neg, neg_loss))):
            sums[i] += values[mask].sum()
            counts[i] += mask.sum()
    bg, fg, neg = sums / (counts + 1e-5)
    return 0.5 * (0.5 * bg + 0.5 * fg + neg), (bg, fg, neg)


def test_affinity_loss_matches_numpy():
    rs = np.random.default_rng(0)
    h, w, radius, num_labels = 12, 17, 5, 4
    labels = rs.choice([0, 0, 1, 2, 3, 255], size=(2, h, w)).astype(np.uint8)
    labels[0, :6, :8] = 1  # some large uniform regions so every pair kind occurs
    labels[1, 4:, 5:] = 0
    logits = rs.normal(0, 2, size=(2, h, w)).astype(np.float32)
    want, (bg, fg, neg) = _numpy_loss(logits, labels, radius, num_labels)
    got = losses.affinity_loss(jnp.asarray(logits), jnp.asarray(labels), radius, num_labels)
    np.testing.assert_allclose(float(got["loss"]), want, rtol=1e-5)
    np.testing.assert_allclose(
        [float(got[k]) for k in ("loss_bg_pos", "loss_fg_pos", "loss_neg")],
        [bg, fg, neg],
        rtol=1e-5,
    )
