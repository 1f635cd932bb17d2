"""Step 2 of the GPU session: does the stack import, from the carried wheels, under this Python?

Imports every module that the plugin, ``train_net.py``, the benchmarks (``benchmarks/bench_*.py``,
``benchmarks/harness/``) and the tests the session runs (``tests/test_parity.py``, the op tests)
need, records each distribution's version and the folder it was imported from, and exits 1 naming
what failed. ``retinanet_plugin._C`` is not required here (the build is the next step): whether it
loads is reported only.

    python tools/gpu/check_stack.py [--json PATH] [--site DIR]

``--site``: the folder the wheels were installed into; every bundled distribution must be imported
from it (otherwise an older copy elsewhere on the path would shadow the tested version). The
repository's own modules (``train_net.py``, the ``benchmarks`` package) are loaded by their location
(``repo_modules.py``), so this check needs no change of ``sys.path``.
"""

import argparse
import importlib
import importlib.metadata as metadata
import json
import os
import sys
import traceback

import repo_modules  # beside this file
from session_steps import bundled_distributions  # the one reader of wheels.txt

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# module -> why it is needed (a failure names it)
MODULES = {
    "torch": "everything",
    "torchvision": "tests, benchmarks (harness.peers), plugin box ops",
    "numpy": "everything",
    "cv2": "detectron2.data transforms",
    "PIL": "detectron2.data",
    "yaml": "configs",
    "matplotlib": "detectron2.utils.visualizer, benchmark charts",
    "pkg_resources": "detectron2.model_zoo",
    "termcolor": "detectron2.utils.logger",
    "tabulate": "detectron2 tables",
    "cloudpickle": "detectron2.utils.serialize",
    "portalocker": "iopath file locks",
    "yacs.config": "detectron2.config",
    "iopath.common.file_io": "detectron2.utils.file_io",
    "omegaconf": "detectron2.config.lazy",
    "antlr4": "omegaconf's grammar",
    "fvcore.nn": "sigmoid_focal_loss_jit (Detectron2's RetinaNet, op tests, benchmark)",
    "pycocotools.coco": "COCOEvaluator",
    "pycocotools._mask": "COCOEvaluator (compiled against numpy 2)",
    "detectron2.config": "configs",
    "detectron2.model_zoo": "tests/test_parity.py",
    "detectron2.modeling": "both models",
    "detectron2.engine": "trainer",
    "detectron2.evaluation": "COCOEvaluator",
    "retinanet_plugin": "the plugin (Python part)",
    "retinanet_plugin.modeling": "the plugin's model",
    "retinanet_plugin.engine": "the plugin's trainer",
    "train_net": "train_net.py",
    "benchmarks.harness.peers": "benchmarks/harness/peers.py",
    "benchmarks.bench_retinanet": "benchmarks/bench_retinanet.py",
    "benchmarks.bench_focal_loss": "benchmarks/bench_focal_loss.py",
}
# modules of the repository that are files, not packages: loaded by their location
REPO_FILES = {"train_net": "train_net.py"}
UNBUNDLED = ["torch", "torchvision", "numpy", "opencv-python-headless", "matplotlib"]


def import_module(name):
    if name in REPO_FILES:
        return repo_modules.load_file(REPO_FILES[name], name)
    if name.split(".")[0] == "benchmarks":
        repo_modules.benchmarks()
    return importlib.import_module(name)


def check_imports(report):
    """Imports every module of MODULES; a failure is recorded with why the module is needed."""
    for module, why in MODULES.items():
        try:
            mod = import_module(module)
            report["modules"][module] = getattr(mod, "__file__", None)
        except Exception as e:  # noqa: BLE001  (any import failure is the finding)
            report["failed"][module] = f"{type(e).__name__}: {e} (needed by {why})"
            traceback.print_exc()
    try:
        from detectron2.evaluation import COCOEvaluator  # noqa: F401
    except Exception as e:  # noqa: BLE001
        report["failed"]["detectron2.evaluation.COCOEvaluator"] = f"{type(e).__name__}: {e}"


def check_versions(report, site):
    """Each distribution's version; the bundled ones must be installed, and under ``site``."""
    versions, wrong_place = {}, {}
    bundled = bundled_distributions()
    for name in bundled + UNBUNDLED:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
            continue
        versions[name] = dist.version
        location = os.path.realpath(str(dist.locate_file("")))
        if site and name in bundled and not location.startswith(site):
            wrong_place[name] = location
    report["versions"] = versions
    if wrong_place:
        report["failed"]["shadowed"] = f"bundled distributions found outside {site}: {wrong_place}"
    for name in bundled:
        if versions.get(name) is None:
            report["failed"].setdefault("not_installed", []).append(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--site", help="folder the carried wheels were installed into")
    args = parser.parse_args()
    report = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "modules": {},
        "failed": {},
    }
    check_imports(report)
    check_versions(report, os.path.realpath(args.site) if args.site else None)
    try:
        import retinanet_plugin.layers as layers

        report["focal_loss_op_available"] = layers.focal_loss_op_available()
    except Exception as e:  # noqa: BLE001
        report["focal_loss_op_available"] = f"{type(e).__name__}: {e}"
    report["ok"] = not report["failed"]
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
