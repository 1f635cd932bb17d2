"""Where the plugin's RetinaNet spends its time next to Detectron2's: ``torch.profiler`` over training steps
(forward + backward + SGD step) and batch-1 inference calls of both models, with identical weights and inputs
(those of ``bench_retinanet.py``), after warm-up steps.

Both models live in one process, and their profiled steps alternate (plugin, Detectron2, Detectron2, plugin,
...), so that other jobs on a shared machine weigh on both alike. The models' stages are wrapped in
``record_function`` scopes (methods and submodules patched on the instances, module-level functions where each
model's code looks them up), so the report gives, per stage, the inclusive CPU time of both models, and the ops
whose self time differs most, by innermost stage:

    preprocess_image, backbone (bottom_up = the ResNet; the rest is FPN + P6/P7), head, transpose_predictions,
    anchor_generator, label_anchors (> pairwise_iou, matcher), losses (> focal_loss, box_loss),
    inference (= forward_inference > select_detections > decode, nms), detector_postprocess,
    backward, optimizer_step

The network (ResNet, FPN, head) is the same in both models: differences there are run-to-run noise, and show
how far to trust the others.

Usage:
    python benchmarks/profile_retinanet.py [--size 384x640] [--batch 2] [--threads 1] [--trace]
    python benchmarks/profile_retinanet.py --stress        # 800x1333, 1 image, 500 boxes, training step only
Writes ``retinanet_profile_[stress_]cpu.{json,md}`` (and with ``--trace`` Chrome traces) under ``--output``.
"""
import argparse
import contextlib
import functools
import importlib
import json
import os
import sys
import tempfile
from collections import defaultdict
from types import SimpleNamespace
from typing import Callable, Dict, List

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_retinanet as bench  # noqa: E402
import peers  # noqa: E402

MODELS = ("plugin", "detectron2")
# Scopes, outermost first; an op's self time goes to the innermost scope around it.
STAGES = (
    "zero_grad", "forward", "backward", "optimizer_step",
    "preprocess_image", "backbone", "bottom_up", "head", "transpose_predictions", "anchor_generator",
    "label_anchors", "pairwise_iou", "matcher", "losses", "focal_loss", "box_loss",
    "inference", "select_detections", "decode", "nms", "detector_postprocess",
)


class _Scoped:
    """Calls ``target`` inside ``record_function(name)`` and passes attribute reads through to it; for objects
    called with ``()`` whose attributes are read too (Detectron2's ``Matcher``)."""

    def __init__(self, name: str, target):
        self._scope_name, self._target = name, target

    def __call__(self, *args, **kwargs):
        with record_function(self._scope_name):
            return self._target(*args, **kwargs)

    def __getattr__(self, attribute):
        return getattr(self._target, attribute)


def _scoped(name: str, function: Callable) -> Callable:
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with record_function(name):
            return function(*args, **kwargs)

    return wrapper


# (where, attribute, scope): "model" = the model instance, "model.X" = its submodule X's forward, else a module
# where the model's code looks the function up. Attributes that a version of the code does not have are skipped.
COMMON_PATCHES = (
    ("model", "preprocess_image", "preprocess_image"),
    ("model", "_transpose_dense_predictions", "transpose_predictions"),
    ("model", "label_anchors", "label_anchors"),
    ("model", "losses", "losses"),
    ("model", "forward_inference", "inference"),
    ("model.backbone", "forward", "backbone"),
    ("model.backbone.bottom_up", "forward", "bottom_up"),
    ("model.head", "forward", "head"),
    ("model.anchor_generator", "forward", "anchor_generator"),
    ("detectron2.modeling.meta_arch.dense_detector", "detector_postprocess", "detector_postprocess"),
)
MODEL_PATCHES = {
    "detectron2": (
        ("detectron2.modeling.meta_arch.retinanet", "pairwise_iou", "pairwise_iou"),
        ("detectron2.modeling.meta_arch.retinanet", "sigmoid_focal_loss_jit", "focal_loss"),
        ("detectron2.modeling.meta_arch.retinanet", "_dense_box_regression_loss", "box_loss"),
        ("detectron2.modeling.meta_arch.retinanet", "batched_nms", "nms"),
        ("model", "inference_single_image", "select_detections"),  # per image; the sigmoid is outside it
        ("model", "_decode_multi_level_predictions", "decode"),
    ),
    "plugin": (
        ("retinanet_plugin.modeling.meta_arch", "pairwise_iou", "pairwise_iou"),
        ("retinanet_plugin.modeling.anchor_labeling", "pairwise_iou", "pairwise_iou"),
        ("model", "_box_loss", "box_loss"),
        ("model", "inference", "select_detections"),  # all images at once, sigmoid included
        ("retinanet_plugin.modeling.detection_selection", "top_candidates", "decode"),
        ("retinanet_plugin.modeling.detection_selection", "batched_nms", "nms"),
        ("retinanet_plugin.modeling.detection_selection", "nms", "nms"),
    ),
}


