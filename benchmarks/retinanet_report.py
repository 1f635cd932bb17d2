"""The report of ``bench_retinanet.py``: ratios against the plugin, the console table, the Markdown
file and the chart (``retinanet_<device>[_stress].{json,md,png}``), also redrawn from an earlier
run's JSON."""

import io
import statistics
from typing import Dict, List

from benchmarks import retinanet_child
from benchmarks.harness import inputs, peers, weights
from benchmarks.harness import report as report_files

COLORS = {"plugin": "#1f77b4", "detectron2": "#ff7f0e", "torchvision": "#2ca02c"}


# ------------------------------------------------------------------------------------------- report
def settings(args) -> Dict[str, object]:
    """The run's settings, and how it measures, as the report states them."""
    cpu = args.device == "cpu"
    optimizer = (
        f"SGD lr {retinanet_child.LEARNING_RATE}, momentum {retinanet_child.MOMENTUM}, "
        f"weight decay {retinanet_child.WEIGHT_DECAY}"
    )
    return {
        "depth": args.depth,
        "sizes": [list(s) for s in args.sizes],
        "infer_sizes": [list(s) for s in args.infer_sizes],
        "train_batches": args.batch,
        "infer_batch": args.infer_batch,
        "reps": args.reps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "amp": args.amp,
        "boxes_per_image": args.boxes,
        "stress": args.stress,
        "models": args.models,
        "seed": inputs.SEED,
        "optimizer": optimizer,
        "amp_mode": "torch.autocast bf16, no scaler" if cpu else "torch.autocast fp16 + GradScaler",
        "candidate_fraction": weights.CANDIDATE_FRACTION,
        "timing": "wall time per step (CUDA synchronised before and after); median, quartiles, "
        "min/max over the reps of all rounds; warm-up steps excluded (in every round)",
        "memory": (
            "a second child process per model, with glibc's mmap threshold fixed at 128 KiB (freed "
            "tensors go back to the OS): VmHWM during its measured steps (reset via "
            "/proc/self/clear_refs after the warm-up) - VmRSS after building the model and inputs "
            "(gc + malloc_trim); the timing child's own figure, with the default allocator, is "
            "kept as default_malloc_peak_increase_bytes"
            if cpu
            else "torch.cuda.max_memory_allocated() during the measured steps - memory_allocated() "
            "after building the model and inputs"
        ),
        "memory_reps": args.memory_reps if cpu else None,
        "ratios": "peer / plugin (> 1: the plugin is faster / needs less memory)"
        + (
            "; CPU time = the process's CPU time per step (time.process_time), less "
            "sensitive than wall time to other jobs on a shared machine"
            if cpu
            else ""
        ),
    }


def start_notes(models, info) -> List[str]:
    """The notes known before the run: torchvision's differences, a busy machine."""
    notes = []
    if "torchvision" in models:
        notes += [f"torchvision: {d}" for d in peers.TORCHVISION_DIFFERENCES]
    load = info["load_average_at_start"][0]
    if load > info["usable_cpus"] - 0.5:
        notes.append(
            f"the machine was busy (load average {load:.1f} on {info['usable_cpus']} CPUs "
            "at the start): timings are noisy"
        )
    return notes


def assemble(args, info, notes, cases, per_model, weight_files) -> Dict[str, object]:
    """The report: machine (with the CUDA device the children saw), settings, notes, calibration,
    and every case with each model's result and the ratios."""
    models = args.models
    reported = [
        r["cuda_info"] for results in per_model.values() for r in results if "cuda_info" in r
    ]
    if reported:
        info.update(reported[0])
    report_cases = []
    for index, case in enumerate(cases):
        entry = dict(
            case,
            label=retinanet_child.case_label(case),
            results={m: per_model[m][index] for m in models},
        )
        add_ratios(entry)
        report_cases.append(entry)
    if "plugin" in models and "detectron2" in models:
        notes.insert(0, weights_note(report_cases))
    calibration = {layout: w["calibration"] for layout, w in weight_files.items()}
    return {
        "info": info,
        "settings": settings(args),
        "notes": notes,
        "calibration": calibration,
        "cases": report_cases,
    }


