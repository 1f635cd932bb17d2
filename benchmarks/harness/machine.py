"""What a benchmark ran on: the machine, its software, the checkout, the CUDA device's bandwidth.

The CPU's name (``cpu_name``) comes from :mod:`retinanet_plugin.env`, the one place it is read.
"""

import contextlib
import datetime
import os
import platform
import statistics
import subprocess
from typing import Dict, Optional

import torch

from benchmarks.harness import REPO_ROOT
from retinanet_plugin.env import cpu_name  # noqa: F401  (re-exported: the benchmarks' machine facts)

# Device peak memory bandwidth (bytes/s) by name, when the driver does not report the memory clock.
KNOWN_PEAK_BANDWIDTH = {
    "H100 80GB HBM3": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H200": 4.8e12,
    "A100-SXM4-80GB": 2.039e12,
}


def meminfo_bytes(field: str) -> Optional[int]:
    """A ``/proc/meminfo`` field in bytes (``MemTotal``), or None."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    return None


def source_version() -> Dict[str, object]:
    """The checkout's commit, and its files changed since (read-only git commands; empty outside a
    checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit.returncode != 0:
        return {}
    changed = [line[3:] for line in status.stdout.splitlines()]
    return {"git_commit": commit.stdout.strip(), "git_changed_files": changed}


def machine_info(device: str) -> Dict[str, object]:
    """The machine, its load, the software versions and the checkout, as the RetinaNet reports hold
    them. On CUDA, ``device_name`` is a placeholder: the children report the device (``cuda_info``),
    so that the parent never creates a CUDA context of its own."""
    import detectron2
    import torchvision

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "memory_total_bytes": meminfo_bytes("MemTotal"),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": getattr(detectron2, "__version__", "unknown"),
    }
    info.update(source_version())
    with contextlib.suppress(Exception):
        from retinanet_plugin.layers.compiled_ops import cpu_kernel_capability

        info["focal_loss_cpu_kernel"] = cpu_kernel_capability()
    info["device_name"] = info["cpu"] if device == "cpu" else "CUDA device"
    return info


def cuda_info() -> Dict[str, object]:
    """The CUDA device and settings of the calling (child) process."""
    props = torch.cuda.get_device_properties(0)
    return {
        "device_name": props.name,
        "device_memory_bytes": props.total_memory,
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
    }


def peak_bandwidth(device_index: int = 0):
    """(bytes/s, how it was found) of the CUDA device's memory: clock x bus width, else a table
    entry."""
    props = torch.cuda.get_device_properties(device_index)
    clock_khz = getattr(props, "memory_clock_rate", 0) or 0
    bus_bits = getattr(props, "memory_bus_width", 0) or 0
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8, "memory clock x bus width (DDR)"
    for name, value in KNOWN_PEAK_BANDWIDTH.items():
        if name in props.name:
            return value, f"table entry for {name}"
    return None, "unknown"


def copy_bandwidth(num_bytes: int = 2 * 2**30, repeats: int = 10) -> float:
    """Bytes/s of a device-to-device copy of ``num_bytes`` (read + write counted), median of
    ``repeats``: what the memory system delivers in practice."""
    src = torch.empty(num_bytes // 4, dtype=torch.float32, device="cuda").fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * num_bytes / statistics.median(times)