def _resolve(where: str, model):
    if where == "model":
        return model
    if where.startswith("model."):
        owner = model
        for part in where.split(".")[1:]:
            owner = getattr(owner, part, None)
        return owner
    try:
        return importlib.import_module(where)
    except ImportError:
        return None


@contextlib.contextmanager
def instrumented(model_name: str, model: torch.nn.Module):
    """Wraps the stages of ``model`` in ``record_function`` scopes; undone on exit. Yields the scopes applied."""
    undo, applied = [], []

    def patch(owner, attribute: str, scope: str, wrap=_scoped):
        if owner is None or not hasattr(owner, attribute):
            return
        had_own = attribute in vars(owner)
        original = getattr(owner, attribute)
        setattr(owner, attribute, wrap(scope, original))
        undo.append((owner, attribute, original, had_own))
        applied.append(f"{getattr(owner, '__name__', type(owner).__name__)}.{attribute} -> {scope}")

    for where, attribute, scope in COMMON_PATCHES + MODEL_PATCHES[model_name]:
        patch(_resolve(where, model), attribute, scope)
    patch(model, "anchor_matcher", "matcher", wrap=_Scoped)
    impls, original_impl = None, None
    if model_name == "plugin":
        impls = importlib.import_module("retinanet_plugin.modeling.meta_arch").FOCAL_LOSS_IMPLS
        original_impl = impls[model.focal_loss_impl]
        impls[model.focal_loss_impl] = _scoped("focal_loss", original_impl)
        applied.append(f"FOCAL_LOSS_IMPLS[{model.focal_loss_impl!r}] -> focal_loss")
    try:
        yield applied
    finally:
        if impls is not None:
            impls[model.focal_loss_impl] = original_impl
        for owner, attribute, original, had_own in reversed(undo):
            if had_own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)  # back to the class attribute


def build(model_name: str, args, weights_path: str):
    import retinanet_plugin  # noqa: F401

    cfg = peers.plugin_config("cpu", depth=args.depth, num_classes=bench.NUM_CLASSES)
    torch.manual_seed(bench.SEED)
    model = peers.build_detectron2_model(cfg) if model_name == "detectron2" else peers.build_plugin_model(cfg)
    bench.load_weights(model_name, model, weights_path)
    return model


def make_steps(model_name: str, model, args) -> Dict[str, Callable[[], object]]:
    """{"train": one training step (zero_grad, forward, backward, SGD step, each a scope), "inference": one
    batch-1 inference call}, on the benchmark's inputs."""
    runner = bench.Runner(model_name, model, torch.device("cpu"))
    samples = bench.make_samples(*args.size, args.batch, args.boxes)
    train_inputs = runner.training_inputs(samples)
    infer_inputs = runner.inference_inputs(samples[:1])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=bench.LEARNING_RATE,
                                momentum=bench.MOMENTUM, weight_decay=bench.WEIGHT_DECAY)

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


def profile_interleaved(models: Dict[str, torch.nn.Module], args):
    """Per kind, ``args.warmup`` unprofiled steps of each model, then ``args.steps`` profiled steps of each,
    alternating between the models (A B, B A, ...) so that a machine getting busier or quieter favours neither.

    Returns ({kind: {model: summary averaged over the steps}}, {model: scopes applied}, {(model, kind): last profiler}).
    """
    from detectron2.utils.events import EventStorage

    steps = {name: make_steps(name, model, args) for name, model in models.items()}
    kinds = ("train",) if args.stress else ("train", "inference")
    summaries, scopes, last = defaultdict(dict), {}, {}
    with EventStorage(0):
        for kind in kinds:
            for name, model in models.items():
                with instrumented(name, model) as applied:
                    scopes[name] = applied
                    for _ in range(args.warmup):
                        steps[name][kind]()
            collected = defaultdict(list)
            for index in range(args.steps):
                for name in (MODELS if index % 2 == 0 else MODELS[::-1]):
                    with instrumented(name, models[name]):
                        with profile(activities=[ProfilerActivity.CPU]) as prof:
                            steps[name][kind]()
                    collected[name].append(summarize(prof, 1))
                    last[name, kind] = prof
            for name in MODELS:
                summaries[kind][name] = average(collected[name])
                print(f"{name} {kind}: {summaries[kind][name]['total_ms']:.0f} ms per step, profiled", flush=True)
    return summaries, scopes, last


