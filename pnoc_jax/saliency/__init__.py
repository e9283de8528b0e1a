"""Saliency family: C²AM / C²AM-H losses (spec §7); the models live in ``pnoc_jax.models``."""
