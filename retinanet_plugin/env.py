"""What the plugin runs on, and whether it can: ``python -m retinanet_plugin.env``.

In the spirit of Detectron2's ``collect_env``: Python, the CPU, torch and its CUDA, the GPUs, the
plugin's compiled op (loaded? with CUDA kernels? which CPU kernels?), Detectron2 and the packages
the plugin uses. For users who bring their own environment (conda, an existing Detectron2 install, a
cluster module): it exits with status 1 and says what to do when something the plugin needs is
missing, so it can gate a job script.
"""

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

SUPPORTED_PYTHONS = ((3, 10), (3, 11), (3, 12), (3, 13))
# Import name -> distribution names to ask for a version (the first one installed wins).
PACKAGES = {
    "detectron2": ("detectron2", "sal-detectron2"),
    "fvcore": ("fvcore",),
    "iopath": ("iopath",),
    "pycocotools": ("pycocotools",),
    "faster_coco_eval": ("faster-coco-eval",),
    "numpy": ("numpy",),
    "cv2": ("opencv-python-headless", "opencv-python"),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}
REQUIRED = ("detectron2", "fvcore", "iopath", "pycocotools", "numpy")


def cpu_name() -> str:
    """The "Model name" line of ``lscpu`` (``/proc/cpuinfo`` when lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions that oneDNN's convolutions use (AMX-BF16 or
    AVX512-BF16, from ``/proc/cpuinfo``'s flags); False where that file is missing."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def _package_version(import_name: str) -> Tuple[Optional[str], Optional[str]]:
    """(version, problem): the installed version, or why the package cannot be imported."""
    try:
        module = importlib.import_module(import_name)
    except Exception as e:  # any failure to import is what the report is for
        return None, f"{type(e).__name__}: {e}"
    for distribution in PACKAGES[import_name]:
        try:
            return importlib.metadata.version(distribution), None
        except importlib.metadata.PackageNotFoundError:
            continue
    return getattr(module, "__version__", "unknown"), None


def _torch_report() -> Dict[str, object]:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "CUDA available": torch.cuda.is_available(),
        "GPUs": gpus or "none",
        "CUDA_HOME": os.environ.get("CUDA_HOME", "unset"),
        "threads": torch.get_num_threads(),
    }


def _op_report() -> Dict[str, object]:
    from .layers import compiled_ops

    if not compiled_ops.op_available():
        return {"op": f"NOT LOADED ({compiled_ops.LOAD_ERROR})"}
    return {
        "op": "loaded (" + compiled_ops.library_path() + ")",
        "op CUDA kernels": compiled_ops.built_with_cuda(),
        "op CPU kernels": compiled_ops.cpu_kernel_capability(),
    }


def collect() -> Tuple[Dict[str, object], List[str]]:
    """(report, problems): what is installed, and what keeps the plugin from working (empty when all
    is well)."""
    problems: List[str] = []
    report: Dict[str, object] = {
        "Python": platform.python_version() + " (" + sys.executable + ")",
        "platform": platform.platform(),
        "CPU": cpu_name(),
        "CPU bfloat16 instructions": "yes" if cpu_has_native_bfloat16() else "no",
    }
    if sys.version_info[:2] not in SUPPORTED_PYTHONS:
        problems.append(
            f"Python {platform.python_version()} is not supported: use one of "
            + ", ".join(f"{major}.{minor}" for major, minor in SUPPORTED_PYTHONS)
        )
    try:
        report.update(_torch_report())
    except ImportError as e:
        report["torch"] = f"NOT INSTALLED ({e})"
        problems.append("torch is not installed: install torch and torchvision first (pytorch.org)")
        return report, problems
    for name in PACKAGES:
        version, problem = _package_version(name)
        report[name] = version if problem is None else f"NOT IMPORTABLE ({problem})"
        if problem is not None and name in REQUIRED:
            problems.append(
                f"{name} cannot be imported ({problem}): install it (see the README's "
                "'Your own environment')"
            )
    if not problems:
        report.update(_op_report())
        if str(report["op"]).startswith("NOT LOADED"):
            problems.append(
                "retinanet_plugin._C is not loaded: run `pip install --no-build-isolation .` in "
                "the plugin's folder with this Python (or set FOCAL_LOSS_IMPL to 'reference')"
            )
    return report, problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    report, problems = collect()
    if args.json:
        print(json.dumps({"report": report, "problems": problems}, indent=1, default=str))
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
        for problem in problems:
            print("problem: " + problem)
        print("retinanet_plugin: " + ("ready" if not problems else "NOT READY"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
