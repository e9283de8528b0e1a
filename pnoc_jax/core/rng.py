"""Deterministic random streams: a key is a pure function of (seed, stream, step).

No key is ever stored in a checkpoint, so a resumed run draws exactly the numbers an
uninterrupted run would.
"""

import enum

import jax


class Stream(enum.IntEnum):
    INIT = 0
    INIT_OC = 1
    TRAIN = 2
    TRAIN_OC = 3
    DATA = 4


def init_key(seed: int, stream: Stream = Stream.INIT) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), int(stream))


def step_key(seed: int, stream: Stream, step: jax.Array | int) -> jax.Array:
    """The key for one training step; `step` may be traced."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), int(stream)), step)


def data_seed(seed: int) -> int:
    """Seed for host-side data order and augmentation (grain)."""
    return seed * 1_000_003 + int(Stream.DATA)