def add_ratios(case: Dict[str, object]) -> None:
    """``case['ratios'][peer]``: peer / plugin for the median time and the peak memory increase."""
    results = case["results"]
    plugin = results.get("plugin", {})
    case["ratios"] = {}
    for peer, result in results.items():
        if peer == "plugin" or "median_s" not in result or "median_s" not in plugin:
            continue
        memory = None
        if plugin.get("peak_increase_bytes") and result.get("peak_increase_bytes") is not None:
            memory = result["peak_increase_bytes"] / plugin["peak_increase_bytes"]
        case["ratios"][peer] = {
            "time": result["median_s"] / plugin["median_s"],
            "peak_memory_increase": memory,
        }
        if result.get("cpu_median_s") and plugin.get("cpu_median_s"):
            case["ratios"][peer]["cpu_time"] = result["cpu_median_s"] / plugin["cpu_median_s"]


def merge_cpu_memory(timed: Dict[str, object], measured: Dict[str, object]) -> None:
    """Put the memory child's peak into the timing child's result; keep the timing run's own RSS
    peak aside."""
    if "error" in timed:
        return
    for key in ("peak_bytes", "baseline_bytes", "peak_increase_bytes"):
        timed["default_malloc_" + key] = timed.pop(key)
        timed[key] = measured.get(key)
    if "error" in measured:
        timed["memory_error"] = measured["error"]


def weights_note(report_cases) -> str:
    """Whether the plugin and Detectron2 ran with identical weights in every case."""
    fingerprints = {
        r["results"][m].get("weights_fingerprint")
        for r in report_cases
        for m in ("plugin", "detectron2")
    }
    same = len(fingerprints) == 1 and None not in fingerprints
    return "plugin and detectron2: " + (
        "identical weights (same fingerprint in every case), copied through the checkpoint "
        "converter"
        if same
        else f"weights DIFFER or were not reported (fingerprints {sorted(map(str, fingerprints))})"
    )


# -------------------------------------------------------------------------------------------- table
def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def header(report) -> List[str]:
    columns = ["case", "model", "median ms", "IQR ms", "time peer/plugin"]
    if report["info"]["device"] == "cpu":
        columns.append("CPU-time peer/plugin")
    return columns + ["peak mem +MiB", "mem peer/plugin", "notes"]


def result_row(case, model: str, result, cpu: bool) -> List[str]:
    """One table row: a model's result in a case."""
    suffix = "_per_image" if case["kind"] == "inference" else ""
    ratio = case["ratios"].get(model)
    plugin = model == "plugin"
    median = result["median_s" + suffix]
    spread = f"{_ms(result['q1_s' + suffix])}-{_ms(result['q3_s' + suffix])}"
    peak = result.get("peak_increase_bytes")
    memory = "-" if peak is None else f"{peak / 2**20:.0f}"
    if suffix:
        detail = f"{statistics.mean(result['detections_per_image']):.0f} detections/image"
    else:
        detail = f"loss {sum(result['first_losses'].values()):.4f}" + (
            "" if result["finite"] else " NON-FINITE"
        )
    row = [
        case["label"],
        model,
        _ms(median),
        spread,
        "1.00" if plugin else (f"{ratio['time']:.2f}" if ratio else "-"),
    ]
    if cpu:
        row.append(
            "1.00"
            if plugin
            else (f"{ratio['cpu_time']:.2f}" if ratio and "cpu_time" in ratio else "-")
        )
    row += [
        memory,
        "1.00"
        if plugin
        else (
            f"{ratio['peak_memory_increase']:.2f}"
            if ratio and ratio["peak_memory_increase"]
            else "-"
        ),
        detail,
    ]
    return row


def table_rows(report) -> List[List[str]]:
    cpu = report["info"]["device"] == "cpu"
    rows = []
    for case in report["cases"]:
        for model, result in case["results"].items():
            if "error" in result:
                rows.append(
                    [case["label"], model, "failed"] + [""] * (4 + cpu) + [result["error"][:80]]
                )
            else:
                rows.append(result_row(case, model, result, cpu))
    return rows


def format_table(report) -> str:
    columns = header(report)
    return report_files.text_table([columns] + table_rows(report), range(2, len(columns) - 1))


def describe_machine(info) -> str:
    text = f"{info['device_name']}"
    if info["device"] == "cuda" and "cuda" in info:
        text += (
            f" (CUDA {info['cuda']}, {info['device_memory_bytes'] / 2**30:.0f} GiB), "
            f"host {info['cpu']}"
        )
    text += (
        f", {info['usable_cpus']} usable CPUs, {info['torch_threads']} torch threads, torch "
        f"{info['torch']}, torchvision {info['torchvision']}, "
        f"detectron2 {info['detectron2']}; "
        f"load average {info['load_average_at_start'][0]:.1f} at start, "
        f"{info['load_average_at_end'][0]:.1f} at end"
    )
    return text


