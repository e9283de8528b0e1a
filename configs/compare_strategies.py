r"""The paper's strategy ablation (Tables 2-3) on the synthetic dataset: 4 strategies x 3 seeds.

    python -m pnoc_jax.main --config configs/compare_strategies.py --workdir runs/compare

Writes runs/compare/compare/results.{md,csv} and the class analysis over the strategies,
runs/compare/analyze/class_groups.{md,csv,json,png}.
Arguments: `:seeds=3,epochs=5,strategies=cam+puzzle+poc+pnoc`.
"""

from pnoc_jax import config_lib

common = config_lib.import_beside(__file__, "common")


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, seeds=3, epochs=5, strategies="cam+puzzle+poc+pnoc")
    config = common.synthetic_config("cam", epochs=args.epochs)
    config.stages = ("compare", "analyze")
    config.compare.update(
        strategies=tuple(args.strategies.split("+")), seeds=tuple(range(args.seeds))
    )
    return config
