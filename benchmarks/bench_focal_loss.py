"""Benchmark of the compiled sigmoid focal loss op against the composite losses Detectron2 users run.

For RetinaNet's anchor counts (A = 120k anchors for an 800x800 image, 200k for 800x1333) x K = 80 classes and
batches of 2 and 8 images (N = A * batch rows), it times forward + backward (reduction "sum", the way RetinaNet
calls it) and measures the peak extra memory of:

- op:          retinanet_plugin's ``sigmoid_focal_loss(logits, labels)`` (integer labels, no one-hot);
- fvcore_jit:  Detectron2's path: ``valid = labels >= 0``, ``F.one_hot(labels[valid], K + 1)[:, :-1]``,
               ``fvcore.nn.sigmoid_focal_loss_jit(logits[valid], targets, ...)`` (gather and one-hot timed too);
- torchvision: the same with ``torchvision.ops.sigmoid_focal_loss``;
- op_dense:    (``--with-dense``, when ``retinanet_plugin.layers`` has it) the plugin's drop-in for those two,
               ``sigmoid_focal_loss_dense`` on the same gathered one-hot targets.

Labels: ~0.1% positive rows (a random class), ~1% ignored (-1), the rest background (K).

Memory: on CUDA, ``torch.cuda.max_memory_allocated()`` minus what is allocated before the call (logits and
labels); on CPU, each (case, implementation) runs in a child process that reads its peak resident set size
(VmHWM, reset through /proc/self/clear_refs) minus its resident size before the call. Both include the
[N, K] gradient itself, so an ideal fused op shows about 1.0 [N, K] fp32 tensors. On CUDA the op's achieved
bandwidth is also reported against the device peak, counting 3 passes over the logits (read x in the forward,
read x again and write the gradient in the backward) plus the labels, and against the bandwidth of a large
device-to-device copy measured in the same run (what the memory system delivers in practice).

Timing: on the CPU, the median wall time of ``--repeats`` runs; on CUDA, CUDA events around ``--inner`` back-to-back
iterations (so launch gaps and host work overlap as in training), the median over ``--repeats`` such groups.

Usage:
    python benchmarks/bench_focal_loss.py [--device cpu|cuda] [--quick] [--repeats R] [--inner I] [--with-dense]
Writes a JSON file (default benchmarks/results/focal_loss_<device>.json) and prints a table.
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from machine_info import cpu_name  # beside this file

NUM_CLASSES = 80
ANCHORS = {"800x800": 120_000, "800x1333": 200_000}
QUICK_ANCHORS = {"800x800/10": 12_000, "800x1333/10": 20_000}
BATCHES = (2, 8)
QUICK_BATCHES = (2,)
IMPLS = ("op", "fvcore_jit", "torchvision")
DENSE_IMPL = "op_dense"
GAMMA, ALPHA = 2.0, 0.25
# Device peak memory bandwidth (bytes/s) by name, when the driver does not report the memory clock.
KNOWN_PEAK_BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12, "A100-SXM4-80GB": 2.039e12}


def make_inputs(num_rows, device, seed=0):
    """Logits [N, K] fp32 (a leaf that requires grad) and labels [N] int64 with RetinaNet's label mix."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, NUM_CLASSES, generator=gen).mul_(2.0).sub_(4.0)
    u = torch.rand(num_rows, generator=gen)
    labels = torch.full((num_rows,), NUM_CLASSES, dtype=torch.int64)
    positive = u < 0.001
    labels[positive] = torch.randint(0, NUM_CLASSES, (int(positive.sum()),), generator=gen)
    labels[u > 0.99] = -1
    return logits.to(device).requires_grad_(True), labels.to(device)


def make_step(impl):
    """A function (logits, labels) -> None running forward + backward of one implementation."""
    if impl == "op":
        from retinanet_plugin.layers import sigmoid_focal_loss

        def step(logits, labels):
            sigmoid_focal_loss(logits, labels, GAMMA, ALPHA, "sum").backward()

        return step
    if impl == "fvcore_jit":
        from fvcore.nn import sigmoid_focal_loss_jit as loss_fn
    elif impl == "torchvision":
        from torchvision.ops import sigmoid_focal_loss as loss_fn
    elif impl == DENSE_IMPL:
        from retinanet_plugin.layers import sigmoid_focal_loss_dense as loss_fn
    else:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLS + (DENSE_IMPL,)}")

    def step(logits, labels):  # as Detectron2's RetinaNet.losses builds it
        valid = labels >= 0
        targets = F.one_hot(labels[valid], num_classes=NUM_CLASSES + 1)[:, :-1]
        loss_fn(logits[valid], targets.to(logits.dtype), alpha=ALPHA, gamma=GAMMA, reduction="sum").backward()

    return step


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(step, logits, labels, device, repeats, warmup=2):
    """Median wall time (s) of forward + backward over `repeats` runs, after `warmup` runs (JIT profiling)."""
    for _ in range(warmup):
        logits.grad = None
        step(logits, labels)
    times = []
    for _ in range(repeats):
        logits.grad = None
        synchronize(device)
        start = time.perf_counter()
        step(logits, labels)
        synchronize(device)
        times.append(time.perf_counter() - start)
    logits.grad = None
    return statistics.median(times)


