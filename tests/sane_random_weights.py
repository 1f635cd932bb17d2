"""Random but sane weights for RetinaNet models in tests (parity, checkpoint loading, export), and
the tests' way to the benchmark harness.

``make_weights_sane`` lives in ``benchmarks/harness/calibration.py``, the one home of the
random-weight calibration that the benchmarks, these tests and ``tools/gpu/parity.py`` share.
Importing this module also makes the ``benchmarks`` package importable however pytest was started
(``python -m pytest`` from the repository root puts the root on ``sys.path``, the ``pytest`` command
does not): the package is registered by its location through ``benchmarks/bootstrap.py``, as the
benchmark scripts and the GPU tools do, and ``sys.path`` is left alone.
"""

import importlib.util
import os

BOOTSTRAP = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bootstrap.py"
)


def register_benchmarks():
    """The ``benchmarks`` package, registered from its folder (``benchmarks/bootstrap.py``)."""
    spec = importlib.util.spec_from_file_location("benchmarks_bootstrap", BOOTSTRAP)
    bootstrap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bootstrap)
    return bootstrap.register()


register_benchmarks()

from benchmarks.harness.calibration import make_weights_sane  # noqa: E402

__all__ = ["make_weights_sane", "register_benchmarks"]
