"""Step 2 of the GPU session: does the stack import, from the carried wheels, under this interpreter?

Imports every module that the plugin, ``train_net.py``, ``benchmarks/bench_retinanet.py`` / ``peers.py`` and the
tests the session runs (``tests/test_parity.py``, the op tests) need, records each distribution's version and the
folder it was imported from, and exits 1 naming what failed. ``retinanet_plugin._C`` is not required here (the
build is the next step): whether it loads is reported only.

    python tools/gpu/check_stack.py [--json PATH] [--site DIR]

``--site``: the folder the wheels were installed into; every bundled distribution must be imported from it
(otherwise an older copy elsewhere on the path would shadow the tested version).
"""
import argparse
import importlib
import importlib.metadata as metadata
import json
import os
import sys
import traceback

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WHEEL_LIST = os.path.join(REPO_ROOT, "tools", "gpu", "wheels.txt")

# module -> why it is needed (a failure names it)
MODULES = {
    "torch": "everything",
    "torchvision": "tests, benchmarks (peers), plugin box ops",
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
    "peers": "benchmarks/peers.py",
    "bench_retinanet": "benchmarks/bench_retinanet.py",
    "bench_focal_loss": "benchmarks/bench_focal_loss.py",
}


def bundled_distributions():
    names = []
    with open(WHEEL_LIST) as f:
        for line in f:
            fields = line.split("#", 1)[0].split()
            if fields:
                names.append(fields[0])
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--site", help="folder the carried wheels were installed into")
    args = parser.parse_args()
    for sub in ("", "benchmarks", "tests"):
        path = os.path.join(REPO_ROOT, sub)
        if path not in sys.path:
            sys.path.append(path)

    report = {"python": sys.version.split()[0], "executable": sys.executable, "modules": {}, "failed": {}}
    for module, why in MODULES.items():
        try:
            mod = importlib.import_module(module)
            report["modules"][module] = getattr(mod, "__file__", None)
        except Exception as e:  # noqa: BLE001  (any import failure is the finding)
            report["failed"][module] = f"{type(e).__name__}: {e} (needed by {why})"
            traceback.print_exc()
    try:
        from detectron2.evaluation import COCOEvaluator  # noqa: F401
    except Exception as e:  # noqa: BLE001
        report["failed"]["detectron2.evaluation.COCOEvaluator"] = f"{type(e).__name__}: {e}"

    versions, wrong_place = {}, {}
    site = os.path.realpath(args.site) if args.site else None
    for name in bundled_distributions() + ["torch", "torchvision", "numpy", "opencv-python-headless", "matplotlib"]:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
            continue
        versions[name] = dist.version
        location = os.path.realpath(str(dist.locate_file("")))
        if site and name in bundled_distributions() and not location.startswith(site):
            wrong_place[name] = location
    report["versions"] = versions
    if wrong_place:
        report["failed"]["shadowed"] = f"bundled distributions found outside {site}: {wrong_place}"
    for name in bundled_distributions():
        if versions.get(name) is None:
            report["failed"].setdefault("not_installed", []).append(name)

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
