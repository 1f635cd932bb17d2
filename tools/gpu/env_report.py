"""Step 1 of the GPU session: what machine is this? GPU, driver, torch and CUDA versions, the CUDA
tools.

Prints a JSON report (also written to ``--json``): Python and torch versions, torch's CUDA, the
visible GPU (name, compute capability, multiprocessors, memory, memory clock and bus width where
torch reports them), ``nvidia-smi``'s view (name, driver, memory, compute capability, maximum
clocks), ``nvcc``'s release and the toolkit folder it belongs to, whether ``compute-sanitizer``,
``cuobjdump`` and ninja are there, and the ``TORCH_CUDA_ARCH_LIST`` value for this GPU only
(``arch_list``). Never fails for a missing GPU or tool: it says so.
"""

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys


def command_output(command, timeout=30):
    """(stdout+stderr stripped, return code), or (error text, None) when it cannot run."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        return (proc.stdout + proc.stderr).strip(), proc.returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}", None


def find_tool(name, cuda_home=None):
    """``name`` on PATH, else in ``cuda_home``/bin, the usual toolkit folders, or (cuobjdump)
    Triton's bundled copy."""
    path = shutil.which(name)
    if path:
        return path
    folders = (
        ([cuda_home] if cuda_home else [])
        + ["/usr/local/cuda"]
        + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    )
    candidates = [os.path.join(folder, "bin", name) for folder in folders]
    try:
        import triton

        candidates.append(
            os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        )
    except Exception:  # noqa: BLE001  (no Triton: one place fewer to look)
        pass
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _has_cudart(home):
    return any(
        glob.glob(os.path.join(home, lib, "libcudart.so*"))
        for lib in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"))
    )


def cuda_home_for(nvcc):
    """The CUDA toolkit folder: $CUDA_HOME, the folder above the real ``nvcc``'s bin/,
    /usr/local/cuda or the newest /usr/local/cuda-*, whichever first holds both bin/nvcc and the
    CUDA runtime library (``nvcc`` on PATH can be a wrapper script elsewhere). None when there is
    none: setup.py then looks for itself."""
    candidates = [os.environ.get("CUDA_HOME")]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and _has_cudart(home):
            return os.path.realpath(home)
    return None


def torch_report() -> dict:
    """torch, its CUDA, the first GPU's properties (a broken torch is reported, not raised)."""
    report = {}
    try:
        import torch

        report["torch"] = torch.__version__
        report["torch_cuda"] = torch.version.cuda
        report["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            report["device_count"] = torch.cuda.device_count()
            report["gpu"] = {
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "memory_bytes": props.total_memory,
                "memory_clock_khz": getattr(props, "memory_clock_rate", None),
                "memory_bus_width_bits": getattr(props, "memory_bus_width", None),
                "l2_cache_bytes": getattr(props, "L2_cache_size", None),
            }
            report["arch_list"] = f"{props.major}.{props.minor}"
        from torch.utils import cpp_extension

        report["ninja"] = cpp_extension.is_ninja_available()
    except Exception as e:  # noqa: BLE001  (a broken torch is the finding)
        report["torch_error"] = f"{type(e).__name__}: {e}"
    return report


def smi_report(report: dict) -> None:
    """nvidia-smi's view of the GPU (and the compute capability, when torch gave none)."""
    smi = shutil.which("nvidia-smi")
    report["nvidia_smi"] = smi
    if not smi:
        return
    fields = "name,driver_version,memory.total,compute_cap,clocks.max.sm,clocks.max.memory"
    text, code = command_output([smi, f"--query-gpu={fields}", "--format=csv,noheader"])
    report["nvidia_smi_query"] = text
    if code == 0 and text:
        values = [v.strip() for v in text.splitlines()[0].split(",")]
        report["smi"] = dict(zip(fields.split(","), values))
        compute_cap = report["smi"].get("compute_cap", "")
        if "arch_list" not in report and re.fullmatch(r"\d+\.\d+", compute_cap):
            report["arch_list"] = compute_cap


def toolkit_report(report: dict) -> None:
    """nvcc, the toolkit folder, compute-sanitizer and cuobjdump, with their versions."""
    nvcc = shutil.which("nvcc") or find_tool("nvcc", cuda_home_for(None))
    report["nvcc"] = nvcc
    if nvcc:
        text, _ = command_output([nvcc, "--version"])
        match = re.search(r"release (\d+\.\d+)", text)
        report["nvcc_release"] = match.group(1) if match else text[-200:]
    report["cuda_home"] = cuda_home_for(nvcc)
    for tool in ("compute-sanitizer", "cuobjdump"):
        path = find_tool(tool, report["cuda_home"])
        report[tool.replace("-", "_")] = path
        if path:
            text, _ = command_output([path, "--version"])
            report[tool.replace("-", "_") + "_version"] = text.splitlines()[-1] if text else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    report = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    report.update(torch_report())
    smi_report(report)
    toolkit_report(report)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
