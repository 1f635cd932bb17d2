"""Benchmark of the plugin's RetinaNet against Detectron2's ``RetinaNet`` and torchvision's, in one run.

Models (``benchmarks/peers.py``): the plugin from ``configs/retinanet_R50.yaml``; Detectron2's RetinaNet from
the same config (three component names changed), with the plugin's weights identical to it (copied through the
checkpoint converter); torchvision's RetinaNet with matching settings (R50-FPN, P3-P7, 9 anchors, IoU 0.4/0.5,
top-1000, NMS 0.5, score 0.05, 100 detections), whose weights cannot be the same (another module layout).
No pretrained weights: random initialisation, calibrated so activations stay in range and 0.1% of the
(anchor, class) scores pass the score threshold for every model (``peers.calibrate_random_weights``).

Inputs: seeded synthetic images (smooth noise) already at the benchmark size, with seeded ground-truth boxes
(sizes 8 px to 60% of the short side, aspect ratios 1:3 to 3:1, 80 classes), identical for all models:
Detectron2/plugin get BGR 0-255, torchvision the same pixels as RGB 0-1, whose transform keeps the size (scale
exactly 1.0). Every model pads to a multiple of 32, so all see the same tensor size.

Measured, each model in its own child processes (``subprocess``), after ``--warmup`` steps that are not timed:

- training step: forward + backward + SGD step (lr 1e-4, momentum 0.9, weight decay 1e-4; the weights are
  reloaded before each case), ``--reps`` steps, for each training batch size;
- inference per image: ``model.eval()``, ``torch.no_grad()``, batch ``--infer-batch`` (default 1), the whole
  call (normalisation, padding, network, decoding, top-k, NMS, rescaling) divided by the batch size;
- ``--rounds`` timing child processes per model, in alternating model order (A B C, C B A, ...), their
  repetitions pooled, so that a shared machine getting busier or quieter during the run favours no model;
- peak memory of the measured steps above what the process held after building the model and inputs:
  CUDA ``torch.cuda.max_memory_allocated()`` (peak reset after the warm-up) minus ``memory_allocated()``
  before the warm-up, in the timing child; CPU: in one more child process per model (``--memory-reps``
  steps after the same warm-up), peak resident set size ``VmHWM`` (reset after the warm-up through
  ``/proc/self/clear_refs``) minus ``VmRSS`` before the warm-up (after ``gc`` and ``malloc_trim``), with
  glibc's mmap threshold fixed at 128 KiB so that freed tensors go back to the OS and RSS follows the live
  tensors. (With the default, adaptive threshold malloc keeps freed blocks of up to 32 MiB for reuse, and the
  peak says more about the allocator than about the model; that figure, from the timing child, is in the
  JSON as ``default_malloc_peak_increase_bytes``.)

Times are reported as the median, interquartile range and min/max of the repetitions; ratios are
peer / plugin (above 1: the plugin is faster or needs less memory). AMP: ``torch.autocast`` (fp16 with
``GradScaler`` on CUDA; bf16 without scaler on the CPU).

Usage:
    python benchmarks/bench_retinanet.py                        # CPU suite (384x640, batch 2 train, 1 infer)
    python benchmarks/bench_retinanet.py --device cuda          # COCO setting, batch 2 and 8, fp32 and AMP
    python benchmarks/bench_retinanet.py --stress               # 1 image, 500 boxes, 800x1333, training only
Writes ``retinanet_<device>[_stress].{json,md,png}`` under ``--output`` and prints the table.
"""
import argparse
import contextlib
import ctypes
import datetime
import gc
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (beside this file)
from machine_info import cpu_name  # noqa: E402  (beside this file)

DEFAULTS = {
    "cpu": {"sizes": "384x640", "batch": "2", "reps": 3, "warmup": 2, "amp": False, "rounds": 2},
    "cuda": {"sizes": "800x1333", "batch": "2,8", "reps": 10, "warmup": 3, "amp": True, "rounds": 1},
}
STRESS = {"sizes": "800x1333", "batch": "1", "boxes": 500, "reps": 1, "warmup": 1}
BOXES_PER_IMAGE = 8  # COCO has 7.3 objects per image on average
NUM_CLASSES = 80
SEED = 0
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 1e-4, 0.9, 1e-4
CANDIDATE_FRACTION = 1e-3  # of (anchor, class) scores above the score threshold (see calibrate_random_weights)
RESULT_MARK = "@@RESULT "
# CPU peak memory runs with glibc's mmap threshold fixed (not adapted to the sizes freed): every allocation of
# 128 KiB or more is its own mapping, returned to the OS when freed, so RSS follows the memory held by live
# tensors instead of what malloc keeps for reuse. Timing runs keep the default allocator.
CPU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
NORMALIZER_EMA_INIT = 100.0  # Detectron2's start value, the plugin config's default


