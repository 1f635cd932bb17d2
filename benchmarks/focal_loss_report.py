"""What ``bench_focal_loss.py`` reports beside its measurements: the implementations run, the run's
description (``info``), the op's bandwidth on CUDA, and the printed table."""

import torch

from benchmarks.harness import machine

IMPLS = ("op", "fvcore_jit", "torchvision")
DENSE_IMPL = "op_dense"


def impls_to_run(with_dense):
    """IMPLS, plus the dense-target op when asked for and built (None and a note otherwise)."""
    if not with_dense:
        return IMPLS, None
    from retinanet_plugin import layers

    if not hasattr(layers, "sigmoid_focal_loss_dense"):
        return IMPLS, (
            "--with-dense: retinanet_plugin.layers has no sigmoid_focal_loss_dense; not timed"
        )
    return IMPLS + (DENSE_IMPL,), None


def describe(args, impls, dense_note, num_classes):
    """The report's ``info``: device, software, settings and methods; on CUDA the device's peak and
    copy bandwidth (measured here)."""
    from retinanet_plugin.layers.compiled_ops import cpu_kernel_capability

    cuda = args.device == "cuda"
    info = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else machine.cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_kernel": cpu_kernel_capability(),
        "num_classes": num_classes,
        "label_mix": "0.1% positive rows, 1% ignored, rest background",
        "repeats": args.repeats,
        "quick": args.quick,
        "impls": list(impls),
        "memory_method": (
            "torch.cuda.max_memory_allocated() - memory_allocated() before the call"
            if cuda
            else "child process per case: VmHWM (reset via /proc/self/clear_refs) - VmRSS before "
            "the "
            "call"
        ),
    }
    if dense_note:
        info["note"] = dense_note
    if not args.memory:
        info["memory_method"] = "not measured (--no-memory)"
    if cuda:
        bandwidth, source = machine.peak_bandwidth()
        info["peak_bandwidth_bytes_per_s"] = bandwidth
        info["peak_bandwidth_source"] = source
        info["copy_bandwidth_bytes_per_s"] = machine.copy_bandwidth()
        info["timing"] = (
            f"CUDA events around {args.inner} iterations, median of {args.repeats} groups"
        )
        info["inner"] = args.inner
    return info


def add_bandwidth(entry, logits, labels, info) -> None:
    """The op's achieved bandwidth: 3 passes over the logits plus the labels, per second, and its
    fraction of the device's peak and of a measured copy."""
    moved = 3 * logits.numel() * 4 + 2 * labels.numel() * labels.element_size()
    achieved = moved / entry["seconds"]
    entry["bytes_moved"] = moved
    entry["achieved_bandwidth_bytes_per_s"] = achieved
    if info.get("peak_bandwidth_bytes_per_s"):
        entry["bandwidth_fraction_of_peak"] = achieved / info["peak_bandwidth_bytes_per_s"]
    entry["bandwidth_fraction_of_copy"] = achieved / info["copy_bandwidth_bytes_per_s"]


def _nk(entry):
    value = entry.get("peak_extra_nk_tensors")
    return float("nan") if value is None else value


def table_header(info, dense: bool) -> str:
    header = (
        f"{'image':>12} {'batch':>5} {'rows':>9} | {'op ms':>8} {'fvcore ms':>10} "
        f"{'tv ms':>8} | {'fvcore/op':>9} {'tv/op':>6} | "
        f"{'peak extra, [N,K] fp32 tensors: op':>34} {'fvcore':>7} {'tv':>6}"
    )
    if dense:
        header += f" | {'dense ms':>8} {'fvcore/dense':>12}"
    if info["device"] == "cuda":
        header += f" | {'op GB/s':>8} {'of peak':>7} {'of copy':>7}"
    return header


def table_line(case, info, dense: bool) -> str:
    op, fv, tv = (case["impls"][k] for k in IMPLS)
    line = (
        f"{case['image']:>12} {case['batch']:>5} {case['rows']:>9} | "
        f"{op['seconds'] * 1e3:8.1f} {fv['seconds'] * 1e3:10.1f} {tv['seconds'] * 1e3:8.1f} | "
        f"{fv['time_ratio_vs_op']:9.2f} {tv['time_ratio_vs_op']:6.2f} | "
        f"{_nk(op):34.2f} {_nk(fv):7.2f} {_nk(tv):6.2f}"
    )
    if dense:
        de = case["impls"][DENSE_IMPL]
        line += f" | {de['seconds'] * 1e3:8.1f} {fv['seconds'] / de['seconds']:12.2f}"
    if info["device"] == "cuda":
        fraction = op.get("bandwidth_fraction_of_peak")
        fraction = fraction if fraction is not None else float("nan")
        line += (
            f" | {op['achieved_bandwidth_bytes_per_s'] / 1e9:8.0f} {fraction:7.2f} "
            f"{op['bandwidth_fraction_of_copy']:7.2f}"
        )
    return line


def print_table(report):
    info = report["info"]
    dense = DENSE_IMPL in info.get("impls", IMPLS)
    print(
        f"\nsigmoid focal loss, forward + backward, K = {info['num_classes']}, "
        f"{info['device_name']}, {info['threads']} threads, CPU kernel {info['cpu_kernel']}, "
        f"median of {info['repeats']}"
    )
    header = table_header(info, dense)
    print(header)
    print("-" * len(header))
    for case in report["results"]:
        print(table_line(case, info, dense))
