"""The repository's modules that are not installed packages, imported by their location, so that the
GPU tools (run as files from ``tools/gpu/``) change no ``sys.path``: the ``benchmarks`` package
(registered by ``benchmarks/bootstrap.py``), a test module (``tests/test_parity.py``),
``train_net.py``. Everything else they import resolves as it would anyway (under the GPU session's
PYTHONPATH, its copy of the plugin)."""

import importlib.util
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_file(relative_path: str, name: str):
    """``REPO_ROOT/relative_path`` as the module ``name``, registered in ``sys.modules`` (once)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def benchmarks():
    """The ``benchmarks`` package (the benchmark harness and scripts)."""
    return load_file("benchmarks/bootstrap.py", "benchmarks_bootstrap").register()


def test_module(name: str, helpers=()):
    """``tests/<name>.py`` as the module ``name``, after the helper modules beside it that it
    imports (``helpers``, loaded the same way)."""
    for helper in helpers:
        load_file(os.path.join("tests", helper + ".py"), helper)
    return load_file(os.path.join("tests", name + ".py"), name)
