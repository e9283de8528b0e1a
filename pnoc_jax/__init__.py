"""pnoc_jax: a pure-JAX weakly supervised semantic segmentation pipeline built around P-NOC."""

__version__ = "0.1.0"
