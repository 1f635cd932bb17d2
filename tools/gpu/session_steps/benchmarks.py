"""Step 6 of the GPU session: ``bench_focal_loss.py --device cuda`` (CUDA events, bandwidth against
the peak and a measured copy) and a short ``bench_retinanet.py --device cuda`` (800x1333, batch 2,
fp32 and AMP). Their results are copied into the session's folder named after the GPU. A dry run
runs the focal loss benchmark's quick CPU mode, and parses the RetinaNet benchmark's GPU
arguments."""

import os
import shutil

from . import gpu_check, process, read_json

FOCAL_LOSS_DRY_ARGS = (
    "--device",
    "cpu",
    "--quick",
    "--repeats",
    "1",
    "--no-memory",
    "--with-dense",
)
FOCAL_LOSS_GPU_ARGS = ("--device", "cuda", "--repeats", "10", "--inner", "10", "--with-dense")
BENCH_RETINANET_ARGS = (
    "--sizes",
    "800x1333",
    "--batch",
    "2",
    "--reps",
    "5",
    "--warmup",
    "2",
    "--amp",
)
# The dry run's check: the GPU run's arguments parsed by the script's own parser (run from the
# repository root, where ``benchmarks`` is a package).
PARSE_PROBE = (
    "import benchmarks.bench_retinanet as b; a = b.parse_args({args!r}); "
    "print('@@', a.sizes, a.batch, a.reps, a.warmup, a.amp, a.models)"
)


def focal_loss_figures(report, output):
    info = report["info"]
    figures = {
        "device_name": info.get("device_name"),
        "file": os.path.basename(output),
        "peak_bandwidth_bytes_per_s": info.get("peak_bandwidth_bytes_per_s"),
        "copy_bandwidth_bytes_per_s": info.get("copy_bandwidth_bytes_per_s"),
        "cases": [],
    }
    for case in report["results"]:
        impls = case["impls"]
        op = impls["op"]
        entry = {
            "image": case["image"],
            "batch": case["batch"],
            "rows": case["rows"],
            "op_ms": op["seconds"] * 1e3,
            "fvcore_over_op": impls["fvcore_jit"]["time_ratio_vs_op"],
            "torchvision_over_op": impls["torchvision"]["time_ratio_vs_op"],
            "op_peak_extra_nk_tensors": op.get("peak_extra_nk_tensors"),
            "bandwidth_fraction_of_peak": op.get("bandwidth_fraction_of_peak"),
            "bandwidth_fraction_of_copy": op.get("bandwidth_fraction_of_copy"),
        }
        if "op_dense" in impls:
            entry["dense_ms"] = impls["op_dense"]["seconds"] * 1e3
            entry["fvcore_over_dense"] = (
                impls["fvcore_jit"]["seconds"] / impls["op_dense"]["seconds"]
            )
        figures["cases"].append(entry)
    return figures


def bench_focal_loss(session, record, deadline):
    if session.dry:
        output = os.path.join(session.out, "focal_loss_cpu_dryrun.json")
        args = FOCAL_LOSS_DRY_ARGS
    else:
        output = os.path.join(session.out, f"focal_loss_cuda_{session.gpu_slug}.json")
        args = FOCAL_LOSS_GPU_ARGS
    command = session.python_command("benchmarks/bench_focal_loss.py", *args, "--output", output)
    result = session.run(command, session.time_left(deadline))
    report = read_json(output) if result["rc"] == 0 else None
    figures = focal_loss_figures(report, output) if report else {}
    ok = bool(report) and bool(report["results"])
    error = process.error_text(result, "bench_focal_loss.py")
    if session.dry:
        gpu_check(record, ok, "--device cpu --quick", error=error)
        record["figures"] = figures
        return
    record.update(status=process.result_status(result, ok), figures=figures)
    if not ok:
        record["error"] = error


def check_retinanet_arguments(session, record, deadline, folder):
    """Dry run: the GPU run's arguments parsed by ``bench_retinanet.parse_args``."""
    args = list(BENCH_RETINANET_ARGS) + ["--device", "cpu", "--output", folder]
    result = session.run(
        [session.python, "-c", PARSE_PROBE.format(args=args)], session.time_left(deadline)
    )
    parsed = next((line[3:] for line in result["tail"] if line.startswith("@@")), None)
    ok = result["rc"] == 0 and parsed is not None
    gpu_check(
        record,
        ok,
        "the GPU run's arguments parsed by bench_retinanet.parse_args",
        error=process.error_text(result, "bench_retinanet.parse_args"),
        parsed=parsed,
    )


def retinanet_figures(report):
    """Per case: the plugin's median and peak, the ratios; and the errors of any model."""
    cases, errors = [], []
    for case in report.get("cases", []):
        results = case.get("results", {})
        plugin = results.get("plugin", {})
        cases.append(
            {
                "case": case.get("label"),
                "plugin_ms": (plugin.get("median_s") or 0) * 1e3 or None,
                "plugin_peak_increase_mib": (plugin.get("peak_increase_bytes") or 0) / 2**20
                or None,
                "ratios": case.get("ratios"),
            }
        )
        for model, res in results.items():
            if "error" in res:
                errors.append(f"{case.get('label')} {model}: {str(res['error'])[:200]}")
    return {"cases": cases}, errors


def bench_retinanet(session, record, deadline):
    folder = os.path.join(session.work, "bench_retinanet")
    if session.dry:
        check_retinanet_arguments(session, record, deadline, folder)
        return
    command = session.python_command(
        "benchmarks/bench_retinanet.py",
        "--device",
        "cuda",
        *BENCH_RETINANET_ARGS,
        "--output",
        folder,
    )
    result = session.run(command, session.time_left(deadline))
    report = read_json(os.path.join(folder, "retinanet_cuda.json"))
    figures, errors = {}, []
    if report:
        for suffix in ("json", "md"):
            source = os.path.join(folder, f"retinanet_cuda.{suffix}")
            if os.path.exists(source):
                target = os.path.join(session.out, f"retinanet_cuda_{session.gpu_slug}.{suffix}")
                shutil.copy2(source, target)
        figures, errors = retinanet_figures(report)
    ok = result["rc"] == 0 and bool(report) and not errors
    record.update(status=process.result_status(result, ok), figures=figures)
    if not ok:
        record["error"] = (
            "; ".join(errors) if errors else process.error_text(result, "bench_retinanet.py")
        )
