"""Benchmark of the plugin's RetinaNet against Detectron2's ``RetinaNet`` and torchvision's.

Models (``harness/peers.py``): the plugin from ``configs/retinanet_R50.yaml``; Detectron2's
RetinaNet from the same config (three component names changed), with the plugin's weights identical
to it (copied through the checkpoint converter); torchvision's RetinaNet with matching settings
(R50-FPN, P3-P7, 9 anchors, IoU 0.4/0.5, top-1000, NMS 0.5, score 0.05, 100 detections), whose
weights cannot be the same (another module layout). No pretrained weights: random initialisation,
calibrated so activations stay in range and 0.1% of the (anchor, class) scores pass the score
threshold for every model (``harness/calibration.py: calibrate_random_weights``).

Inputs (``harness/inputs.py``): seeded synthetic images (smooth noise) already at the benchmark
size, with seeded ground-truth boxes (sizes 8 px to 60% of the short side, aspect ratios 1:3 to 3:1,
80 classes), identical for all models: Detectron2/plugin get BGR 0-255, torchvision the same pixels
as RGB 0-1, whose transform keeps the size (scale exactly 1.0). Every model pads to a multiple of
32, so all see the same tensor size.

Measured, each model in its own child processes (``retinanet_child.py``), after ``--warmup`` steps
that are not timed:

- training step: forward + backward + SGD step (lr 1e-4, momentum 0.9, weight decay 1e-4; the
  weights are reloaded before each case), ``--reps`` steps, for each training batch size;
- inference per image: ``model.eval()``, ``torch.no_grad()``, batch ``--infer-batch`` (default 1),
  the whole call (normalisation, padding, network, decoding, top-k, NMS, rescaling) divided by the
  batch size;
- ``--rounds`` timing child processes per model, in alternating model order (A B C, C B A, ...),
  their repetitions pooled, so that a shared machine getting busier or quieter during the run
  favours no model;
- peak memory of the measured steps above what the process held after building the model and inputs
  (``harness/memory.py``): CUDA ``torch.cuda.max_memory_allocated()`` (peak reset after the warm-up)
  minus ``memory_allocated()`` before the warm-up, in the timing child; CPU: in one more child
  process per model (``--memory-reps`` steps after the same warm-up), peak resident set size
  ``VmHWM`` (reset after the warm-up through ``/proc/self/clear_refs``) minus ``VmRSS`` before the
  warm-up (after ``gc`` and ``malloc_trim``), with glibc's mmap threshold fixed at 128 KiB so that
  freed tensors go back to the OS and RSS follows the live tensors. (With the default, adaptive
  threshold malloc keeps freed blocks of up to 32 MiB for reuse, and the peak says more about the
  allocator than about the model; that figure, from the timing child, is in the JSON as
  ``default_malloc_peak_increase_bytes``.)

Times are reported as the median, interquartile range and min/max of the repetitions; ratios are
peer / plugin (above 1: the plugin is faster or needs less memory). AMP: ``torch.autocast`` (fp16
with ``GradScaler`` on CUDA; bf16 without scaler on the CPU).

Usage (from the repository root; ``python -m benchmarks.bench_retinanet`` works the same):
    python benchmarks/bench_retinanet.py               # CPU suite (384x640, batch 2 train, 1 infer)
    python benchmarks/bench_retinanet.py --device cuda # COCO setting, batch 2 and 8, fp32 and AMP
    python benchmarks/bench_retinanet.py --stress      # 1 image, 500 boxes, 800x1333, training only
Writes ``retinanet_<device>[_stress].{json,md,png}`` under ``--output`` (``retinanet_report.py``)
and prints the table.
"""

if not __package__:  # run as a file: see benchmarks/bootstrap.py
    import bootstrap  # noqa: F401  (beside this file)

import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List

import torch

from benchmarks import retinanet_child, retinanet_report
from benchmarks.harness import RESULTS_DIR, children, inputs, machine, memory, peers, timing
from benchmarks.harness import weights
from retinanet_plugin.modeling.execution import COMPILE_MODES

DEFAULTS = {
    "cpu": {"sizes": "384x640", "batch": "2", "reps": 3, "warmup": 2, "amp": False, "rounds": 2},
    "cuda": {
        "sizes": "800x1333",
        "batch": "2,8",
        "reps": 10,
        "warmup": 3,
        "amp": True,
        "rounds": 1,
    },
}
STRESS = {"sizes": "800x1333", "batch": "1", "boxes": 500, "reps": 1, "warmup": 1}


