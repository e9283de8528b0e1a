"""JAX's persistent compilation cache, on by default: a resumed or repeated run, and every
process of a multi-process run, reuses the programs an earlier one compiled instead of
compiling them again (minutes for RS269 updates)."""

import os

import jax

ENV = "JAX_COMPILATION_CACHE_DIR"  # JAX's own variable: when set, it wins


def default_dir() -> str:
    """`$XDG_CACHE_HOME/pnoc_jax/jax` (`~/.cache/pnoc_jax/jax` without XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pnoc_jax", "jax")


def enable(directory: str | None) -> str:
    """Caches compiled programs that took over a second to compile in `directory`
    (None: `$JAX_COMPILATION_CACHE_DIR`, else `default_dir()`; "": off). Returns the directory
    in use ("" when off). Call before the first compilation."""
    if directory is None:
        directory = os.environ.get(ENV) or default_dir()
    if directory:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    return directory
