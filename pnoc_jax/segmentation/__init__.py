"""Segmentation stage: DeepLab training losses (method.md §10)."""