# --------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    add("--sizes", help="image sizes HxW, comma-separated (CPU default 384x640, CUDA 800x1333)")
    add(
        "--infer-sizes",
        help="image sizes HxW of the inference cases, comma-separated (default: --sizes)",
    )
    add("--batch", type=inputs.int_list, help="training batch sizes (CPU default 2, CUDA 2,8)")
    add("--infer-batch", type=int, default=1, help="inference batch size (default 1)")
    add("--reps", type=int, help="measured repetitions per round (CPU default 3, CUDA 10)")
    add("--warmup", type=int, help="warm-up repetitions, not measured (CPU default 2, CUDA 3)")
    add(
        "--boxes", type=int, help=f"ground-truth boxes per image (default {inputs.BOXES_PER_IMAGE})"
    )
    add(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="also run with mixed precision (default: on for CUDA, off for the CPU)",
    )
    add(
        "--plugin-compile",
        default="none",
        choices=COMPILE_MODES,
        help="the plugin's MODEL.RETINANET_PLUGIN.COMPILE (inference only; with COMPILE_FREEZING, "
        "its default): the warm-up steps compile (default none: eager)",
    )
    add(
        "--models",
        default=",".join(peers.MODELS),
        help="comma-separated subset of " + ",".join(peers.MODELS),
    )
    add(
        "--depth",
        type=int,
        default=50,
        choices=(18, 34, 50, 101, 152),
        help="ResNet depth (default 50)",
    )
    add(
        "--rounds",
        type=int,
        help="child processes per model, run in alternating model order, "
        "their repetitions pooled (CPU default 2, CUDA 1)",
    )
    add(
        "--memory-reps",
        type=int,
        default=1,
        help="CPU only: measured steps of the separate peak-memory child (default 1)",
    )
    add(
        "--threads",
        type=int,
        help="torch CPU threads in every process (default: torch's default, one per core); on a "
        "machine shared with other jobs, 1 avoids OpenMP threads waiting on descheduled peers",
    )
    add(
        "--stress",
        action="store_true",
        help=f"training only, batch {STRESS['batch']}, "
        f"{STRESS['boxes']} boxes at {STRESS['sizes']}",
    )
    add("--output", default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    add(
        "--from-json",
        metavar="JSON",
        help="print the table and rewrite the .md and .png beside "
        "an earlier run's JSON; runs nothing",
    )
    add("--child", help=argparse.SUPPRESS)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child or args.from_json:
        return args
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is visible")
    defaults = dict(DEFAULTS[args.device], **(STRESS if args.stress else {}))
    try:
        sizes = (args.sizes or defaults["sizes"]).split(",")
        args.sizes = [inputs.parse_size(s) for s in sizes if s]
    except argparse.ArgumentTypeError as error:
        parser.error(f"--sizes: {error}")
    try:
        infer_sizes = args.infer_sizes.split(",") if args.infer_sizes else []
        args.infer_sizes = [inputs.parse_size(s) for s in infer_sizes if s] or args.sizes
    except argparse.ArgumentTypeError as error:
        parser.error(f"--infer-sizes: {error}")
    args.batch = args.batch or inputs.int_list(defaults["batch"])
    for key in ("reps", "warmup", "rounds", "amp"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.boxes is None:
        args.boxes = defaults.get("boxes", inputs.BOXES_PER_IMAGE)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(peers.MODELS))
    if unknown or not models:
        parser.error(f"--models: unknown {unknown}; choose from {','.join(peers.MODELS)}")
    args.models = [m for m in peers.MODELS if m in models]  # plugin first: ratios are against it
    counts = (args.reps, args.rounds, args.infer_batch, args.boxes, args.memory_reps)
    if min(counts) < 1 or args.warmup < 0:
        parser.error(
            "--reps, --rounds, --memory-reps, --infer-batch and --boxes must be at least "
            "1, --warmup at least 0"
        )
    return args


def build_cases(args) -> List[Dict[str, object]]:
    cases = []
    for amp in [False, True] if args.amp else [False]:
        common = {"amp": amp, "reps": args.reps, "warmup": args.warmup, "boxes": args.boxes}
        for size in args.sizes:
            for batch in args.batch:
                cases.append(
                    dict(common, size=list(size), kind="train", batch=batch, stress=args.stress)
                )
            if not args.stress and size in args.infer_sizes:
                cases.append(
                    dict(common, size=list(size), kind="inference", batch=args.infer_batch)
                )
        for size in args.infer_sizes:
            if not args.stress and size not in args.sizes:
                cases.append(
                    dict(common, size=list(size), kind="inference", batch=args.infer_batch)
                )
    return cases


# ------------------------------------------------------------------------------------------ running
def run_child(model: str, cases, args, weights_path: str, purpose: str = "timing"):
    """One child process for ``model`` (``retinanet_child.child_main``); one result per case, an
    ``error`` entry where it failed. ``purpose`` "memory" runs it with ``memory.CPU_MEMORY_ENV``."""
    spec = {
        "model": model,
        "device": args.device,
        "depth": args.depth,
        "cases": cases,
        "weights": weights_path,
        "threads": args.threads,
        "purpose": purpose,
        "plugin_compile": args.plugin_compile,
    }
    env = memory.CPU_MEMORY_ENV if purpose == "memory" else {}
    child = children.run_child(__file__, ["--child", json.dumps(spec)], len(cases), env)
    if not child.ok:
        reason = children.exit_reason(child.returncode)
        print(f"  {model}: {reason}\n{child.stderr_tail}", file=sys.stderr)
        error = {"error": f"{reason}; stderr ends with: {child.stderr_tail[-500:]}"}
        child.results = [r if r is not None else dict(error) for r in child.results]
    return child.results


def run_models(args, cases, weight_files) -> Dict[str, List[Dict[str, object]]]:
    """Every model's results, one per case: ``--rounds`` timing children per model in alternating
    order, pooled; on the CPU, one more child per model for the peak memory."""
    models = args.models
    rounds = {model: [] for model in models}
    for round_index in range(args.rounds):
        # Alternate the order, so that a machine getting busier or quieter favours no model.
        for model in models if round_index % 2 == 0 else models[::-1]:
            if args.rounds > 1:
                print(f"  {model}: round {round_index + 1} of {args.rounds}", flush=True)
            path = weight_files[peers.layout_of(model)]["path"]
            rounds[model].append(run_child(model, cases, args, path))
    per_model = {
        model: [
            timing.pool_rounds([r[i] for r in rounds[model]], case) for i, case in enumerate(cases)
        ]
        for model in models
    }
    if args.device == "cpu":
        for model in models:
            print(
                f"  {model}: peak memory in a second child process (fixed glibc mmap threshold)",
                flush=True,
            )
            memory_cases = [dict(c, reps=args.memory_reps) for c in cases]
            path = weight_files[peers.layout_of(model)]["path"]
            measured = run_child(model, memory_cases, args, path, purpose="memory")
            for timed, peak in zip(per_model[model], measured):
                retinanet_report.merge_cpu_memory(timed, peak)
    return per_model


def run(args) -> Dict[str, object]:
    cases = build_cases(args)
    info = machine.machine_info(args.device)
    print(
        f"RetinaNet R{args.depth}-FPN benchmark on {info['device_name']} "
        f"({info['torch_threads']} threads): {len(cases)} cases x {len(args.models)} models",
        flush=True,
    )
    notes = retinanet_report.start_notes(args.models, info)
    if args.plugin_compile != "none":
        notes.append(
            f"plugin: MODEL.RETINANET_PLUGIN.COMPILE {args.plugin_compile} (with COMPILE_FREEZING) "
            "at inference, compiled during the warm-up steps; training eager"
        )
    with tempfile.TemporaryDirectory(prefix="bench_retinanet_") as folder:
        weight_files = weights.prepare_weights(args.models, args.sizes[0], args.depth, folder)
        per_model = run_models(args, cases, weight_files)
    info["load_average_at_end"] = list(os.getloadavg())
    return retinanet_report.assemble(args, info, notes, cases, per_model, weight_files)


def main(argv=None) -> Dict[str, object]:
    args = parse_args(argv)
    if args.child:
        retinanet_child.child_main(json.loads(args.child))
        return {}
    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
        folder = os.path.dirname(os.path.abspath(args.from_json))
        stem = os.path.splitext(os.path.basename(args.from_json))[0]
        print(f"Machine: {retinanet_report.describe_machine(report['info'])}")
        print(retinanet_report.format_table(report))
        for path in retinanet_report.write_outputs(report, folder, stem, with_json=False):
            print(f"written {path}")
        return report
    report = run(args)
    print()
    print(f"Machine: {retinanet_report.describe_machine(report['info'])}")
    print(retinanet_report.format_table(report))
    for note in report["notes"]:
        print(f"  note: {note}")
    stem = f"retinanet_{'stress_' if args.stress else ''}{args.device}"
    for path in retinanet_report.write_outputs(report, args.output, stem):
        print(f"written {path}")
    return report


if __name__ == "__main__":
    main()
