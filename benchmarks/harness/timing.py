"""Timing: wall-clock times around synchronised calls, CUDA events around back-to-back calls, and
their summaries (median, quartiles, min/max; per image for inference), pooled over rounds."""

import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch


def synchronize(device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: Sequence[float], kind: str, batch: int) -> Dict[str, object]:
    """Median, quartiles, min and max of ``times`` (s); for inference also per image (divided by
    ``batch``)."""
    times = list(times)
    if len(times) > 1:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1, _, q3 = times * 3
    summary = {
        "times_s": times,
        "median_s": statistics.median(times),
        "q1_s": q1,
        "q3_s": q3,
        "min_s": min(times),
        "max_s": max(times),
    }
    if kind == "inference":
        for key in ("median_s", "q1_s", "q3_s", "min_s", "max_s"):
            summary[key + "_per_image"] = summary[key] / batch
    return summary


def pool_rounds(results: List[Dict[str, object]], case) -> Dict[str, object]:
    """One result from the rounds of a case: the first round's, with every round's timed repetitions
    pooled (and each round's median kept); the first error if a round failed."""
    for result in results:
        if "error" in result:
            return result
    merged = dict(results[0])
    pooled = [t for r in results for t in r["times_s"]]
    merged.update(summarize(pooled, case["kind"], case["batch"]))
    merged["round_medians_s"] = [r["median_s"] for r in results]
    if all("cpu_times_s" in r for r in results):
        merged["cpu_times_s"] = [t for r in results for t in r["cpu_times_s"]]
        merged["cpu_median_s"] = statistics.median(merged["cpu_times_s"])
    return merged


def median_time(
    run: Callable[[], object],
    device,
    repeats: int,
    warmup: int = 2,
    before: Callable[[], object] = lambda: None,
) -> float:
    """Median wall time (s) of ``run()`` over ``repeats`` calls, after ``warmup`` calls, the device
    synchronised before and after each; ``before()`` runs ahead of every call, outside the
    timing."""
    for _ in range(warmup):
        before()
        run()
    times = []
    for _ in range(repeats):
        before()
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    before()
    return statistics.median(times)


def cuda_event_times(
    run: Callable[[], object],
    repeats: int,
    inner: int,
    warmup: int = 3,
    before: Callable[[], object] = lambda: None,
) -> List[float]:
    """Per-call times (s) from CUDA events around ``inner`` back-to-back ``before(); run()`` calls,
    for each of ``repeats`` groups, after ``warmup`` calls."""
    for _ in range(warmup):
        before()
        run()
    torch.cuda.synchronize()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(repeats)
    ]
    for start, end in events:
        start.record()
        for _ in range(inner):
            before()
            run()
        end.record()
    torch.cuda.synchronize()
    before()
    return [start.elapsed_time(end) / 1e3 / inner for start, end in events]
