"""The child process of ``bench_retinanet.py``: one model, every case, one result line per case.

Each case loads the benchmark's weights afresh, builds its seeded inputs, runs ``warmup`` steps that
are not timed, then ``reps`` measured steps: wall time and process CPU time per step (the device
synchronised before and after), and the peak memory above the baseline taken after building the
model and inputs (``harness.memory.MemoryMeter``). A training step is forward + backward + SGD step
(``torch.autocast`` and, on CUDA, a ``GradScaler`` for AMP); an inference step is one
``model.eval()`` call under ``torch.no_grad()``.
"""

import math
import statistics
import time
import traceback
from typing import Dict

import torch

from benchmarks.harness import children, inputs, machine, memory, peers, timing, weights

LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 1e-4, 0.9, 1e-4


def case_label(case) -> str:
    h, w = case["size"]
    label = f"{case['kind']} {h}x{w} b{case['batch']} {'amp' if case['amp'] else 'fp32'}"
    return label + (f" {case['boxes']} boxes" if case.get("stress") else "")


def autocast_for(device: torch.device, amp: bool):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=amp)


def sgd(model: torch.nn.Module) -> torch.optim.SGD:
    """The benchmark's optimizer over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def training_step(runner: inputs.Runner, batch, amp: bool):
    """One training step of ``runner``'s model on ``batch`` (returns the losses), and its
    optimizer."""
    device = runner.device
    runner.model.train()
    optimizer = sgd(runner.model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    autocast = autocast_for(device, amp)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            losses = runner(batch)
            total = sum(losses.values())
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        return losses

    return step, optimizer


def inference_step(runner: inputs.Runner, batch, amp: bool):
    """One inference call of ``runner``'s model on ``batch`` (returns its outputs)."""
    runner.model.eval()
    autocast = autocast_for(runner.device, amp)

    def step():
        with torch.no_grad(), autocast():
            return runner(batch)

    return step


def measure(step, case, device: torch.device, meter: memory.MemoryMeter):
    """Warm-up, then the timed repetitions of ``step``: (times, CPU times, peak memory, first and
    last outputs)."""
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        meter.take_baseline()
        outputs = [step() for _ in range(case["warmup"])]
        first = outputs[0] if outputs else None
        del outputs
        meter.reset_peak()
        times, cpu_times = [], []
        for _ in range(case["reps"]):
            timing.synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            last = step()
            timing.synchronize(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        peak = meter.peak()
    return times, cpu_times, peak, (first if first is not None else last), last


def run_case(runner: inputs.Runner, case, spec, meter: memory.MemoryMeter) -> Dict[str, object]:
    device, model = runner.device, runner.model
    height, width = case["size"]
    if runner.name == "torchvision":
        peers.keep_torchvision_image_size(model, (height, width))
    # every case starts from the same weights
    fingerprint = weights.load_weights(runner.name, model, spec["weights"])
    samples = inputs.make_samples(height, width, case["batch"], case["boxes"])
    result = {"weights_fingerprint": fingerprint, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        result["cuda_info"] = machine.cuda_info()
    optimizer = None
    if case["kind"] == "train":
        batch = runner.training_inputs(samples)
        step, optimizer = training_step(runner, batch, case["amp"])
    else:
        batch = runner.inference_inputs(samples)
        step = inference_step(runner, batch, case["amp"])
    del samples
    times, cpu_times, peak, first, last = measure(step, case, device, meter)
    result.update(peak)
    result.update(timing.summarize(times, case["kind"], case["batch"]))
    if device.type == "cpu":
        result["cpu_times_s"] = cpu_times
        result["cpu_median_s"] = statistics.median(cpu_times)
    if case["kind"] == "train":
        result["first_losses"] = {k: float(v) for k, v in first.items()}
        result["last_losses"] = {k: float(v) for k, v in last.items()}
        result["finite"] = all(math.isfinite(v) for v in result["last_losses"].values())
        del optimizer, step
        model.zero_grad(set_to_none=True)
    else:
        result["detections_per_image"] = runner.detection_counts(last)
    del first, last, batch
    meter.settle()
    return result


def guarded_case(runner, case, spec, meter) -> Dict[str, object]:
    """``run_case``, or an ``error`` entry where it failed (the other cases still run)."""
    try:
        return run_case(runner, case, spec, meter)
    except torch.cuda.OutOfMemoryError as error:
        result = {"error": f"CUDA out of memory: {str(error).splitlines()[0]}"}
    except Exception as error:  # recorded with the case; the other cases still run
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"}
    runner.model.zero_grad(set_to_none=True)
    meter.settle()
    return result


def child_main(spec) -> None:
    """Runs every case of one model and reports one result per case (so a crash keeps the earlier
    ones)."""
    import retinanet_plugin  # noqa: F401  (registers the plugin's components)

    device = torch.device(spec["device"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(inputs.SEED)
    cfg = peers.plugin_config("cpu", depth=spec["depth"], num_classes=inputs.NUM_CLASSES)
    if spec["model"] == "plugin":
        cfg.MODEL.RETINANET_PLUGIN.COMPILE = spec.get("plugin_compile", "none")
    # random weights, on the CPU; run_case loads the benchmark's weights
    model = peers.build_model(spec["model"], cfg, tuple(spec["cases"][0]["size"])).to(device)
    runner = inputs.Runner(spec["model"], model, device)
    meter = memory.MemoryMeter(device)
    for index, case in enumerate(spec["cases"]):
        result = guarded_case(runner, case, spec, meter)
        children.emit(index, result)
        if "median_s" in result and spec["purpose"] == "memory":
            print(
                f"  {spec['model']:>11}  {case_label(case)}: peak "
                f"+{result['peak_increase_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )
        elif "median_s" in result:
            print(
                f"  {spec['model']:>11}  {case_label(case)}: median "
                f"{result['median_s'] * 1e3:.1f} ms",
                flush=True,
            )
