"""Saliency family: C²AM / C²AM-H losses (method.md §7); the models live in ``pnoc_jax.models``."""
