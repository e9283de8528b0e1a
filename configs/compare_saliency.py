r"""The saliency comparison (Tables 6-7) on the synthetic dataset: 3 seeds.

    python -m pnoc_jax.main --config configs/compare_saliency.py --workdir runs/compare_saliency

Per seed, the quickstart's recipe (P-NOC priors -> C²AM-H with P-NOC hints -> detector ->
saliency-guided affinity labels -> AffinityNet -> random walk) and, reusing its finished stages,
plain C²AM, labels from the C²AM-H masks and the conventional labels. Writes
runs/compare_saliency/compare_saliency/results.md (mean ± std over seeds).
Arguments: `:seeds=3,epochs=5`.
"""

from pnoc_jax import config_lib

common = config_lib.import_beside(__file__, "common")


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, seeds=3, epochs=5)
    config = common.synthetic_config("pnoc", epochs=args.epochs)
    config.stages = ("compare_saliency",)
    config.compare_saliency.seeds = tuple(range(args.seeds))
    return config