def time_step_cuda(step, logits, labels, repeats, inner, warmup=3):
    """Per-iteration times (s) from CUDA events around ``inner`` back-to-back forward + backward runs, for each of
    ``repeats`` groups, after ``warmup`` runs."""
    for _ in range(warmup):
        logits.grad = None
        step(logits, labels)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        for _ in range(inner):
            logits.grad = None
            step(logits, labels)
        end.record()
    torch.cuda.synchronize()
    logits.grad = None
    return [start.elapsed_time(end) / 1e3 / inner for start, end in events]


def copy_bandwidth(num_bytes=2 * 2**30, repeats=10):
    """Bytes/s of a device-to-device copy of ``num_bytes`` (read + write counted), median of ``repeats``."""
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


def cuda_peak_extra_bytes(step, logits, labels):
    logits.grad = None
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(logits, labels)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    logits.grad = None
    return peak


def _read_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_child(impl, num_rows):
    """In a child process: peak RSS increase (bytes) of one forward + backward after one warm-up run."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    step = make_step(impl)
    logits, labels = make_inputs(num_rows, "cpu")
    step(logits, labels)  # warm-up (JIT profiling, lazy initialisation)
    logits.grad = None
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _read_status_kib("VmRSS")
    step(logits, labels)
    peak = _read_status_kib("VmHWM")
    print(json.dumps({"peak_extra_bytes": (peak - before) * 1024}))


def cpu_peak_extra_bytes(impl, num_rows):
    env = dict(os.environ, BENCH_THREADS=str(torch.get_num_threads()))
    # A fixed mmap threshold: every large buffer is mmapped and handed back to the OS when freed, so RSS follows
    # the tensors alive (glibc's adaptive threshold would keep freed buffers of up to 32 MiB in the heap).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", impl, str(num_rows)],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory child for {impl} N={num_rows} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def peak_bandwidth(device_index=0):
    props = torch.cuda.get_device_properties(device_index)
    clock_khz = getattr(props, "memory_clock_rate", 0) or 0
    bus_bits = getattr(props, "memory_bus_width", 0) or 0
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8, "memory clock x bus width (DDR)"
    for name, value in KNOWN_PEAK_BANDWIDTH.items():
        if name in props.name:
            return value, f"table entry for {name}"
    return None, "unknown"


def impls_to_run(with_dense):
    """IMPLS, plus the dense-target op when asked for and built (None and a note otherwise)."""
    if not with_dense:
        return IMPLS, None
    from retinanet_plugin import layers

    if not hasattr(layers, "sigmoid_focal_loss_dense"):
        return IMPLS, "--with-dense: retinanet_plugin.layers has no sigmoid_focal_loss_dense; not timed"
    return IMPLS + (DENSE_IMPL,), None


def run(args):
    device = args.device
    anchors = QUICK_ANCHORS if args.quick else ANCHORS
    batches = tuple(args.batches) if args.batches else (QUICK_BATCHES if args.quick else BATCHES)
    impls, dense_note = impls_to_run(args.with_dense)
    from retinanet_plugin import _C

    info = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_kernel": _C.cpu_kernel_capability(),
        "num_classes": NUM_CLASSES,
        "label_mix": "0.1% positive rows, 1% ignored, rest background",
        "repeats": args.repeats,
        "quick": args.quick,
        "impls": list(impls),
        "memory_method": (
            "torch.cuda.max_memory_allocated() - memory_allocated() before the call"
            if device == "cuda"
            else "child process per case: VmHWM (reset via /proc/self/clear_refs) - VmRSS before the call"
        ),
    }
    if dense_note:
        info["note"] = dense_note
        print(dense_note)
    if not args.memory:
        info["memory_method"] = "not measured (--no-memory)"
    if device == "cuda":
        bandwidth, source = peak_bandwidth()
        info["peak_bandwidth_bytes_per_s"] = bandwidth
        info["peak_bandwidth_source"] = source
        info["copy_bandwidth_bytes_per_s"] = copy_bandwidth()
        info["timing"] = f"CUDA events around {args.inner} iterations, median of {args.repeats} groups"
        info["inner"] = args.inner
    results = []
    for image, num_anchors in anchors.items():
        for batch in batches:
            num_rows = num_anchors * batch
            nk_bytes = num_rows * NUM_CLASSES * 4  # one [N, K] fp32 tensor
            logits, labels = make_inputs(num_rows, device)
            case = {"image": image, "anchors": num_anchors, "batch": batch, "rows": num_rows, "impls": {}}
            for impl in impls:
                step = make_step(impl)
                entry = {}
                if device == "cuda":
                    per_iter = time_step_cuda(step, logits, labels, args.repeats, args.inner)
                    seconds = statistics.median(per_iter)
                    entry.update(min_seconds=min(per_iter), max_seconds=max(per_iter))
                else:
                    seconds = time_step(step, logits, labels, device, args.repeats)
                if not args.memory:
                    peak = None
                elif device == "cuda":
                    peak = cuda_peak_extra_bytes(step, logits, labels)
                else:
                    peak = cpu_peak_extra_bytes(impl, num_rows)
                entry.update(seconds=seconds, peak_extra_bytes=peak,
                             peak_extra_nk_tensors=None if peak is None else peak / nk_bytes)
                if device == "cuda" and impl == "op":
                    moved = 3 * nk_bytes + 2 * num_rows * labels.element_size()
                    entry["bytes_moved"] = moved
                    entry["achieved_bandwidth_bytes_per_s"] = moved / seconds
                    if info.get("peak_bandwidth_bytes_per_s"):
                        entry["bandwidth_fraction_of_peak"] = moved / seconds / info["peak_bandwidth_bytes_per_s"]
                    entry["bandwidth_fraction_of_copy"] = moved / seconds / info["copy_bandwidth_bytes_per_s"]
                case["impls"][impl] = entry
                memory = "memory not measured" if peak is None else f"{peak / 2**20:.0f} MiB"
                print(f"  {image} batch {batch} {impl}: {seconds * 1e3:.2f} ms, {memory}", flush=True)
            op_seconds = case["impls"]["op"]["seconds"]
            for impl in impls:
                case["impls"][impl]["time_ratio_vs_op"] = case["impls"][impl]["seconds"] / op_seconds
            results.append(case)
            del logits, labels
            gc.collect()
    report = {"info": info, "results": results}
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"focal_loss_{device}.json")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, output)  # never a half-written result
    print_table(report)
    print(f"\nwritten to {output}")


def _nk(entry):
    value = entry.get("peak_extra_nk_tensors")
    return float("nan") if value is None else value


def print_table(report):
    info = report["info"]
    dense = DENSE_IMPL in info.get("impls", IMPLS)
    print(f"\nsigmoid focal loss, forward + backward, K = {info['num_classes']}, {info['device_name']}, "
          f"{info['threads']} threads, CPU kernel {info['cpu_kernel']}, median of {info['repeats']}")
    header = (f"{'image':>12} {'batch':>5} {'rows':>9} | {'op ms':>8} {'fvcore ms':>10} {'tv ms':>8} | "
              f"{'fvcore/op':>9} {'tv/op':>6} | {'peak extra, [N,K] fp32 tensors: op':>34} {'fvcore':>7} {'tv':>6}")
    if dense:
        header += f" | {'dense ms':>8} {'fvcore/dense':>12}"
    if info["device"] == "cuda":
        header += f" | {'op GB/s':>8} {'of peak':>7} {'of copy':>7}"
    print(header)
    print("-" * len(header))
    for case in report["results"]:
        op, fv, tv = (case["impls"][k] for k in IMPLS)
        line = (f"{case['image']:>12} {case['batch']:>5} {case['rows']:>9} | {op['seconds'] * 1e3:8.1f} "
                f"{fv['seconds'] * 1e3:10.1f} {tv['seconds'] * 1e3:8.1f} | {fv['time_ratio_vs_op']:9.2f} "
                f"{tv['time_ratio_vs_op']:6.2f} | {_nk(op):34.2f} {_nk(fv):7.2f} {_nk(tv):6.2f}")
        if dense:
            de = case["impls"][DENSE_IMPL]
            line += f" | {de['seconds'] * 1e3:8.1f} {fv['seconds'] / de['seconds']:12.2f}"
        if info["device"] == "cuda":
            fraction = op.get("bandwidth_fraction_of_peak")
            line += (f" | {op['achieved_bandwidth_bytes_per_s'] / 1e9:8.0f} "
                     f"{fraction if fraction is not None else float('nan'):7.2f} {op['bandwidth_fraction_of_copy']:7.2f}")
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="anchor counts / 10 and batch 2 only (smoke run)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--inner", type=int, default=10,
                        help="CUDA only: iterations between two CUDA events (each repeat times one such group)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory measurement (on the CPU: its child processes)")
    parser.add_argument("--with-dense", action="store_true",
                        help="also time sigmoid_focal_loss_dense on the gathered one-hot targets, when it is built")
    parser.add_argument("--batches", type=int, nargs="+", help="override the batch sizes (default 2 8)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--output", help="JSON path (default benchmarks/results/focal_loss_<device>.json)")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cpu_child(args.child[0], int(args.child[1]))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")
    if args.repeats < 1 or args.inner < 1:
        parser.error("--repeats and --inner must be at least 1")
    run(args)


if __name__ == "__main__":
    main()
