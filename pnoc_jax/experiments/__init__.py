"""Experiments that run sub-pipelines: the strategy ablation and the saliency comparison.

Each driver receives the runner's `run_stage` as a parameter, so its sub-runs are ordinary,
resumable stage runs, and this layer sits between the stage families and `pipeline`.
"""
