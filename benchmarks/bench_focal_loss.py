"""Benchmark: the compiled sigmoid focal loss op against the composite losses Detectron2 users run.

For RetinaNet's anchor counts (A = 120k anchors for an 800x800 image, 200k for 800x1333) x K = 80
classes and batches of 2 and 8 images (N = A * batch rows), it times forward + backward (reduction
"sum", the way RetinaNet calls it) and measures the peak extra memory of:

- op:          retinanet_plugin's ``sigmoid_focal_loss(logits, labels)`` (integer labels, no
  one-hot);
- fvcore_jit:  Detectron2's path: ``valid = labels >= 0``, ``F.one_hot(labels[valid], K + 1)[:,
  :-1]``, ``fvcore.nn.sigmoid_focal_loss_jit(logits[valid], targets, ...)`` (gather and one-hot
  timed too);
- torchvision: the same with ``torchvision.ops.sigmoid_focal_loss``;
- op_dense:    (``--with-dense``, when ``retinanet_plugin.layers`` has it) the plugin's drop-in for
  those two, ``sigmoid_focal_loss_dense`` on the same gathered one-hot targets.

Labels: ~0.1% positive rows (a random class), ~1% ignored (-1), the rest background (K).

Memory (``harness/memory.py``): on CUDA, ``torch.cuda.max_memory_allocated()`` minus what is
allocated before the call (logits and labels); on CPU, each (case, implementation) runs in a child
process that reads its peak resident set size (VmHWM, reset through /proc/self/clear_refs) minus its
resident size before the call. Both include the [N, K] gradient itself, so an ideal fused op shows
about 1.0 [N, K] fp32 tensors. On CUDA the op's achieved bandwidth is also reported against the
device peak, counting 3 passes over the logits (read x in the forward, read x again and write the
gradient in the backward) plus the labels, and against the bandwidth of a large device-to-device
copy measured in the same run (what the memory system delivers in practice).

Timing (``harness/timing.py``): on the CPU, the median wall time of ``--repeats`` runs; on CUDA,
CUDA events around ``--inner`` back-to-back iterations (so launch gaps and host work overlap as in
training), the median over ``--repeats`` such groups.

Usage (from the repository root; ``python -m benchmarks.bench_focal_loss`` works the same):
    python benchmarks/bench_focal_loss.py [--device cpu|cuda] [--quick] [--repeats R] [--inner I]
                                          [--with-dense]
Writes a JSON file (default benchmarks/results/focal_loss_<device>.json) and prints a table.
"""

if not __package__:  # run as a file: see benchmarks/bootstrap.py
    import bootstrap  # noqa: F401  (beside this file)

import argparse
import gc
import os
import statistics

import torch
import torch.nn.functional as F

from benchmarks import focal_loss_report
from benchmarks.harness import RESULTS_DIR, children, memory, report, timing

NUM_CLASSES = 80
ANCHORS = {"800x800": 120_000, "800x1333": 200_000}
QUICK_ANCHORS = {"800x800/10": 12_000, "800x1333/10": 20_000}
BATCHES = (2, 8)
QUICK_BATCHES = (2,)
IMPLS = focal_loss_report.IMPLS
DENSE_IMPL = focal_loss_report.DENSE_IMPL
GAMMA, ALPHA = 2.0, 0.25


def make_inputs(num_rows, device, seed=0):
    """Logits [N, K] fp32 (a leaf that requires grad) and labels [N] int64 with RetinaNet's label
    mix."""
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
        raise ValueError(
            f"unknown implementation {impl!r}; expected one of {IMPLS + (DENSE_IMPL,)}"
        )

    def step(logits, labels):  # as Detectron2's RetinaNet.losses builds it
        valid = labels >= 0
        targets = F.one_hot(labels[valid], num_classes=NUM_CLASSES + 1)[:, :-1]
        loss_fn(
            logits[valid], targets.to(logits.dtype), alpha=ALPHA, gamma=GAMMA, reduction="sum"
        ).backward()

    return step


def cpu_child(impl, num_rows):
    """In a child process: peak RSS increase (bytes) of one forward + backward after one warm-up
    run."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    step = make_step(impl)
    logits, labels = make_inputs(num_rows, "cpu")
    step(logits, labels)  # warm-up (JIT profiling, lazy initialisation)
    logits.grad = None
    peak = memory.MemoryMeter("cpu").peak_increase(lambda: step(logits, labels))
    children.emit(0, {"peak_extra_bytes": peak})


def cpu_peak_extra_bytes(impl, num_rows):
    """``cpu_child`` in a process of its own, with glibc's mmap threshold fixed (``memory``)."""
    env = dict(memory.CPU_MEMORY_ENV, BENCH_THREADS=str(torch.get_num_threads()))
    child = children.run_child(__file__, ["--child", impl, str(num_rows)], 1, env, timeout=1800)
    if not child.ok or child.results[0] is None:
        raise RuntimeError(f"memory child for {impl} N={num_rows} failed:\n{child.stderr_tail}")
    return child.results[0]["peak_extra_bytes"]


