"""Where the plugin's RetinaNet spends its time next to Detectron2's: ``torch.profiler`` over
training steps (forward + backward + SGD step) and batch-1 inference calls of both models, with
identical weights and inputs (those of ``bench_retinanet.py``, from the harness), after warm-up
steps.

Both models live in one process, and their profiled steps alternate (plugin, Detectron2, Detectron2,
plugin, ...), so that other jobs on a shared machine weigh on both alike. The models' stages are
wrapped in ``record_function`` scopes (``profile_stages.py``: methods and submodules patched on the
instances, module-level functions where each model's code looks them up), so the report gives, per
stage, the inclusive CPU time of both models, and the ops whose self time differs most, by innermost
stage:

    preprocess_image, backbone (bottom_up = the ResNet; the rest is FPN + P6/P7), head,
    transpose_predictions, anchor_generator, label_anchors (> pairwise_iou, matcher), losses (>
    focal_loss, box_loss), inference (= forward_inference > select_detections > decode, nms),
    detector_postprocess, backward, optimizer_step

The network (ResNet, FPN, head) is the same in both models: differences there are run-to-run noise,
and show how far to trust the others.

Per kind and model it also reports the convolutions' share of the step (the self time of the aten
convolution ops, forward and backward), the step's GFLOP (``torch.utils.flop_counter``, one more
unprofiled step) and so the rate the convolutions ran at, and the most the plugin could gain
without faster convolutions: Detectron2's step over the plugin's convolutions alone.

Usage (from the repository root; ``python -m benchmarks.profile_retinanet`` works the same):
    python benchmarks/profile_retinanet.py [--size 384x640] [--batch 2] [--threads 1] [--trace] \
        [--kinds train,inference]
    python benchmarks/profile_retinanet.py --stress   # 800x1333, 1 image, 500 boxes, training only
Writes ``retinanet_profile_[stress_]cpu.{json,md}`` (and with ``--trace`` Chrome traces) under
``--output``.
"""

if not __package__:  # run as a file: see benchmarks/bootstrap.py
    import bootstrap  # noqa: F401  (beside this file)

import argparse
import os
import tempfile
from collections import defaultdict
from typing import Callable, Dict

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import profile_stages, retinanet_child
from benchmarks.harness import RESULTS_DIR, inputs, machine, peers, report, weights

MODELS = ("plugin", "detectron2")
KINDS = ("train", "inference")


def build(model_name: str, args, weights_path: str):
    import retinanet_plugin  # noqa: F401

    cfg = peers.plugin_config("cpu", depth=args.depth, num_classes=inputs.NUM_CLASSES)
    torch.manual_seed(inputs.SEED)
    model = peers.build_model(model_name, cfg, args.size)
    weights.load_weights(model_name, model, weights_path)
    return model


def make_steps(model_name: str, model, args) -> Dict[str, Callable[[], object]]:
    """{"train": one training step (zero_grad, forward, backward, SGD step, each a scope),
    "inference": one batch-1 inference call}, on the benchmark's inputs."""
    runner = inputs.Runner(model_name, model, torch.device("cpu"))
    samples = inputs.make_samples(*args.size, args.batch, args.boxes)
    train_inputs = runner.training_inputs(samples)
    infer_inputs = runner.inference_inputs(samples[:1])
    optimizer = retinanet_child.sgd(model)

    def train_step():
        model.train()
        with record_function("zero_grad"):
            optimizer.zero_grad(set_to_none=True)
        with record_function("forward"):
            losses = runner(train_inputs)
            total = sum(losses.values())
        with record_function("backward"):
            total.backward()
        with record_function("optimizer_step"):
            optimizer.step()

    def infer_step():
        model.eval()
        with torch.no_grad(), record_function("forward"):
            return runner(infer_inputs)

    return {"train": train_step, "inference": infer_step}


