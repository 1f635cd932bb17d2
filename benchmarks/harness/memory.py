"""Peak memory of a measured stretch above a baseline: CUDA allocator statistics, or the RSS.

CUDA: ``torch.cuda.max_memory_allocated()`` (peak statistics reset after the baseline) minus
``memory_allocated()`` at the baseline. CPU: the peak resident set size ``VmHWM`` (reset through
``/proc/self/clear_refs``) minus ``VmRSS`` at the baseline (taken after ``gc`` and ``malloc_trim``).
On the CPU this is only meaningful in a process of its own started with ``CPU_MEMORY_ENV`` (see
``children.run_child``): glibc's mmap threshold fixed at 128 KiB, so that every allocation of 128
KiB or more is its own mapping, returned to the OS when freed, and RSS follows the memory held by
live tensors instead of what malloc keeps for reuse (its default, adaptive threshold keeps freed
blocks of up to 32 MiB).
"""

import contextlib
import ctypes
import gc
from typing import Callable, Dict

import torch

CPU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status: peak RSS needs Linux")


class MemoryMeter:
    """Peak memory of a measured stretch above a baseline, on ``device``."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.baseline = 0

    def settle(self) -> None:
        """Release what can be released, so the baseline is what the process really holds."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        else:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)

    def take_baseline(self) -> None:
        self.settle()
        if self.device.type == "cuda":
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline = status_kib("VmRSS") * 1024

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := current VmRSS

    def peak(self) -> Dict[str, int]:
        """``peak_bytes``, ``baseline_bytes``, ``peak_increase_bytes`` (and on CUDA
        ``peak_reserved_bytes``) since the last ``reset_peak``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated(self.device)
            return {
                "peak_bytes": peak,
                "baseline_bytes": self.baseline,
                "peak_increase_bytes": peak - self.baseline,
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
            }
        peak = status_kib("VmHWM") * 1024
        return {
            "peak_bytes": peak,
            "baseline_bytes": self.baseline,
            "peak_increase_bytes": peak - self.baseline,
        }

    def peak_increase(self, run: Callable[[], object]) -> int:
        """Bytes above the baseline at the peak of one ``run()`` (baseline taken just before it)."""
        self.take_baseline()
        self.reset_peak()
        run()
        return self.peak()["peak_increase_bytes"]
