"""``tooln1-train``: a config file plus ``--config.KEY=VALUE`` overrides, run by `tooln1.training.loop.train`.

    tooln1-train --config configs/quickstart.py
    tooln1-train --config configs/paper.py:model=qwen2.5-7b,mesh=gpu8,recipe=rl --config.grpo.batch_size=512
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from tooln1.config import ConfigError, check_override_keys, load_config
from tooln1.config.files import define_config_flag
from tooln1.config.reference import usage, wants_help
from tooln1.platform.host_memory import keep_freed_memory

DEBUG_ENV = "TOOLN1_DEBUG"  # set to 1 for the full traceback instead of the one-line error
SUMMARY = ("Train a tool-calling policy as the config says: SFT and/or GRPO, greedy validation, HF export "
           f"(docs/training.md). A bad config stops it before anything is built, in one line ({DEBUG_ENV}=1 for "
           "the traceback).")


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _fail(msg: str) -> None:
    hint = "" if _debug() else f" ({DEBUG_ENV}=1 for the traceback)"
    print(f"tooln1-train: {msg}{hint}", file=sys.stderr)
    raise SystemExit(2)


def _precheck(argv: Sequence[str]) -> None:
    """One-line errors for what absl/ml-collections would report as deep tracebacks: a missing config
    file, a ``get_config`` that rejects its spec, a misspelled ``--config.KEY`` (closest keys named)."""
    spec, overrides = None, []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif arg.startswith("--config="):
            spec = arg[len("--config="):]
        elif arg.startswith(("--config.", "--noconfig.")):
            overrides.append(arg.split(".", 1)[1].split("=", 1)[0])
    if spec is None:
        return  # _absl_main says that --config is required
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        _fail(f"config file {path} does not exist")
    try:
        check_override_keys(load_config(spec), overrides)
    except Exception as e:  # the config file's own error, named with the file
        if _debug():
            raise
        _fail(f"{spec}: {e}")


def _absl_main(argv: Sequence[str]) -> None:
    from absl import flags

    from tooln1.checkpoints.hf_import import CheckpointError
    from tooln1.checkpoints.train_state import CheckpointMismatch, NoUsableCheckpoint

    if len(argv) > 1:
        raise SystemExit(f"tooln1-train: unexpected arguments {argv[1:]}; use --config FILE --config.key=value")
    cfg = flags.FLAGS.config
    if cfg is None:
        raise SystemExit("tooln1-train: --config is required, e.g. --config configs/quickstart.py")
    try:
        # imported here: transformers must load after main() silences its advisory, and --help stays fast
        from tooln1.training.loop import train

        train(cfg)
    except (ConfigError, CheckpointError, CheckpointMismatch, NoUsableCheckpoint) as e:
        if _debug():
            raise
        _fail(str(e))


def main(argv: Sequence[str] | None = None) -> None:
    """``tooln1-train --config configs/<file>.py[:spec] --config.key=value``."""
    args = list(sys.argv[1:] if argv is None else argv[1:])
    if wants_help(args):
        print(usage("tooln1-train", SUMMARY, (), with_keys=True))
        raise SystemExit(0)
    keep_freed_memory()  # before any thread allocates (XLA:CPU's update temporaries: tooln1.platform.host_memory)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # no "PyTorch was not found" (JAX here)
    from absl import app

    _precheck(args)
    define_config_flag()
    logging.basicConfig(level=logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    except ImportError:
        pass
    app.run(_absl_main, argv=list(argv) if argv is not None else None)


if __name__ == "__main__":
    main()