def cuda_peak_extra_bytes(step, logits, labels):
    logits.grad = None
    peak = memory.MemoryMeter("cuda").peak_increase(lambda: step(logits, labels))
    logits.grad = None
    return peak


def measure(impl, logits, labels, args):
    """One implementation on one case: its time, peak extra memory, and on CUDA its bandwidth."""
    step = make_step(impl)
    entry = {}

    def clear_grad():
        logits.grad = None

    if args.device == "cuda":
        per_iter = timing.cuda_event_times(
            lambda: step(logits, labels), args.repeats, args.inner, before=clear_grad
        )
        seconds = statistics.median(per_iter)
        entry.update(min_seconds=min(per_iter), max_seconds=max(per_iter))
    else:
        seconds = timing.median_time(
            lambda: step(logits, labels), args.device, args.repeats, before=clear_grad
        )
    if not args.memory:
        peak = None
    elif args.device == "cuda":
        peak = cuda_peak_extra_bytes(step, logits, labels)
    else:
        peak = cpu_peak_extra_bytes(impl, logits.shape[0])
    nk_bytes = logits.numel() * 4  # one [N, K] fp32 tensor
    entry.update(
        seconds=seconds,
        peak_extra_bytes=peak,
        peak_extra_nk_tensors=None if peak is None else peak / nk_bytes,
    )
    return entry


def run_case(image, num_anchors, batch, impls, args, info):
    num_rows = num_anchors * batch
    logits, labels = make_inputs(num_rows, args.device)
    case = {"image": image, "anchors": num_anchors, "batch": batch, "rows": num_rows, "impls": {}}
    for impl in impls:
        entry = measure(impl, logits, labels, args)
        if args.device == "cuda" and impl == "op":
            focal_loss_report.add_bandwidth(entry, logits, labels, info)
        case["impls"][impl] = entry
        peak = entry["peak_extra_bytes"]
        shown = "memory not measured" if peak is None else f"{peak / 2**20:.0f} MiB"
        print(
            f"  {image} batch {batch} {impl}: {entry['seconds'] * 1e3:.2f} ms, {shown}", flush=True
        )
    op_seconds = case["impls"]["op"]["seconds"]
    for impl in impls:
        case["impls"][impl]["time_ratio_vs_op"] = case["impls"][impl]["seconds"] / op_seconds
    del logits, labels
    gc.collect()
    return case


def run(args):
    anchors = QUICK_ANCHORS if args.quick else ANCHORS
    batches = tuple(args.batches) if args.batches else (QUICK_BATCHES if args.quick else BATCHES)
    impls, dense_note = focal_loss_report.impls_to_run(args.with_dense)
    if dense_note:
        print(dense_note)
    info = focal_loss_report.describe(args, impls, dense_note, NUM_CLASSES)
    results = [
        run_case(image, num_anchors, batch, impls, args, info)
        for image, num_anchors in anchors.items()
        for batch in batches
    ]
    result = {"info": info, "results": results}
    output = args.output or os.path.join(RESULTS_DIR, f"focal_loss_{args.device}.json")
    folder, name = os.path.split(os.path.abspath(output))
    stem, extension = os.path.splitext(name)
    report.write_files(folder, stem, {extension: report.json_bytes(result)})  # never half-written
    focal_loss_report.print_table(result)
    print(f"\nwritten to {output}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    add("--quick", action="store_true", help="anchor counts / 10 and batch 2 only (smoke run)")
    add("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    add(
        "--inner",
        type=int,
        default=10,
        help="CUDA only: iterations between two CUDA events (each repeat times one such group)",
    )
    add(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the peak-memory measurement (on the CPU: its child processes)",
    )
    add(
        "--with-dense",
        action="store_true",
        help="also time sigmoid_focal_loss_dense on the gathered one-hot targets, when it is built",
    )
    add("--batches", type=int, nargs="+", help="override the batch sizes (default 2 8)")
    add("--threads", type=int, help="torch CPU threads (default: torch's default)")
    add("--output", help="JSON path (default benchmarks/results/focal_loss_<device>.json)")
    add("--child", nargs=2, metavar=("IMPL", "ROWS"), help=argparse.SUPPRESS)
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
