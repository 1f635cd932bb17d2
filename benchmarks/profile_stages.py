"""The stages of ``profile_retinanet.py``: ``record_function`` scopes patched into both models, and
the profiler's events summed by stage and by (innermost stage, op).

The models' stages are wrapped in scopes by patching methods and submodules on the instances, and
module-level functions where each model's code looks them up; attributes that a version of the code
does not have are skipped. Scopes, outermost first; an op's self time goes to the innermost scope
around it.
"""

import contextlib
import functools
import importlib
import re
from collections import defaultdict
from typing import Callable, Dict, List

import torch
from torch.profiler import record_function

STAGES = (
    "zero_grad",
    "forward",
    "backward",
    "optimizer_step",
    "preprocess_image",
    "backbone",
    "bottom_up",
    "head",
    "transpose_predictions",
    "anchor_generator",
    "label_anchors",
    "pairwise_iou",
    "matcher",
    "losses",
    "focal_loss",
    "box_loss",
    "inference",
    "select_detections",
    "decode",
    "nms",
    "detector_postprocess",
)
STEP_STAGES = ("zero_grad", "forward", "backward", "optimizer_step")

DETECTRON2_DENSE_DETECTOR = "detectron2.modeling.meta_arch.dense_detector"
# (where, attribute, scope): "model" = the model instance, "model.X" = its submodule X's forward,
# else a module where the model's code looks the function up.
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
    (DETECTRON2_DENSE_DETECTOR, "detector_postprocess", "detector_postprocess"),
)
DETECTRON2_RETINANET = "detectron2.modeling.meta_arch.retinanet"
PLUGIN_SELECTION = "retinanet_plugin.modeling.detection_selection"
MODEL_PATCHES = {
    "detectron2": (
        (DETECTRON2_RETINANET, "pairwise_iou", "pairwise_iou"),
        (DETECTRON2_RETINANET, "sigmoid_focal_loss_jit", "focal_loss"),
        (DETECTRON2_RETINANET, "_dense_box_regression_loss", "box_loss"),
        (DETECTRON2_RETINANET, "batched_nms", "nms"),
        ("model", "inference_single_image", "select_detections"),  # per image; sigmoid outside it
        ("model", "_decode_multi_level_predictions", "decode"),
    ),
    "plugin": (
        ("retinanet_plugin.modeling.anchor_labeling", "pairwise_iou", "pairwise_iou"),
        # the losses chosen at construction (modeling/losses.py)
        ("model", "classification_loss", "focal_loss"),
        ("model", "box_regression_loss", "box_loss"),
        ("model", "inference", "inference"),  # the eager forward calls it (not forward_inference)
        ("retinanet_plugin.modeling.meta_arch", "select_detections", "select_detections"),
        ("retinanet_plugin.modeling.meta_arch", "detector_postprocess", "detector_postprocess"),
        (PLUGIN_SELECTION, "top_candidates", "decode"),
        (PLUGIN_SELECTION, "batched_nms", "nms"),
        (PLUGIN_SELECTION, "nms", "nms"),
    ),
}


class _Scoped:
    """Calls ``target`` inside ``record_function(name)`` and passes attribute reads through to it;
    for objects called with ``()`` whose attributes are read too (Detectron2's ``Matcher``)."""

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
    """Wraps the stages of ``model`` in ``record_function`` scopes; undone on exit. Yields the
    scopes applied."""
    undo, applied = [], []

    def patch(owner, attribute: str, scope: str, wrap=_scoped):
        if owner is None or not hasattr(owner, attribute):
            return
        original = getattr(owner, attribute)
        if isinstance(original, torch.nn.Module):  # a submodule: scope its forward
            return patch(original, "forward", scope, wrap)
        had_own = attribute in vars(owner)
        setattr(owner, attribute, wrap(scope, original))
        undo.append((owner, attribute, original, had_own))
        applied.append(f"{getattr(owner, '__name__', type(owner).__name__)}.{attribute} -> {scope}")

    for where, attribute, scope in COMMON_PATCHES + MODEL_PATCHES[model_name]:
        patch(_resolve(where, model), attribute, scope)
    patch(model, "anchor_matcher", "matcher", wrap=_Scoped)
    try:
        yield applied
    finally:
        for owner, attribute, original, had_own in reversed(undo):
            if had_own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)  # back to the class attribute


# ------------------------------------------------------------------------------------------ summing
def _innermost_stage(event) -> str:
    node = event.cpu_parent
    while node is not None:
        if node.name in STAGES:
            return node.name
        node = node.cpu_parent
    return "(outside)"


# aten's convolution ops, forward and backward: their dispatchers (conv2d, convolution,
# _convolution), oneDNN's (mkldnn_convolution), the native kernels PyTorch picks for small inputs
# (_slow_conv2d_forward, thnn_conv2d, ...) and convolution_backward; not the weight reorders.
CONVOLUTION_OP = re.compile(
    r"aten::(conv\w*|_?convolution\w*|mkldnn_convolution\w*|_?slow_conv\w*|thnn_conv\w*)"
)


