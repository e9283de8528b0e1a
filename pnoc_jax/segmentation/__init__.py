"""Segmentation stage: DeepLab training losses (spec §10)."""
