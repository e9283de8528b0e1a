r"""Quickstart on the embedded synthetic dataset: P-NOC priors end to end.

    python -m pnoc_jax.main --config configs/quickstart.py --workdir runs/quickstart

Stages: train the ordinary classifier, train P-NOC against it (backbone initialised from the
OC), infer CAMs with TTA, evaluate the priors; then affinity labels (CAM + CRF), AffinityNet,
random walk + CRF pseudo-labels and their evaluation.
Tiny ResNet at output stride 8 on ~100 px images. Arguments: `:strategy=pnoc,epochs=5`
(strategy in cam, puzzle, occse, poc, pnoc).
"""

from pnoc_jax import config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, strategy="pnoc", epochs=5)
    return config_lib.synthetic_config(args.strategy, epochs=args.epochs)
