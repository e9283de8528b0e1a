r"""Quickstart on the embedded synthetic dataset: P-NOC priors end to end.

    python -m pnoc_jax.main --config configs/quickstart.py --workdir runs/quickstart

Stages: train the ordinary classifier, train P-NOC against it (backbone initialised from the
OC), infer CAMs with TTA, evaluate the priors; C²AM-H saliency and its detector; affinity
labels, AffinityNet, random walk + CRF pseudo-labels and their evaluation; DeepLabV3+ on the
pseudo-labels and on the ground truth (the fully supervised bound).
Tiny ResNet at output stride 8 on ~100 px images. Arguments: `:strategy=pnoc,epochs=5`
(strategy in cam, puzzle, occse, poc, pnoc).
"""

from pnoc_jax import config_lib

common = config_lib.import_beside(__file__, "common")


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, strategy="pnoc", epochs=5)
    return common.synthetic_config(args.strategy, epochs=args.epochs)
