"""Training skips images without a class, as the reference's classification datasets do."""

import pickle

import numpy as np

from pnoc_jax.data import pipeline


def _examples(n: int = 10) -> list[dict]:
    out = []
    for i in range(n):
        labels = np.zeros(3, np.float32)
        if i % 3:  # ids 0, 3, 6, 9 have no class
            labels[i % 3] = 1
        out.append({"id": f"im{i}", "image": np.full((4, 4, 3), i, np.uint8), "labels": labels})
    return out


class _Indexed(list):
    """A source with the fast label index (as `datasets.DecodedSource`); decoding is counted."""

    decoded = 0

    def __getitem__(self, index):
        type(self).decoded += 1
        return super().__getitem__(index)

    def ids_and_labels(self):
        return [(e["id"], e["labels"]) for e in list.__iter__(self)]


def test_labelled_only_drops_images_without_a_class():
    kept = pipeline.labelled_only(_examples())
    assert [e["id"] for e in (kept[i] for i in range(len(kept)))] == [
        "im1", "im2", "im4", "im5", "im7", "im8"
    ]  # fmt: skip
    assert pickle.loads(pickle.dumps(kept))[0]["id"] == "im1"  # grain workers
    every = _examples()[1:3]
    assert pipeline.labelled_only(every) is every  # nothing to skip: the source itself


def test_labelled_only_reads_the_label_index_and_batches_have_a_class():
    source = _Indexed(_examples(12))
    kept = pipeline.labelled_only(source)
    assert _Indexed.decoded == 0 and len(kept) == 8
    plan = pipeline.training_input(
        kept, lambda ex, rng: ex, batch_size=4, epochs=3, steps=0, seed=0
    )
    assert (plan.num_examples, plan.steps_per_epoch, plan.total_steps) == (8, 2, 6)
    for batch in (next(plan.batches(s)) for s in range(plan.total_steps)):
        assert np.all(batch["labels"].sum(axis=1) > 0)
