"""Lets a benchmark script run as a file as well as a module, without changing ``sys.path``.

``python -m benchmarks.bench_retinanet`` (from the repository root) imports the script as part of
the package ``benchmarks``. ``python benchmarks/bench_retinanet.py`` runs it as a file: the script's
folder is first on ``sys.path`` and the repository root is not, so ``benchmarks`` cannot be
imported. A script therefore starts with

    if not __package__:  # run as a file: see benchmarks/bootstrap.py
        import bootstrap  # noqa: F401  (beside the script)

and this module registers its folder as the package ``benchmarks`` (``register``), so that the
script's ``from benchmarks.harness import ...`` works either way. ``sys.path`` is left alone: every
other import resolves as it would anyway (under the GPU session's PYTHONPATH, its copy of
``retinanet_plugin`` comes first). ``tools/gpu/repo_modules.py`` loads this file by its path for the
same purpose.
"""

import importlib.util
import os
import sys

FOLDER = os.path.dirname(os.path.abspath(__file__))


def register(name: str = "benchmarks"):
    """The package ``name`` made of this folder, registered in ``sys.modules`` (once)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(FOLDER, "__init__.py"), submodule_search_locations=[FOLDER]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return package


register()