def average(summaries: List[Dict[str, object]]) -> Dict[str, object]:
    """The mean of per-step summaries (an entry missing from a step counts as 0 there)."""
    count = len(summaries)
    merged = {"total_ms": sum(s["total_ms"] for s in summaries) / count, "stages_ms": defaultdict(float),
              "stage_calls": defaultdict(float), "ops_self_ms": defaultdict(float)}
    for summary in summaries:
        for key in ("stages_ms", "stage_calls", "ops_self_ms"):
            for name, value in summary[key].items():
                merged[key][name] += value / count
    return {k: dict(v) if isinstance(v, defaultdict) else v for k, v in merged.items()}


def _innermost_stage(event) -> str:
    node = event.cpu_parent
    while node is not None:
        if node.name in STAGES:
            return node.name
        node = node.cpu_parent
    return "(outside)"


def summarize(prof, steps: int) -> Dict[str, object]:
    """Inclusive ms per stage scope, and self ms per (innermost stage, op), per step (averaged over ``steps``)."""
    stages = defaultdict(float)
    calls = defaultdict(int)
    ops = defaultdict(float)
    for event in prof.events():
        if event.name in STAGES:
            # Nested calls of the same scope (none here) would be counted twice; they do not occur.
            stages[event.name] += event.cpu_time_total / 1e3 / steps
            calls[event.name] += 1
        else:
            ops[f"{_innermost_stage(event)} | {event.name}"] += event.self_cpu_time_total / 1e3 / steps
    total = sum(stages[s] for s in ("zero_grad", "forward", "backward", "optimizer_step"))
    return {"total_ms": total, "stages_ms": dict(stages), "stage_calls": dict(calls), "ops_self_ms": dict(ops)}


def compare(results: Dict[str, Dict[str, object]], top: int) -> Dict[str, object]:
    plugin, reference = results["plugin"], results["detectron2"]
    stage_rows = []
    for stage in STAGES:
        a, b = plugin["stages_ms"].get(stage), reference["stages_ms"].get(stage)
        if a is None and b is None:
            continue
        stage_rows.append({"stage": stage, "plugin_ms": a or 0.0, "detectron2_ms": b or 0.0,
                           "calls": [plugin["stage_calls"].get(stage, 0), reference["stage_calls"].get(stage, 0)]})
    keys = set(plugin["ops_self_ms"]) | set(reference["ops_self_ms"])
    op_rows = [{"op": k, "plugin_ms": plugin["ops_self_ms"].get(k, 0.0), "detectron2_ms": reference["ops_self_ms"].get(k, 0.0)}
               for k in keys]
    op_rows.sort(key=lambda r: -abs(r["plugin_ms"] - r["detectron2_ms"]))
    # The network (ResNet, FPN, head) is the same in both: its differences are run-to-run noise, so the ops of
    # the detection-specific code are listed on their own (backward ops cannot be told apart by stage).
    network = ("backbone |", "bottom_up |", "head |")
    detection_rows = [r for r in op_rows if not r["op"].startswith(network)
                      and not (r["op"].startswith("backward |") and "conv" in r["op"])]
    return {"total_ms": {"plugin": plugin["total_ms"], "detectron2": reference["total_ms"]},
            "stages": stage_rows, "top_op_differences": op_rows[:top],
            "top_detection_op_differences": detection_rows[:top]}


