"""What a compiled data-parallel update communicates, read from its optimised HLO."""

import collections

from pnoc_jax.core import aot

# A data-parallel step all-reduces gradients and BatchNorm statistics; nothing else should
# cross devices (image tiles or CAMs moving between devices would be a layout bug).
ALLOWED = {"all-reduce"}


def collectives(jitted, *args) -> collections.Counter:
    """Counts of each collective in the compiled HLO of `jitted(*args)`."""
    return collections.Counter(aot.collectives(jitted.lower(*args).compile().as_text()))


def unexpected(jitted, *args) -> dict[str, int]:
    """The collectives of `jitted(*args)` outside `ALLOWED` (empty when all is well)."""
    return {op: n for op, n in collectives(jitted, *args).items() if op not in ALLOWED}
