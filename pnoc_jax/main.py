"""Entry point: `python -m pnoc_jax.main --config configs/<file>.py[:args] --workdir DIR`.

Runs the stages listed in `config.stages`, skipping those already finished with the same
config (and whose outputs are whole). `--workdir DIR --remove_stale` deletes the stale folders
of other configs, listing each. Overrides: `--config.train.lr=0.05`. A mistake in the config,
the data or the workdir stops with one line that says what and where; exit code 2 for the
command line and config, 1 for other problems (data, workdir, machine), 143 after a
SIGTERM-triggered checkpoint, 130 after Ctrl-C.
"""

import difflib
import errno
import logging as std_logging
import os
import re
import sys
import threading
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from pnoc_jax import config_lib, pipeline
from pnoc_jax.cam import strategies
from pnoc_jax.core import compile_cache, distributed, fileio, progress
from pnoc_jax.core.errors import UserError, first_line
from pnoc_jax.core.loop import NonFiniteLoss, Preempted

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all stage outputs.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Force jax.distributed.initialize() (auto on TPU pods and SLURM)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for an explicit multi-process run."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "JAX's persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR, else "
    "~/.cache/pnoc_jax/jax); '' turns it off.",
)
_REMOVE_STALE = flags.DEFINE_bool(
    "remove_stale",
    False,
    "Delete the workdir's <stage>.stale-N folders (finished results of other configs), listing "
    "each, and exit; no --config needed. Runs never delete them.",
)
flags.mark_flags_as_required(["workdir"])

# Problems of the machine rather than of the code: reported in one line.
_OS_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EEXIST: "a file is in the way",
    errno.EFBIG: "the file is too large for this file system",
}


_WHAT_TO_DO = {
    errno.ENOSPC: "free space or use another --workdir, then rerun: finished stages are kept "
    "and training resumes from its last checkpoint",
    errno.EDQUOT: "free space or use another --workdir, then rerun",
    errno.EACCES: "give this user write access or use another --workdir",
    errno.EPERM: "give this user write access or use another --workdir",
    errno.EROFS: "use a writable --workdir",
}


def _configs() -> list[str]:
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(f"configs/{f}" for f in os.listdir(CONFIG_DIR) if f.endswith(".py"))


__doc__ += f"""
Configs: {", ".join(_configs()) or "(none found beside the package)"}.
Stages: {", ".join(pipeline.STAGES)}.
Strategies (config.train.strategy): {", ".join(strategies.STRATEGIES)}.
"""


def fail(message: str, code: int) -> None:
    """Prints one line to stderr and exits."""
    print(f"pnoc_jax: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _config_keys() -> list[str]:
    def leaves(node: ml_collections.ConfigDict, prefix: str) -> list[str]:
        out = []
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict):
                out += leaves(value, f"{prefix}{key}.")
            else:
                out.append(f"{prefix}{key}")
        return out

    return leaves(config_lib.base_config(), "")