def step_gflop(step: Callable[[], object]) -> float:
    """GFLOP of one call of ``step`` (``torch.utils.flop_counter``: convolutions and matrix
    products, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def profile_interleaved(models: Dict[str, torch.nn.Module], args):
    """Per kind, ``args.warmup`` unprofiled steps of each model, then ``args.steps`` profiled steps
    of each, alternating between the models (A B, B A, ...) so that a machine getting busier or
    quieter favours neither.

    Returns ({kind: {model: summary averaged over the steps, with the GFLOP of one more
    unprofiled step}}, {model: scopes applied}, {(model, kind): last profiler}).
    """
    from detectron2.utils.events import EventStorage

    steps = {name: make_steps(name, model, args) for name, model in models.items()}
    kinds = ("train",) if args.stress else args.kinds
    summaries, scopes, last = defaultdict(dict), {}, {}
    with EventStorage(0):
        for kind in kinds:
            for name, model in models.items():
                with profile_stages.instrumented(name, model) as applied:
                    scopes[name] = applied
                    for _ in range(args.warmup):
                        steps[name][kind]()
            gflop = {name: step_gflop(steps[name][kind]) for name in models}
            collected = defaultdict(list)
            for index in range(args.steps):
                for name in MODELS if index % 2 == 0 else MODELS[::-1]:
                    with profile_stages.instrumented(name, models[name]):
                        with profile(activities=[ProfilerActivity.CPU]) as prof:
                            steps[name][kind]()
                    collected[name].append(profile_stages.summarize(prof, 1))
                    last[name, kind] = prof
            for name in MODELS:
                summaries[kind][name] = profile_stages.average(collected[name])
                summaries[kind][name]["gflop"] = gflop[name]
                print(
                    f"{name} {kind}: {summaries[kind][name]['total_ms']:.0f} ms per step, profiled",
                    flush=True,
                )
    return summaries, scopes, last


def op_table(title: str, rows) -> list:
    lines = [
        "",
        f"Largest differences, {title}:",
        "",
        "| innermost stage \\| op (self time) | plugin ms | Detectron2 ms | plugin - Detectron2 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        op = row["op"].replace("|", "\\|")
        lines.append(
            f"| {op} | {row['plugin_ms']:.1f} | {row['detectron2_ms']:.1f} | "
            f"{row['plugin_ms'] - row['detectron2_ms']:+.1f} |"
        )
    return lines


def convolution_table(bound) -> list:
    """Markdown lines of ``profile_stages.convolution_bound``'s figures. The rate is the step's
    FLOPs (convolutions and matrix products; RetinaNet has no other matrix products than its
    convolutions' own) over the convolutions' time."""
    lines = [
        "",
        "Convolutions (self time of the aten convolution ops, forward and backward), and the GFLOP "
        "of a step (convolutions and matrix products):",
        "",
        "| model | GFLOP per step | convolutions ms | share of the step | GFLOP / convolution s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in bound["models"].items():
        lines.append(
            f"| {name} | {row.get('gflop', float('nan')):.1f} | {row['convolution_ms']:.1f} | "
            f"{row['share']:.1%} | {row.get('convolution_gflop_per_s', float('nan')):.1f} |"
        )
    lines += [
        "",
        f"Detectron2 / plugin: {bound['detectron2_over_plugin']:.2f}x; Detectron2 / the plugin's "
        f"convolutions alone: {bound['detectron2_over_plugin_convolutions']:.2f}x, the most that "
        "work outside the convolutions can give at this convolution speed.",
    ]
    return lines


def format_markdown(result) -> str:
    s = result["settings"]
    lines = [
        f"# Profile: plugin vs Detectron2 RetinaNet R{s['depth']}-FPN (CPU, {s['threads']} "
        "threads)",
        "",
        f"{result['machine']}. Image {s['size'][0]}x{s['size'][1]}, training batch "
        f"{s['batch']} ({s['boxes']} boxes per image)"
        f"{'' if s['stress'] else ', inference batch 1'}; mean of "
        f"{s['steps']} profiled steps per model, alternating between the models, after "
        f"{s['warmup']} warm-up steps; times from torch.profiler (its overhead included, so "
        "compare the two columns, not absolute numbers).",
        "",
    ]
    for kind, comparison in result["comparisons"].items():
        totals = comparison["total_ms"]
        lines += [
            f"## {kind}: plugin {totals['plugin']:.0f} ms, Detectron2 "
            f"{totals['detectron2']:.0f} ms",
            "",
            "| stage (inclusive) | plugin ms | Detectron2 ms | plugin - Detectron2 |",
            "| --- | ---: | ---: | ---: |",
        ]
        for row in comparison["stages"]:
            lines.append(
                f"| {row['stage']} | {row['plugin_ms']:.1f} | "
                f"{row['detectron2_ms']:.1f} | "
                f"{row['plugin_ms'] - row['detectron2_ms']:+.1f} |"
            )
        lines += convolution_table(comparison["convolutions"])
        lines += op_table("all ops", comparison["top_op_differences"])
        lines += op_table(
            "outside the network (ResNet/FPN/head forward, conv backward)",
            comparison["top_detection_op_differences"],
        )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--size", type=inputs.parse_size, help="HxW (default 384x640; --stress: 800x1333)")
    add("--batch", type=int, help="training batch (default 2; --stress: 1)")
    add(
        "--boxes",
        type=int,
        help=f"ground-truth boxes per image (default {inputs.BOXES_PER_IMAGE}; --stress: 500)",
    )
    add(
        "--warmup",
        type=int,
        help="unprofiled steps before the profiled ones (default 2; --stress: 1)",
    )
    add("--steps", type=int, help="profiled steps, averaged (default 3; --stress: 1)")
    add(
        "--stress",
        action="store_true",
        help="the benchmark's stress case, training only; writes retinanet_profile_stress_cpu.*",
    )
    add(
        "--kinds",
        type=lambda text: tuple(k.strip() for k in text.split(",")),
        default=KINDS,
        help="what to profile, comma-separated: train, inference (default both; --stress: train)",
    )
    add("--threads", type=int, help="torch threads (default: torch's default)")
    add("--depth", type=int, default=50, choices=(18, 34, 50, 101, 152))
    add("--top", type=int, default=25, help="op rows per kind")
    add(
        "--trace",
        action="store_true",
        help="also write Chrome traces (retinanet_profile_<model>_<kind>.json)",
    )
    add("--output", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.stress:
        defaults = {"size": (800, 1333), "batch": 1, "boxes": 500, "warmup": 1, "steps": 1}
    else:
        defaults = {
            "size": (384, 640),
            "batch": 2,
            "boxes": inputs.BOXES_PER_IMAGE,
            "warmup": 2,
            "steps": 3,
        }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.kinds or not set(args.kinds) <= set(KINDS):
        parser.error(f"--kinds must name some of {', '.join(KINDS)}")
    if min(args.batch, args.boxes, args.steps) < 1 or args.warmup < 0:
        parser.error("--batch, --boxes and --steps must be at least 1, --warmup at least 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="profile_retinanet_") as folder:
        files = weights.prepare_weights(MODELS, args.size, args.depth, folder)
        models = {name: build(name, args, files["detectron2"]["path"]) for name in MODELS}
    summaries, scopes, last = profile_interleaved(models, args)
    if args.trace:
        for (name, kind), prof in last.items():
            path = os.path.join(args.output, f"retinanet_profile_{name}_{kind}.json")
            prof.export_chrome_trace(path)
    info = machine.machine_info("cpu")
    result = {
        "machine": f"{info['cpu']}, {info['usable_cpus']} usable CPUs, torch {info['torch']}, load "
        f"average {info['load_average_at_start'][0]:.1f}, {info['date_utc']}"
        + (
            f", code at {info['git_commit'][:10]} + "
            f"{len(info.get('git_changed_files', []))} changed files"
            if info.get("git_commit")
            else ""
        ),
        "git_changed_files": info.get("git_changed_files"),
        "settings": {
            "size": list(args.size),
            "batch": args.batch,
            "steps": args.steps,
            "stress": args.stress,
            "boxes": args.boxes,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "depth": args.depth,
        },
        "scopes": scopes,
        "comparisons": {
            kind: profile_stages.compare(per_model, args.top)
            for kind, per_model in summaries.items()
        },
        "raw": summaries,
    }
    text = format_markdown(result)
    print(text)
    stem = f"retinanet_profile_{'stress_' if args.stress else ''}cpu"
    contents = {".json": report.json_bytes(result), ".md": text.encode()}
    for path in report.write_files(args.output, stem, contents):
        print(f"written {path}")
    return result


if __name__ == "__main__":
    main()