def format_markdown(report) -> str:
    s = report["settings"]
    lines = [f"# Profile: plugin vs Detectron2 RetinaNet R{s['depth']}-FPN (CPU, {s['threads']} threads)", "",
             f"{report['machine']}. Image {s['size'][0]}x{s['size'][1]}, training batch {s['batch']} "
             f"({s['boxes']} boxes per image){'' if s['stress'] else ', inference batch 1'}; mean of {s['steps']} profiled steps "
             f"per model, alternating between the models, after {s['warmup']} warm-up steps; "
             "times from torch.profiler (its overhead included, so compare the two columns, not absolute numbers).", ""]
    for kind, comparison in report["comparisons"].items():
        totals = comparison["total_ms"]
        lines += [f"## {kind}: plugin {totals['plugin']:.0f} ms, Detectron2 {totals['detectron2']:.0f} ms", "",
                  "| stage (inclusive) | plugin ms | Detectron2 ms | plugin - Detectron2 |", "| --- | ---: | ---: | ---: |"]
        for row in comparison["stages"]:
            lines.append(f"| {row['stage']} | {row['plugin_ms']:.1f} | {row['detectron2_ms']:.1f} | "
                         f"{row['plugin_ms'] - row['detectron2_ms']:+.1f} |")
        for title, key in (("all ops", "top_op_differences"),
                           ("outside the network (ResNet/FPN/head forward, conv backward)", "top_detection_op_differences")):
            lines += ["", f"Largest differences, {title}:", "",
                      "| innermost stage \\| op (self time) | plugin ms | Detectron2 ms | plugin - Detectron2 |",
                      "| --- | ---: | ---: | ---: |"]
            for row in comparison[key]:
                op = row["op"].replace("|", "\\|")
                lines.append(f"| {op} | {row['plugin_ms']:.1f} | {row['detectron2_ms']:.1f} | "
                             f"{row['plugin_ms'] - row['detectron2_ms']:+.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=bench.parse_size, help="HxW (default 384x640; --stress: 800x1333)")
    parser.add_argument("--batch", type=int, help="training batch (default 2; --stress: 1)")
    parser.add_argument("--boxes", type=int, help=f"ground-truth boxes per image (default {bench.BOXES_PER_IMAGE}; --stress: 500)")
    parser.add_argument("--warmup", type=int, help="unprofiled steps before the profiled ones (default 2; --stress: 1)")
    parser.add_argument("--steps", type=int, help="profiled steps, averaged (default 3; --stress: 1)")
    parser.add_argument("--stress", action="store_true",
                        help="the benchmark's stress case, training only; writes retinanet_profile_stress_cpu.*")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101, 152))
    parser.add_argument("--top", type=int, default=25, help="op rows per kind")
    parser.add_argument("--trace", action="store_true", help="also write Chrome traces (retinanet_profile_<model>_<kind>.json)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    defaults = ({"size": (800, 1333), "batch": 1, "boxes": 500, "warmup": 1, "steps": 1} if args.stress else
                {"size": (384, 640), "batch": 2, "boxes": bench.BOXES_PER_IMAGE, "warmup": 2, "steps": 3})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.batch, args.boxes, args.steps) < 1 or args.warmup < 0:
        parser.error("--batch, --boxes and --steps must be at least 1, --warmup at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    from retinanet_plugin.utils import atomic_write

    with tempfile.TemporaryDirectory(prefix="profile_retinanet_") as folder:
        weights = bench.prepare_weights(MODELS, SimpleNamespace(sizes=[args.size], depth=args.depth), folder)
        models = {name: build(name, args, weights["detectron2"]["path"]) for name in MODELS}
    summaries, scopes, last = profile_interleaved(models, args)
    if args.trace:
        for (name, kind), prof in last.items():
            prof.export_chrome_trace(os.path.join(args.output, f"retinanet_profile_{name}_{kind}.json"))
    info = bench.machine_info("cpu")
    report = {
        "machine": f"{info['cpu']}, {info['usable_cpus']} usable CPUs, torch {info['torch']}, load average "
                   f"{info['load_average_at_start'][0]:.1f}, {info['date_utc']}"
                   + (f", code at {info['git_commit'][:10]} + {len(info.get('git_changed_files', []))} changed files"
                      if info.get("git_commit") else ""),
        "git_changed_files": info.get("git_changed_files"),
        "settings": {"size": list(args.size), "batch": args.batch, "steps": args.steps, "stress": args.stress, "boxes": args.boxes, "warmup": args.warmup,
                     "threads": torch.get_num_threads(), "depth": args.depth},
        "scopes": scopes,
        "comparisons": {kind: compare(per_model, args.top) for kind, per_model in summaries.items()},
        "raw": summaries,
    }
    text = format_markdown(report)
    print(text)
    for extension, data in ((".json", json.dumps(report, indent=2).encode()), (".md", text.encode())):
        path = os.path.join(args.output, f"retinanet_profile_{'stress_' if args.stress else ''}cpu" + extension)
        atomic_write(path, lambda f, data=data: f.write(data))
        print(f"written {path}")
    return report


if __name__ == "__main__":
    main()
