"""The repository's scripts (tools/*.py) loaded as modules, for tests that call their functions
in-process."""

import importlib.util
import itertools
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_loads = itertools.count()


def load_script(relative_path: str):
    """A fresh module of REPO/relative_path (e.g. "tools/predict.py"), under a name of its own."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(f"{path.stem}_{next(_loads)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
