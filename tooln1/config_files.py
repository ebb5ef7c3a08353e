"""Config files are Python files loaded by path (ml-collections style), not importable modules."""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType


def load_file(path: str) -> ModuleType:
    """Execute the Python file at ``path`` as a fresh module (configs/*.py, and their shared common.py)."""
    name = "tooln1_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sibling(config_file: str, name: str = "common.py") -> ModuleType:
    """The file ``name`` next to ``config_file`` (a config's ``__file__``), loaded with `load_file`."""
    return load_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), name))