# ------------------------------------------------------------------------------------------------- inputs
def parse_size(text: str):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HEIGHTxWIDTH, e.g. 800x1333") from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be at least 32 pixels")
    return height, width


def make_samples(height: int, width: int, num_images: int, boxes_per_image: int, seed: int = SEED):
    """``num_images`` (image [3, H, W] float32 BGR 0-255, boxes [G, 4] XYXY pixels, classes [G] int64), seeded.

    Images are smooth noise (random values on a grid 16x coarser, bilinearly upsampled); boxes have a
    log-uniform size (sqrt of the area) from 8 px to 60% of the short side and aspect ratios 1:3 to 3:1.
    """
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num_images):
        coarse = torch.rand(1, 3, max(1, height // 16), max(1, width // 16), generator=generator)
        image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        image = (image[0] * 255.0).contiguous()
        g = boxes_per_image
        side = torch.exp(torch.empty(g).uniform_(math.log(8.0), math.log(0.6 * min(height, width)), generator=generator))
        ratio = torch.exp(torch.empty(g).uniform_(math.log(1 / 3), math.log(3.0), generator=generator))  # h / w
        box_w, box_h = side / ratio.sqrt(), side * ratio.sqrt()
        cx = torch.rand(g, generator=generator) * width
        cy = torch.rand(g, generator=generator) * height
        boxes = torch.stack([cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2], dim=1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        # Clipping can make a box thin: keep every box at least 2 px wide and high, inside the image.
        boxes[:, 2] = torch.maximum(boxes[:, 2], (boxes[:, 0] + 2).clamp(max=width))
        boxes[:, 0] = torch.minimum(boxes[:, 0], boxes[:, 2] - 2)
        boxes[:, 3] = torch.maximum(boxes[:, 3], (boxes[:, 1] + 2).clamp(max=height))
        boxes[:, 1] = torch.minimum(boxes[:, 1], boxes[:, 3] - 2)
        classes = torch.randint(0, NUM_CLASSES, (g,), generator=generator)
        samples.append((image, boxes, classes))
    return samples


class Runner:
    """Feeds one model its own input format and counts its detections."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device):
        self.name, self.model, self.device = name, model, device

    def training_inputs(self, samples):
        if self.name == "torchvision":
            images = [image.flip(0).div(255.0).to(self.device) for image, _, _ in samples]
            targets = [{"boxes": b.to(self.device), "labels": c.to(self.device)} for _, b, c in samples]
            return images, targets
        from detectron2.structures import Boxes, Instances

        batch = []
        for image, boxes, classes in samples:
            instances = Instances(tuple(image.shape[-2:]))
            instances.gt_boxes = Boxes(boxes.to(self.device))
            instances.gt_classes = classes.to(self.device)
            batch.append({"image": image.to(self.device), "instances": instances})
        return (batch,)

    def inference_inputs(self, samples):
        if self.name == "torchvision":
            return ([image.flip(0).div(255.0).to(self.device) for image, _, _ in samples],)
        return ([{"image": image.to(self.device)} for image, _, _ in samples],)

    def __call__(self, inputs):
        return self.model(*inputs)

    def detection_counts(self, outputs) -> List[int]:
        if self.name == "torchvision":
            return [len(o["boxes"]) for o in outputs]
        return [len(o["instances"]) for o in outputs]


# ------------------------------------------------------------------------------------------------- memory
class MemoryMeter:
    """Peak memory of a measured stretch above a baseline: CUDA allocator statistics, or the process's RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"{field} is not in /proc/self/status: peak RSS needs Linux")

    def settle(self) -> None:
        """Release what can be released, so the baseline is what the process really holds."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        else:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)

    def take_baseline(self) -> None:
        self.settle()
        if self.device.type == "cuda":
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline = self._status_kib("VmRSS") * 1024

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := current VmRSS

    def peak(self) -> Dict[str, int]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"peak_bytes": peak, "baseline_bytes": self.baseline, "peak_increase_bytes": peak - self.baseline,
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device)}
        peak = self._status_kib("VmHWM") * 1024
        return {"peak_bytes": peak, "baseline_bytes": self.baseline, "peak_increase_bytes": peak - self.baseline}


# -------------------------------------------------------------------------------------------------- child
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: Sequence[float], kind: str, batch: int) -> Dict[str, object]:
    """Median, quartiles, min and max of ``times`` (s); for inference also per image (divided by ``batch``)."""
    times = list(times)
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    summary = {"times_s": times, "median_s": statistics.median(times), "q1_s": q1, "q3_s": q3,
               "min_s": min(times), "max_s": max(times)}
    if kind == "inference":
        for key in ("median_s", "q1_s", "q3_s", "min_s", "max_s"):
            summary[key + "_per_image"] = summary[key] / batch
    return summary


def autocast_for(device: torch.device, amp: bool):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=amp)


def build_child_model(spec):
    """The model named by ``spec`` (random weights, on the CPU; ``run_case`` loads the benchmark's weights)."""
    name = spec["model"]
    cfg = peers.plugin_config("cpu", depth=spec["depth"], num_classes=NUM_CLASSES)
    if name == "torchvision":
        model = peers.build_torchvision_model(cfg, tuple(spec["cases"][0]["size"]))
    elif name == "detectron2":
        model = peers.build_detectron2_model(cfg)
    else:
        model = peers.build_plugin_model(cfg)
    return model


def load_weights(name: str, model: torch.nn.Module, path: str) -> str:
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if name == "plugin":
        peers.copy_detectron2_weights(state_dict, model)
    else:
        model.load_state_dict(state_dict, strict=True)
    fingerprint = peers.weights_fingerprint(model.state_dict(), list(state_dict))
    del state_dict
    # The loss normaliser's moving average starts afresh too (Detectron2 creates it on the first step).
    if name == "plugin":
        model.loss_normalizer.fill_(NORMALIZER_EMA_INIT)
    elif name == "detectron2":
        model.__dict__.pop("loss_normalizer", None)
    return fingerprint


def run_case(runner: Runner, case, spec, meter: MemoryMeter) -> Dict[str, object]:
    from detectron2.utils.events import EventStorage

    device, model = runner.device, runner.model
    height, width = case["size"]
    if runner.name == "torchvision":
        peers.keep_torchvision_image_size(model, (height, width))
    fingerprint = load_weights(runner.name, model, spec["weights"])  # every case starts from the same weights
    autocast = autocast_for(device, case["amp"])
    samples = make_samples(height, width, case["batch"], case["boxes"])
    result = {"weights_fingerprint": fingerprint, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        result["cuda_info"] = cuda_info()

    if case["kind"] == "train":
        inputs = runner.training_inputs(samples)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        scaler = torch.amp.GradScaler(device.type, enabled=case["amp"] and device.type == "cuda")

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                losses = runner(inputs)
                total = sum(losses.values())
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            return losses
    else:
        inputs = runner.inference_inputs(samples)
        model.eval()

        def step():
            with torch.no_grad(), autocast():
                return runner(inputs)

    del samples
    with EventStorage(0):
        meter.take_baseline()
        outputs = [step() for _ in range(case["warmup"])]
        first = outputs[0] if outputs else None
        del outputs
        meter.reset_peak()
        times, cpu_times = [], []
        for _ in range(case["reps"]):
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            last = step()
            synchronize(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        result.update(meter.peak())
    first = first if first is not None else last
    result.update(summarize(times, case["kind"], case["batch"]))
    if device.type == "cpu":
        result["cpu_times_s"] = cpu_times
        result["cpu_median_s"] = statistics.median(cpu_times)
    if case["kind"] == "train":
        result["first_losses"] = {k: float(v) for k, v in first.items()}
        result["last_losses"] = {k: float(v) for k, v in last.items()}
        result["finite"] = all(math.isfinite(v) for v in result["last_losses"].values())
        del optimizer, params
        model.zero_grad(set_to_none=True)
    else:
        result["detections_per_image"] = runner.detection_counts(last)
    del first, last, inputs
    meter.settle()
    return result


def child_main(spec) -> None:
    """Runs every case of one model and prints one result line per case (so a crash keeps the earlier ones)."""
    import retinanet_plugin  # noqa: F401  (registers the plugin's components)

    device = torch.device(spec["device"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(SEED)
    model = build_child_model(spec).to(device)
    runner = Runner(spec["model"], model, device)
    meter = MemoryMeter(device)
    for index, case in enumerate(spec["cases"]):
        try:
            result = run_case(runner, case, spec, meter)
        except torch.cuda.OutOfMemoryError as error:
            result = {"error": f"CUDA out of memory: {str(error).splitlines()[0]}"}
        except Exception as error:  # recorded with the case; the other cases still run
            traceback.print_exc()
            result = {"error": f"{type(error).__name__}: {error}"}
        if "error" in result:
            model.zero_grad(set_to_none=True)
            meter.settle()
        print(RESULT_MARK + json.dumps({"case": index, "result": result}), flush=True)
        if "median_s" in result and spec["purpose"] == "memory":
            print(f"  {spec['model']:>11}  {case_label(case)}: peak +{result['peak_increase_bytes'] / 2**20:.0f} MiB",
                  flush=True)
        elif "median_s" in result:
            print(f"  {spec['model']:>11}  {case_label(case)}: median {result['median_s'] * 1e3:.1f} ms", flush=True)


def run_child(model: str, cases, args, weights: str, purpose: str = "timing") -> List[Dict[str, object]]:
    """One child process for ``model``; returns one result per case (an ``error`` entry where it failed).

    ``purpose`` "memory" runs it with ``CPU_MEMORY_ENV``."""
    spec = {"model": model, "device": args.device, "depth": args.depth, "cases": cases, "weights": weights,
            "threads": args.threads, "purpose": purpose}
    env = CPU_MEMORY_ENV if purpose == "memory" else {}
    results: List[Optional[Dict[str, object]]] = [None] * len(cases)
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=dict(os.environ, **env),
        )
        for line in process.stdout:
            if line.startswith(RESULT_MARK):
                entry = json.loads(line[len(RESULT_MARK):])
                results[entry["case"]] = entry["result"]
            else:
                print(line, end="", flush=True)
        returncode = process.wait()
        stderr.seek(0)
        tail = stderr.read()[-3000:]
    if returncode != 0:
        reason = f"child process exited with code {returncode}"
        if returncode == -9:
            reason += " (SIGKILL: out of memory?)"
        print(f"  {model}: {reason}\n{tail}", file=sys.stderr)
        for i, result in enumerate(results):
            if result is None:
                results[i] = {"error": f"{reason}; stderr ends with: {tail[-500:]}"}
    return results


# ------------------------------------------------------------------------------------------------- parent
def case_label(case) -> str:
    h, w = case["size"]
    label = f"{case['kind']} {h}x{w} b{case['batch']} {'amp' if case['amp'] else 'fp32'}"
    return label + (f" {case['boxes']} boxes" if case.get("stress") else "")


def build_cases(args) -> List[Dict[str, object]]:
    cases = []
    for amp in ([False, True] if args.amp else [False]):
        for size in args.sizes:
            common = {"size": list(size), "amp": amp, "reps": args.reps, "warmup": args.warmup, "boxes": args.boxes}
            for batch in args.batch:
                cases.append(dict(common, kind="train", batch=batch, stress=args.stress))
            if not args.stress:
                cases.append(dict(common, kind="inference", batch=args.infer_batch))
    return cases


def prepare_weights(models: Sequence[str], args, folder: str) -> Dict[str, Dict[str, object]]:
    """Seeded, calibrated weights for Detectron2's layout (shared by the plugin) and torchvision's, saved
    under ``folder``; built on the CPU, on an inference image of the first size."""
    import retinanet_plugin  # noqa: F401

    cfg = peers.plugin_config("cpu", depth=args.depth, num_classes=NUM_CLASSES)
    image = make_samples(*args.sizes[0], 1, 0, seed=SEED + 1)[0][0]
    out = {}
    for layout in sorted({"torchvision" if m == "torchvision" else "detectron2" for m in models}):
        torch.manual_seed(SEED)
        if layout == "torchvision":
            model = peers.build_torchvision_model(cfg, args.sizes[0])
            inputs = [image.flip(0) / 255.0]
        else:
            model = peers.build_detectron2_model(cfg)
            inputs = [{"image": image}]
        calibration = peers.calibrate_random_weights(
            model, lambda: model(inputs), torch.Generator().manual_seed(SEED + 2), CANDIDATE_FRACTION,
            cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
        )
        path = os.path.join(folder, f"{layout}.pth")
        torch.save(model.state_dict(), path)
        out[layout] = {"path": path, "calibration": calibration}
        del model
    return out


def machine_info(device: str) -> Dict[str, object]:
    import detectron2
    import torchvision

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "memory_total_bytes": _meminfo_bytes("MemTotal"),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": getattr(detectron2, "__version__", "unknown"),
    }
    info.update(_source_version())
    with contextlib.suppress(Exception):
        from retinanet_plugin import _C

        info["focal_loss_cpu_kernel"] = _C.cpu_kernel_capability()
    # On CUDA the children report the device (cuda_info): the parent never creates a CUDA context of its own.
    info["device_name"] = info["cpu"] if device == "cpu" else "CUDA device"
    return info


def cuda_info() -> Dict[str, object]:
    """The CUDA device and settings of the calling (child) process."""
    props = torch.cuda.get_device_properties(0)
    return {
        "device_name": props.name, "device_memory_bytes": props.total_memory,
        "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
    }


def _source_version() -> Dict[str, object]:
    """The checkout's commit, and its files changed since (read-only git commands; empty outside a checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit.returncode != 0:
        return {}
    changed = [line[3:] for line in status.stdout.splitlines()]
    return {"git_commit": commit.stdout.strip(), "git_changed_files": changed}


def _meminfo_bytes(field: str) -> Optional[int]:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    return None


def merge_rounds(results: List[Dict[str, object]], case) -> Dict[str, object]:
    """One result from the rounds of a case: the first round's, with every round's timed repetitions pooled
    (and each round's median kept); the first error if a round failed."""
    for result in results:
        if "error" in result:
            return result
    merged = dict(results[0])
    merged.update(summarize([t for r in results for t in r["times_s"]], case["kind"], case["batch"]))
    merged["round_medians_s"] = [r["median_s"] for r in results]
    if all("cpu_times_s" in r for r in results):
        merged["cpu_times_s"] = [t for r in results for t in r["cpu_times_s"]]
        merged["cpu_median_s"] = statistics.median(merged["cpu_times_s"])
    return merged


def merge_cpu_memory(timed: Dict[str, object], measured: Dict[str, object]) -> None:
    """Put the memory child's peak into the timing child's result; keep the timing run's own RSS peak aside."""
    if "error" in timed:
        return
    for key in ("peak_bytes", "baseline_bytes", "peak_increase_bytes"):
        timed["default_malloc_" + key] = timed.pop(key)
        timed[key] = measured.get(key)
    if "error" in measured:
        timed["memory_error"] = measured["error"]


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
        case["ratios"][peer] = {"time": result["median_s"] / plugin["median_s"], "peak_memory_increase": memory}
        if result.get("cpu_median_s") and plugin.get("cpu_median_s"):
            case["ratios"][peer]["cpu_time"] = result["cpu_median_s"] / plugin["cpu_median_s"]


def run(args) -> Dict[str, object]:
    models = args.models
    cases = build_cases(args)
    info = machine_info(args.device)
    settings = {
        "depth": args.depth, "sizes": [list(s) for s in args.sizes], "train_batches": args.batch,
        "infer_batch": args.infer_batch, "reps": args.reps, "rounds": args.rounds, "warmup": args.warmup, "amp": args.amp,
        "boxes_per_image": args.boxes, "stress": args.stress, "models": models, "seed": SEED,
        "optimizer": f"SGD lr {LEARNING_RATE}, momentum {MOMENTUM}, weight decay {WEIGHT_DECAY}",
        "amp_mode": "torch.autocast fp16 + GradScaler" if args.device == "cuda" else "torch.autocast bf16, no scaler",
        "candidate_fraction": CANDIDATE_FRACTION,
        "timing": "wall time per step (CUDA synchronised before and after); median, quartiles, min/max over the "
                  "reps of all rounds; warm-up steps excluded (in every round)",
        "memory": ("torch.cuda.max_memory_allocated() during the measured steps - memory_allocated() after building "
                   "the model and inputs" if args.device == "cuda" else
                   "a second child process per model, with glibc's mmap threshold fixed at 128 KiB (freed tensors go "
                   "back to the OS): VmHWM during its measured steps (reset via /proc/self/clear_refs after the "
                   "warm-up) - VmRSS after building the model and inputs (gc + malloc_trim); the timing child's own "
                   "figure, with the default allocator, is kept as default_malloc_peak_increase_bytes"),
        "memory_reps": args.memory_reps if args.device == "cpu" else None,
        "ratios": "peer / plugin (> 1: the plugin is faster / needs less memory)"
                  + ("; CPU time = the process's CPU time per step (time.process_time), less sensitive than wall "
                     "time to other jobs on a shared machine" if args.device == "cpu" else ""),
    }
    notes = []
    if "torchvision" in models:
        notes += [f"torchvision: {d}" for d in peers.TORCHVISION_DIFFERENCES]
    print(f"RetinaNet R{args.depth}-FPN benchmark on {info['device_name']} ({info['torch_threads']} threads): "
          f"{len(cases)} cases x {len(models)} models", flush=True)
    if info["load_average_at_start"][0] > info["usable_cpus"] - 0.5:
        notes.append(f"the machine was busy (load average {info['load_average_at_start'][0]:.1f} on "
                     f"{info['usable_cpus']} CPUs at the start): timings are noisy")
    with tempfile.TemporaryDirectory(prefix="bench_retinanet_") as folder:
        weights = prepare_weights(models, args, folder)
        rounds = {model: [] for model in models}
        for round_index in range(args.rounds):
            # Alternate the order, so that a machine getting busier or quieter does not favour one model.
            for model in (models if round_index % 2 == 0 else models[::-1]):
                layout = "torchvision" if model == "torchvision" else "detectron2"
                if args.rounds > 1:
                    print(f"  {model}: round {round_index + 1} of {args.rounds}", flush=True)
                rounds[model].append(run_child(model, cases, args, weights[layout]["path"]))
        per_model = {model: [merge_rounds([r[i] for r in rounds[model]], case) for i, case in enumerate(cases)]
                     for model in models}
        for model in models:
            layout = "torchvision" if model == "torchvision" else "detectron2"
            if args.device == "cpu":
                print(f"  {model}: peak memory in a second child process (fixed glibc mmap threshold)", flush=True)
                memory_cases = [dict(c, reps=args.memory_reps) for c in cases]
                memory = run_child(model, memory_cases, args, weights[layout]["path"], purpose="memory")
                for timed, measured in zip(per_model[model], memory):
                    merge_cpu_memory(timed, measured)
    info["load_average_at_end"] = list(os.getloadavg())
    reported = [r["cuda_info"] for results in per_model.values() for r in results if "cuda_info" in r]
    if reported:
        info.update(reported[0])
    report_cases = []
    for index, case in enumerate(cases):
        entry = dict(case, label=case_label(case), results={m: per_model[m][index] for m in models})
        add_ratios(entry)
        report_cases.append(entry)
    if "plugin" in models and "detectron2" in models:
        fingerprints = {r["results"][m].get("weights_fingerprint") for r in report_cases for m in ("plugin", "detectron2")}
        same = len(fingerprints) == 1 and None not in fingerprints
        notes.insert(0, "plugin and detectron2: " + (
            "identical weights (same fingerprint in every case), copied through the checkpoint converter"
            if same else f"weights DIFFER or were not reported (fingerprints {sorted(map(str, fingerprints))})"))
    calibration = {layout: w["calibration"] for layout, w in weights.items()}
    return {"info": info, "settings": settings, "notes": notes, "calibration": calibration, "cases": report_cases}


# ------------------------------------------------------------------------------------------------ outputs
def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def header(report) -> List[str]:
    columns = ["case", "model", "median ms", "IQR ms", "time peer/plugin"]
    if report["info"]["device"] == "cpu":
        columns.append("CPU-time peer/plugin")
    return columns + ["peak mem +MiB", "mem peer/plugin", "notes"]


def table_rows(report) -> List[List[str]]:
    cpu = report["info"]["device"] == "cpu"
    rows = []
    for case in report["cases"]:
        per_image = case["kind"] == "inference"
        suffix = "_per_image" if per_image else ""
        for model, result in case["results"].items():
            if "error" in result:
                rows.append([case["label"], model, "failed"] + [""] * (4 + cpu) + [result["error"][:80]])
                continue
            ratio = case["ratios"].get(model)
            median = result["median_s" + suffix]
            spread = f"{_ms(result['q1_s' + suffix])}-{_ms(result['q3_s' + suffix])}"
            memory = "-" if result.get("peak_increase_bytes") is None else f"{result['peak_increase_bytes'] / 2**20:.0f}"
            if per_image:
                detail = f"{statistics.mean(result['detections_per_image']):.0f} detections/image"
            else:
                detail = f"loss {sum(result['first_losses'].values()):.4f}" + ("" if result["finite"] else " NON-FINITE")
            row = [case["label"], model, _ms(median), spread,
                   "1.00" if model == "plugin" else (f"{ratio['time']:.2f}" if ratio else "-")]
            if cpu:
                row.append("1.00" if model == "plugin" else (f"{ratio['cpu_time']:.2f}" if ratio and "cpu_time" in ratio else "-"))
            row += [memory,
                    "1.00" if model == "plugin" else (
                        f"{ratio['peak_memory_increase']:.2f}" if ratio and ratio["peak_memory_increase"] else "-"),
                    detail]
            rows.append(row)
    return rows


def format_table(report) -> str:
    columns = header(report)
    rows = [columns] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    numeric = range(2, len(columns) - 1)
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def describe_machine(info) -> str:
    text = f"{info['device_name']}"
    if info["device"] == "cuda" and "cuda" in info:
        text += f" (CUDA {info['cuda']}, {info['device_memory_bytes'] / 2**30:.0f} GiB), host {info['cpu']}"
    text += (f", {info['usable_cpus']} usable CPUs, {info['torch_threads']} torch threads, torch {info['torch']}, "
             f"torchvision {info['torchvision']}, detectron2 {info['detectron2']}; load average "
             f"{info['load_average_at_start'][0]:.1f} at start, {info['load_average_at_end'][0]:.1f} at end")
    return text


def format_markdown(report) -> str:
    s, info = report["settings"], report["info"]
    lines = [
        f"# RetinaNet R{s['depth']}-FPN: plugin vs Detectron2 vs torchvision ({info['device']})",
        "",
        f"Machine: {describe_machine(info)}. Run {info['date_utc']}"
        + (f", code at {info['git_commit'][:10]}" + (f" + {len(info['git_changed_files'])} changed files"
           if info.get("git_changed_files") else "") if info.get("git_commit") else "") + ".",
        "",
        f"Median of {s['reps'] * s['rounds']} repetitions ({s['rounds']} child process(es) per model in alternating "
        f"order, {s['reps']} each, after {s['warmup']} warm-up steps); IQR = interquartile range. "
        f"Training: forward + backward + {s['optimizer']}; inference: batch {s['infer_batch']}, time per image "
        f"including post-processing. Peak memory: {s['memory']}. Ratios: {s['ratios']}.",
        "",
        "| " + " | ".join(header(report)) + " |",
        "|" + "|".join(" --- " for _ in header(report)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def plot(report) -> bytes:
    """Bar chart: rows = time, peak memory increase; columns = training, inference; one bar per model per case,
    IQR as error bars, peer / plugin ratios above the peers' bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["settings"]["models"]
    kinds = [k for k in ("train", "inference") if any(c["kind"] == k for c in report["cases"])]
    colors = {"plugin": "#1f77b4", "detectron2": "#ff7f0e", "torchvision": "#2ca02c"}
    most = max(sum(c["kind"] == k for c in report["cases"]) for k in kinds)
    fig, axes = plt.subplots(2, len(kinds), figsize=(max(6.0, 0.75 * most * len(models)) * len(kinds), 8.0), squeeze=False)
    width = 0.8 / len(models)
    for column, kind in enumerate(kinds):
        cases = [c for c in report["cases"] if c["kind"] == kind]
        suffix = "_per_image" if kind == "inference" else ""
        for row, metric in enumerate(("time", "memory")):
            ax = axes[row][column]
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
                bars = ax.bar(xs, heights, width, label=model, color=colors.get(model),
                              yerr=errors if metric == "time" else None, capsize=3)
                ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
            ax.set_xticks(range(len(cases)))
            ax.set_xticklabels([c["label"].split(" ", 1)[1] for c in cases], fontsize=8)
            if metric == "time":
                ax.set_title(("training step" if kind == "train" else "inference, per image") + " (median, IQR)", fontsize=9)
                ax.set_ylabel("ms")
            else:
                ax.set_title("peak memory increase", fontsize=9)
                ax.set_ylabel("MiB")
            ax.legend(fontsize=7)
            ax.grid(axis="y", alpha=0.3)
    info = report["info"]
    fig.suptitle(f"RetinaNet R{report['settings']['depth']}-FPN on {info['device_name']} ({info['torch_threads']} "
                 f"threads), {info['date_utc'][:10]}\nbar labels: peer / plugin (> 1: the plugin is better)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_outputs(report, folder: str, stem: str, with_json: bool = True) -> List[str]:
    """``stem``.json, .md and .png under ``folder``, each written atomically; returns their paths."""
    from retinanet_plugin.utils import atomic_write

    paths = []
    contents = {".json": json.dumps(report, indent=2).encode()} if with_json else {}
    contents.update({".md": format_markdown(report).encode(), ".png": plot(report)})
    for extension, data in contents.items():
        path = os.path.join(folder, stem + extension)
        atomic_write(path, lambda f, data=data: f.write(data))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------- main
def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 2,8")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", help="image sizes HxW, comma-separated (CPU default 384x640, CUDA 800x1333)")
    parser.add_argument("--batch", type=_int_list, help="training batch sizes (CPU default 2, CUDA 2,8)")
    parser.add_argument("--infer-batch", type=int, default=1, help="inference batch size (default 1)")
    parser.add_argument("--reps", type=int, help="measured repetitions per round (CPU default 3, CUDA 10)")
    parser.add_argument("--warmup", type=int, help="warm-up repetitions, not measured (CPU default 2, CUDA 3)")
    parser.add_argument("--boxes", type=int, help=f"ground-truth boxes per image (default {BOXES_PER_IMAGE})")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction,
                        help="also run with mixed precision (default: on for CUDA, off for the CPU)")
    parser.add_argument("--models", default=",".join(peers.MODELS), help="comma-separated subset of " + ",".join(peers.MODELS))
    parser.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101, 152), help="ResNet depth (default 50)")
    parser.add_argument("--rounds", type=int,
                        help="child processes per model, run in alternating model order, their repetitions pooled "
                             "(CPU default 2, CUDA 1)")
    parser.add_argument("--memory-reps", type=int, default=1,
                        help="CPU only: measured steps of the separate peak-memory child (default 1)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads in every process (default: torch's default, one per core); on a "
                             "machine shared with other jobs, 1 avoids OpenMP threads waiting on descheduled peers")
    parser.add_argument("--stress", action="store_true",
                        help=f"training only, batch {STRESS['batch']}, {STRESS['boxes']} boxes at {STRESS['sizes']}")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                        help="results folder (default benchmarks/results)")
    parser.add_argument("--from-json", metavar="JSON",
                        help="print the table and rewrite the .md and .png beside an earlier run's JSON; runs nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
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
        args.sizes = [parse_size(s) for s in (args.sizes or defaults["sizes"]).split(",") if s]
    except argparse.ArgumentTypeError as error:
        parser.error(f"--sizes: {error}")
    args.batch = args.batch or _int_list(defaults["batch"])
    args.reps = args.reps if args.reps is not None else defaults["reps"]
    args.warmup = args.warmup if args.warmup is not None else defaults["warmup"]
    args.rounds = args.rounds if args.rounds is not None else defaults["rounds"]
    args.boxes = args.boxes if args.boxes is not None else defaults.get("boxes", BOXES_PER_IMAGE)
    args.amp = args.amp if args.amp is not None else defaults["amp"]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(peers.MODELS))
    if unknown or not models:
        parser.error(f"--models: unknown {unknown}; choose from {','.join(peers.MODELS)}")
    args.models = [m for m in peers.MODELS if m in models]  # plugin first: ratios are against it
    if min(args.reps, args.rounds, args.infer_batch, args.boxes, args.memory_reps) < 1 or args.warmup < 0:
        parser.error("--reps, --rounds, --memory-reps, --infer-batch and --boxes must be at least 1, --warmup at least 0")
    return args


def main(argv=None) -> Dict[str, object]:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return {}
    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
        folder, stem = os.path.dirname(os.path.abspath(args.from_json)), os.path.splitext(os.path.basename(args.from_json))[0]
        print(f"Machine: {describe_machine(report['info'])}")
        print(format_table(report))
        for path in write_outputs(report, folder, stem, with_json=False):
            print(f"written {path}")
        return report
    report = run(args)
    stem = f"retinanet_{'stress_' if args.stress else ''}{args.device}"
    print()
    print(f"Machine: {describe_machine(report['info'])}")
    print(format_table(report))
    for note in report["notes"]:
        print(f"  note: {note}")
    for path in write_outputs(report, args.output, stem):
        print(f"written {path}")
    return report


if __name__ == "__main__":
    main()
