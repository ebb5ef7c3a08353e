"""Config files: Python files with a ``get_config(spec)`` (ml-collections style), loaded by path, and
the ``--config`` flag that names one."""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import ml_collections

CONFIG_FLAG_HELP = "ml-collections config file (configs/*.py[:spec])"


def load_file(path: str) -> ModuleType:
    """Execute the Python file at ``path`` as a fresh module."""
    name = "tooln1_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """What ``--config FILE[:SPEC]`` names: ``FILE``'s ``get_config(SPEC)`` (``get_config()`` without one)."""
    path, sep, arg = spec.partition(":")
    module = load_file(path)
    return module.get_config(arg) if sep else module.get_config()


def define_config_flag() -> None:
    """The absl ``--config`` flag (locked: ``--config.KEY`` overrides only keys that exist), once per
    process: tooln1-train and tooln1-fit may both run in one."""
    from absl import flags
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, CONFIG_FLAG_HELP, lock_config=True)