def is_convolution(op_name: str) -> bool:
    """Whether ``op_name`` (a profiler event's name) is one of aten's convolution ops."""
    return CONVOLUTION_OP.fullmatch(op_name) is not None


def summarize(prof, steps: int) -> Dict[str, object]:
    """Inclusive ms per stage scope, and self ms per (innermost stage, op), per step (averaged over
    ``steps``)."""
    stages = defaultdict(float)
    calls = defaultdict(int)
    ops = defaultdict(float)
    for event in prof.events():
        if event.name in STAGES:
            # Nested calls of the same scope (none here) would be counted twice; they do not occur.
            stages[event.name] += event.cpu_time_total / 1e3 / steps
            calls[event.name] += 1
        else:
            key = f"{_innermost_stage(event)} | {event.name}"
            ops[key] += event.self_cpu_time_total / 1e3 / steps
    total = sum(stages[s] for s in STEP_STAGES)
    return {
        "total_ms": total,
        "stages_ms": dict(stages),
        "stage_calls": dict(calls),
        "ops_self_ms": dict(ops),
    }


def average(summaries: List[Dict[str, object]]) -> Dict[str, object]:
    """The mean of per-step summaries (an entry missing from a step counts as 0 there)."""
    count = len(summaries)
    merged = {
        "total_ms": sum(s["total_ms"] for s in summaries) / count,
        "stages_ms": defaultdict(float),
        "stage_calls": defaultdict(float),
        "ops_self_ms": defaultdict(float),
    }
    for summary in summaries:
        for key in ("stages_ms", "stage_calls", "ops_self_ms"):
            for name, value in summary[key].items():
                merged[key][name] += value / count
    return {k: dict(v) if isinstance(v, defaultdict) else v for k, v in merged.items()}


def convolution_ms(summary: Dict[str, object]) -> float:
    """The self ms of all convolution ops in a summary, whatever their stage."""
    return sum(
        ms for key, ms in summary["ops_self_ms"].items() if is_convolution(key.split(" | ")[1])
    )


def convolution_bound(results: Dict[str, Dict[str, object]]) -> Dict[str, object]:
    """How much of each model's step its convolutions take, at what rate, and the most the plugin
    could gain without faster convolutions: Detectron2's step over the plugin's convolutions alone
    (everything else taking no time). ``gflop`` (per step, ``torch.utils.flop_counter``: the
    convolutions and matrix products) is in each model's summary when measured."""
    models = {}
    for name, summary in results.items():
        conv_ms = convolution_ms(summary)
        row = {"convolution_ms": conv_ms, "share": conv_ms / summary["total_ms"]}
        if summary.get("gflop"):
            row["gflop"] = summary["gflop"]
            row["convolution_gflop_per_s"] = summary["gflop"] / (conv_ms / 1e3)
        models[name] = row
    detectron2_ms = results["detectron2"]["total_ms"]
    return {
        "models": models,
        "detectron2_over_plugin": detectron2_ms / results["plugin"]["total_ms"],
        "detectron2_over_plugin_convolutions": detectron2_ms / models["plugin"]["convolution_ms"],
    }


def compare(results: Dict[str, Dict[str, object]], top: int) -> Dict[str, object]:
    """Stage by stage and op by op: the plugin's ms next to Detectron2's, the largest differences
    first."""
    plugin, reference = results["plugin"], results["detectron2"]
    stage_rows = []
    for stage in STAGES:
        a, b = plugin["stages_ms"].get(stage), reference["stages_ms"].get(stage)
        if a is None and b is None:
            continue
        calls = [plugin["stage_calls"].get(stage, 0), reference["stage_calls"].get(stage, 0)]
        stage_rows.append(
            {"stage": stage, "plugin_ms": a or 0.0, "detectron2_ms": b or 0.0, "calls": calls}
        )
    keys = set(plugin["ops_self_ms"]) | set(reference["ops_self_ms"])
    op_rows = [
        {
            "op": k,
            "plugin_ms": plugin["ops_self_ms"].get(k, 0.0),
            "detectron2_ms": reference["ops_self_ms"].get(k, 0.0),
        }
        for k in keys
    ]
    op_rows.sort(key=lambda r: -abs(r["plugin_ms"] - r["detectron2_ms"]))
    # The network (ResNet, FPN, head) is the same in both: its differences are run-to-run noise, so
    # the ops of the detection-specific code are listed on their own (backward ops cannot be told
    # apart by stage).
    network = ("backbone |", "bottom_up |", "head |")
    detection_rows = [
        r
        for r in op_rows
        if not r["op"].startswith(network)
        and not (r["op"].startswith("backward |") and "conv" in r["op"])
    ]
    return {
        "total_ms": {"plugin": plugin["total_ms"], "detectron2": reference["total_ms"]},
        "convolutions": convolution_bound(results),
        "stages": stage_rows,
        "top_op_differences": op_rows[:top],
        "top_detection_op_differences": detection_rows[:top],
    }
