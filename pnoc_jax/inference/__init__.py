"""Inference on fixed canvases: the predictor set-up and flip / multi-scale augmentation."""