def format_markdown(report) -> str:
    s, info = report["settings"], report["info"]
    code = ""
    if info.get("git_commit"):
        code = f", code at {info['git_commit'][:10]}" + (
            f" + {len(info['git_changed_files'])} changed files"
            if info.get("git_changed_files")
            else ""
        )
    lines = [
        f"# RetinaNet R{s['depth']}-FPN: plugin vs Detectron2 vs torchvision ({info['device']})",
        "",
        f"Machine: {describe_machine(info)}. Run {info['date_utc']}" + code + ".",
        "",
        f"Median of {s['reps'] * s['rounds']} repetitions ({s['rounds']} child process(es) per "
        f"model in alternating order, {s['reps']} each, after {s['warmup']} warm-up steps); "
        f"IQR = interquartile range. Training: forward + backward + {s['optimizer']}; "
        f"inference: batch {s['infer_batch']}, time per image including post-processing. "
        f"Peak memory: {s['memory']}. Ratios: {s['ratios']}.",
        "",
        "| " + " | ".join(header(report)) + " |",
        "|" + "|".join(" --- " for _ in header(report)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- chart
def bars(ax, cases, models, metric: str, suffix: str) -> None:
    """One panel: a bar per model per case (time with IQR error bars, or peak memory increase),
    peer / plugin ratios above the peers' bars."""
    width = 0.8 / len(models)
    for j, model in enumerate(models):
        xs, heights, errors, labels = [], [], [[], []], []
        for i, case in enumerate(cases):
            result = case["results"][model]
            if "median_s" not in result:
                continue
            ratio = case["ratios"].get(model)
            xs.append(i + (j - (len(models) - 1) / 2) * width)
            if metric == "time":
                median = result["median_s" + suffix] * 1e3
                heights.append(median)
                errors[0].append(median - result["q1_s" + suffix] * 1e3)
                errors[1].append(result["q3_s" + suffix] * 1e3 - median)
                labels.append(f"{ratio['time']:.2f}x" if ratio else "")
            else:
                heights.append((result.get("peak_increase_bytes") or 0) / 2**20)
                value = ratio and ratio["peak_memory_increase"]
                labels.append(f"{value:.2f}x" if value else "")
        drawn = ax.bar(
            xs,
            heights,
            width,
            label=model,
            color=COLORS.get(model),
            yerr=errors if metric == "time" else None,
            capsize=3,
        )
        ax.bar_label(drawn, labels=labels, fontsize=7, padding=2)


def decorate(ax, cases, kind: str, metric: str) -> None:
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c["label"].split(" ", 1)[1] for c in cases], fontsize=8)
    if metric == "time":
        title = "training step" if kind == "train" else "inference, per image"
        ax.set_title(title + " (median, IQR)", fontsize=9)
        ax.set_ylabel("ms")
    else:
        ax.set_title("peak memory increase", fontsize=9)
        ax.set_ylabel("MiB")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def plot(report) -> bytes:
    """Bar chart: rows = time, peak memory increase; columns = training, inference; one bar per
    model per case, IQR as error bars, peer / plugin ratios above the peers' bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["settings"]["models"]
    kinds = [k for k in ("train", "inference") if any(c["kind"] == k for c in report["cases"])]
    most = max(sum(c["kind"] == k for c in report["cases"]) for k in kinds)
    size = (max(6.0, 0.75 * most * len(models)) * len(kinds), 8.0)
    fig, axes = plt.subplots(2, len(kinds), figsize=size, squeeze=False)
    for column, kind in enumerate(kinds):
        cases = [c for c in report["cases"] if c["kind"] == kind]
        suffix = "_per_image" if kind == "inference" else ""
        for row, metric in enumerate(("time", "memory")):
            bars(axes[row][column], cases, models, metric, suffix)
            decorate(axes[row][column], cases, kind, metric)
    info = report["info"]
    fig.suptitle(
        f"RetinaNet R{report['settings']['depth']}-FPN on {info['device_name']} "
        f"({info['torch_threads']} threads), {info['date_utc'][:10]}\nbar labels: peer / "
        "plugin (> 1: the plugin is better)",
        fontsize=9,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_outputs(report, folder: str, stem: str, with_json: bool = True) -> List[str]:
    """``stem``.json, .md and .png under ``folder``, each written atomically; returns their
    paths."""
    contents = {".json": report_files.json_bytes(report)} if with_json else {}
    contents.update({".md": format_markdown(report).encode(), ".png": plot(report)})
    return report_files.write_files(folder, stem, contents)
