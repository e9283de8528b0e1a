"""Entry point: `python -m pnoc_jax.main --config configs/<file>.py[:args] --workdir DIR`.

Runs the stages listed in `config.stages`, skipping those already finished with the same
config. Overrides: `--config.train.lr=0.05`. Exit code 143 after a SIGTERM-triggered checkpoint.
"""

import logging as logging_std
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pnoc_jax import config_lib, pipeline
from pnoc_jax.core import distributed
from pnoc_jax.core.loop import NonFiniteLoss, Preempted

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all stage outputs.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Force jax.distributed.initialize() (auto on TPU pods and SLURM)."
)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging_std.Filter):
    """Drops the INFO chatter of orbax and TFDS; their warnings and errors still show."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        noisy = any(lib in record.pathname for lib in ("orbax", "tensorflow_datasets", "grain"))
        return record.levelno >= logging_std.WARNING or not noisy


def main(argv: list[str]) -> None:
    del argv
    logging.get_absl_handler().addFilter(_QuietLibraries())
    distributed.maybe_initialize(force=_DISTRIBUTED.value)
    config = _CONFIG.value
    pipeline.validate(config, config_lib.Topology(jax.device_count(), jax.process_count()))
    workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
    logging.info("devices: %s; workdir %s", jax.devices(), workdir)
    try:
        pipeline.run_stages(config, workdir)
    except Preempted as e:
        logging.warning("%s", e)
        sys.exit(e.exit_code)  # 143 after SIGTERM, 130 after Ctrl-C
    except NonFiniteLoss as e:
        logging.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