def _unknown_override(argv: list[str], error: Exception) -> str:
    """The message for a --config.<key> override that names no key, with the closest keys."""
    found = re.search(r"[A-Za-z_]\w*", str(error.args[0]) if error.args else "")
    name = found.group(0) if found else ""
    overrides = [
        a.split("=")[0].removeprefix("--config.") for a in argv if a.startswith("--config.")
    ]
    bad = next((o for o in overrides if name in o.split(".")), name)
    close = difflib.get_close_matches(bad, _config_keys(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; see config_lib.base_config()"
    return f"--config.{bad}: no such config key{hint}"


def _check_config_file(path: str) -> None:
    """One line for a config file that is missing or not Python, before absl imports it."""
    if not fileio.isfile(fileio.expand(path)):
        fail(f"config file {path!r} not found; configs: {', '.join(_configs())}", 2)
    try:
        compile(fileio.read_bytes(fileio.expand(path)), path, "exec")
    except SyntaxError as e:
        fail(f"--config {path}: line {e.lineno}: {e.msg}", 2)
    except (OSError, ValueError) as e:
        fail(f"--config {path}: cannot read it ({e})", 2)


def _raised_in(error: BaseException, path: str) -> bool:
    """Whether `error` was raised by code of the file at `path` (a frame of its traceback)."""
    target = os.path.abspath(fileio.expand(path))
    frames = traceback.walk_tb(error.__traceback__)
    return any(os.path.abspath(frame.f_code.co_filename) == target for frame, _ in frames)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with one-line errors for the user's mistakes."""
    config_arg = next(
        (a.split("=", 1)[1] for a in argv if a.startswith("--config=") and "=" in a), None
    )
    if config_arg is None and "--config" in argv[:-1]:
        config_arg = argv[argv.index("--config") + 1]
    if config_arg is not None:
        _check_config_file(config_arg.split(":", 1)[0])
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        if "Traceback (most recent call last):" in lines:  # an error inside the config file
            fail(f"--config {config_arg}: {lines[-1]}", 2)
        fail(lines[0] if lines else repr(e), 2)
    except Exception as e:
        if config_arg is not None and _raised_in(e, config_arg.split(":", 1)[0]):
            fail(f"--config {config_arg}: get_config raised {type(e).__name__}: {first_line(e)}", 2)
        if isinstance(e, (KeyError, AttributeError)):
            if "get_config" in str(e):
                fail(f"--config {config_arg}: the file defines no get_config(arg=None)", 2)
            fail(_unknown_override(argv, e), 2)
        if isinstance(e, (ValueError, TypeError)):
            fail(f"{config_arg}: {e}", 2)
        raise
    if len(rest) > 1:
        fail(f"unexpected arguments {rest[1:]}: options are --name=value (see --help)", 2)
    return rest


def _machine_problem(error: BaseException | None) -> str | None:
    """One line for an error of the machine (disk full, permissions) anywhere in the chain,
    whether an OSError or a library's error that carries the OS error code in its text."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = error.errno if isinstance(error, OSError) else None
        if code is None:
            found = re.search(r"os_error_code='(\d+)'|\[Errno (\d+)\]", str(error))
            code = int(found.group(1) or found.group(2)) if found else None
        if code in _OS_ERRORS:
            filename = getattr(error, "filename", None)
            if filename is None:
                paths = re.findall(r'"(/[^"]+)"', str(error))
                filename = paths[-1] if paths else None
            where = f" writing {filename}" if filename else ""
            return f"{_OS_ERRORS[code]}{where}: {_WHAT_TO_DO.get(code, 'fix it and rerun')}"
        error = error.__cause__ or error.__context__
    return None


def quiet_background_errors() -> None:
    """Errors of library threads (e.g. async checkpoint writers after a failed save) become one
    log line per distinct message (a failed save repeats the same one dozens of times); the
    error that matters reaches `main` through the main thread."""
    seen: set[str] = set()

    def once(message: str) -> None:
        if message not in seen:
            seen.add(message)
            logging.error("%s", message)

    threading.excepthook = lambda args: once(
        f"in thread {getattr(args.thread, 'name', '?')}: {first_line(args.exc_value)}"
    )

    def asyncio_once(record: std_logging.LogRecord) -> bool:
        """asyncio's "Task exception was never retrieved" (the library's writer tasks after a
        failed save), with its traceback, as one line."""
        if record.exc_info and record.exc_info[1] is not None:
            once(f"{record.getMessage().splitlines()[0]}: {first_line(record.exc_info[1])}")
            return False
        return True

    std_logging.getLogger("asyncio").addFilter(asyncio_once)
    sys.unraisablehook = lambda unraisable: once(f"ignored: {first_line(unraisable.exc_value)}")


def prepare_workdir(path: str) -> str:
    """The absolute workdir (a `gs://` URI as given), created and checked writable before
    anything runs."""
    workdir = fileio.expand(path)
    if fileio.isfile(workdir):
        raise UserError(f"--workdir {workdir} exists and is not a directory")
    fileio.makedirs(workdir)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    fileio.write_bytes(probe, b"")
    fileio.remove(probe)
    return workdir


def _remove_stale(path: str) -> None:
    """`--remove_stale`: deletes the stale folders of the workdir, one line each."""
    workdir = fileio.expand(path)
    if not fileio.isdir(workdir):
        fail(f"--workdir {workdir}: no such folder", 2)
    try:
        lines = pipeline.remove_stale(workdir)
    except UserError as e:
        fail(str(e), 1)
    print("\n".join(lines) if lines else f"no stale folders in {workdir}", flush=True)


def main(argv: list[str]) -> None:
    del argv
    progress.quiet_libraries()
    if not _WORKDIR.value:
        fail("--workdir: give the folder for the run's outputs", 2)
    if _REMOVE_STALE.value:
        _remove_stale(_WORKDIR.value)
        return
    if not flags.FLAGS["config"].present:
        fail("--config: give a config file, e.g. --config configs/quickstart.py", 2)
    progress.log_above_bars()
    quiet_background_errors()
    distributed.maybe_initialize(
        _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    )
    cache = compile_cache.enable(_COMPILATION_CACHE.value)
    logging.info("compilation cache: %s", cache or "off")
    try:
        config = _CONFIG.value
    except (ValueError, TypeError, OSError) as e:
        fail(f"--config {flags.FLAGS['config'].config_filename}: {e}", 2)
    if not isinstance(config, ml_collections.ConfigDict):
        fail(
            f"--config {flags.FLAGS['config'].config_filename}: get_config() returned a "
            f"{type(config).__name__}, expected an ml_collections.ConfigDict (start from "
            f"config_lib.base_config(), as configs/quickstart.py does)",
            2,
        )
    try:
        pipeline.validate(config, config_lib.Topology(jax.device_count(), jax.process_count()))
    except config_lib.ConfigError as e:
        fail(str(e), 2)
    try:
        workdir = prepare_workdir(_WORKDIR.value)
        logging.info("devices: %s; workdir %s", jax.devices(), workdir)
        pipeline.run_stages(config, workdir)
    except Preempted as e:
        logging.warning("%s", e)
        sys.exit(e.exit_code)  # 143 after SIGTERM, 130 after Ctrl-C
    except KeyboardInterrupt:
        fail("stopped by a second Ctrl-C, without saving; rerun the same command to resume", 130)
    except config_lib.ConfigError as e:  # found once the data's size is known
        fail(str(e), 2)
    except (NonFiniteLoss, UserError) as e:
        fail(str(e), 1)
    except Exception as e:
        problem = _machine_problem(e)
        if problem is None:
            raise  # a bug of ours: the traceback is for us
        print(f"pnoc_jax: error: {problem}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # now: background checkpoint writers would only add noise at shutdown


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
