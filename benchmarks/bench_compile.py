"""Inference with ``MODEL.RETINANET_PLUGIN.COMPILE`` against the eager plugin and Detectron2's
``RetinaNet``, in one process, with the same weights.

Models: the plugin from ``configs/retinanet_R50.yaml`` (``--depth``), eager (``COMPILE`` "none") and
compiled in each of ``--modes``, with and without ``COMPILE_FREEZING``; Detectron2's RetinaNet from
the same config. Weights: the benchmarks' seeded, calibrated random weights
(``harness/weights.py``), identical for all (the same fingerprint is checked). Input: one seeded
smooth-noise image of ``--size`` (default 800x1216, the COCO test size of bench_retinanet.py),
batch 1, ``model.eval()``, ``torch.no_grad()``: the whole call (normalisation, network, decoding,
top-k, NMS).

Measured: the first call of each compiled model (the warm-up: compilation included), reported
apart; then ``--rounds`` rounds in alternating model order (A B C, C B A, ...), ``--reps`` timed
calls of each model per round, pooled. Reported: median and quartiles per call, ratios peer /
model (above 1: faster than that peer), and how far the compiled model's detections are from the
eager plugin's (same count and classes; largest box and score difference).

    python benchmarks/bench_compile.py [--modes default] [--size 800x1216] [--depth 50] \
        [--rounds 2] [--reps 3] [--threads N] [--output benchmarks/results]

Writes ``compile_cpu.json`` and ``compile_cpu.md`` under ``--output``. A quick check that it runs:
``--depth 18 --size 160x192 --rounds 1 --reps 1 --output /tmp/bench_compile``.
"""

if not __package__:  # run as a file: see benchmarks/bootstrap.py
    import bootstrap  # noqa: F401  (beside this file)

import argparse
import statistics
import tempfile
import time

import torch

from benchmarks.harness import RESULTS_DIR, inputs, machine, peers, weights
from benchmarks.harness import report as report_files

DETECTRON2 = "detectron2"
EAGER = "plugin eager"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="default", help="COMPILE modes, comma-separated")
    parser.add_argument("--size", type=inputs.parse_size, default=(800, 1216), help="HxW")
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth (default 50)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, in alternating order")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per model and round")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.reps < 1:
        parser.error("--rounds and --reps must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args


def build_models(args, path):
    """{name: model} in eval mode, all with the weights saved at ``path``; their fingerprints."""
    cfg = peers.plugin_config("cpu", depth=args.depth, num_classes=inputs.NUM_CLASSES)
    builders = {DETECTRON2: ("detectron2", cfg), EAGER: ("plugin", cfg)}
    for mode in args.modes.split(","):
        for freezing in (True, False):  # COMPILE_FREEZING's default first
            compiled = cfg.clone()
            compiled.MODEL.RETINANET_PLUGIN.COMPILE = mode
            compiled.MODEL.RETINANET_PLUGIN.COMPILE_FREEZING = freezing
            suffix = "" if freezing else " (COMPILE_FREEZING False)"
            builders[f"plugin COMPILE {mode}{suffix}"] = ("plugin", compiled)
    models, fingerprints = {}, set()
    for name, (kind, model_cfg) in builders.items():
        model = peers.build_model(kind, model_cfg, args.size)
        fingerprints.add(weights.load_weights(kind, model, path))
        models[name] = model.eval()
    if len(fingerprints) != 1:
        raise RuntimeError(f"the models' weights differ: {sorted(fingerprints)}")
    return models, fingerprints.pop()


def timed_call(model, batch):
    start = time.perf_counter()
    with torch.no_grad():
        outputs = model(batch)
    return time.perf_counter() - start, outputs


def detection_difference(expected, actual):
    """How far ``actual``'s detections are from ``expected``'s (one image each)."""
    a, b = expected[0]["instances"], actual[0]["instances"]
    same = len(a) == len(b) and bool(torch.equal(a.pred_classes, b.pred_classes))
    result = {"detections": len(a), "same_count_and_classes": same}
    if same:
        result["max_box_difference_px"] = float(
            (a.pred_boxes.tensor - b.pred_boxes.tensor).abs().max()
        )
        result["max_score_difference"] = float((a.scores - b.scores).abs().max())
    return result


def measure(args, models, batch):
    names = list(models)
    results = {name: {"times_s": []} for name in names}
    eager_outputs = timed_call(models[EAGER], batch)[1]
    for name in names:  # warm-up: one untimed call (a compiled model compiles here)
        seconds, outputs = timed_call(models[name], batch)
        results[name]["first_call_s"] = seconds
        if name.startswith("plugin COMPILE"):
            results[name].update(detection_difference(eager_outputs, outputs))
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            for _ in range(args.reps):
                results[name]["times_s"].append(timed_call(models[name], batch)[0])
    for result in results.values():
        times = result["times_s"]
        result["median_s"] = statistics.median(times)
        result["q1_s"], _, result["q3_s"] = (
            statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
        )
    return results


def markdown(report):
    info, results = report["machine"], report["results"]
    eager, peer = results[EAGER]["median_s"], results[DETECTRON2]["median_s"]
    rows = [["model", "median ms", "IQR ms", "first call s", "eager/model", "detectron2/model"]]
    for name, r in results.items():
        rows.append(
            [
                name,
                f"{r['median_s'] * 1e3:.1f}",
                f"{r['q1_s'] * 1e3:.1f}-{r['q3_s'] * 1e3:.1f}",
                f"{r['first_call_s']:.1f}",
                f"{eager / r['median_s']:.2f}",
                f"{peer / r['median_s']:.2f}",
            ]
        )
    lines = [
        f"# Inference with MODEL.RETINANET_PLUGIN.COMPILE (cpu, R{report['depth']}-FPN, "
        f"{report['size'][0]}x{report['size'][1]}, batch 1)",
        "",
        f"Machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, {info['torch_threads']} torch "
        f"threads, torch {info['torch']}, detectron2 {info['detectron2']}; load average "
        f"{info['load_average_at_start'][0]:.1f} at start. Run {info['date_utc']}, code at "
        f"{str(info.get('git_commit', '?'))[:10]} + {len(info.get('git_changed_files', []))} "
        "changed files. One process, same weights (fingerprint "
        f"{report['weights_fingerprint']}), {report['rounds']} rounds x {report['reps']} calls in "
        'alternating order after one untimed call ("first call": the compilation).',
        "",
        report_files.text_table(rows, numeric=[1, 2, 3, 4, 5]),
        "",
    ]
    for name, r in results.items():
        if "same_count_and_classes" in r:
            detail = (
                f"boxes within {r['max_box_difference_px']:.2e} px, scores within "
                f"{r['max_score_difference']:.2e}"
                if r["same_count_and_classes"]
                else "NOT the same count and classes"
            )
            lines.append(f"- {name} vs plugin eager: {r['detections']} detections, {detail}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    import retinanet_plugin  # noqa: F401  (registers the plugin's components)

    with tempfile.TemporaryDirectory() as folder:
        saved = weights.prepare_weights([DETECTRON2], args.size, args.depth, folder)
        models, fingerprint = build_models(args, saved["detectron2"]["path"])
    image = inputs.make_samples(*args.size, 1, 0, seed=inputs.SEED + 1)[0][0]
    report = {
        "machine": machine.machine_info("cpu"),
        "depth": args.depth,
        "size": list(args.size),
        "rounds": args.rounds,
        "reps": args.reps,
        "weights_fingerprint": fingerprint,
        "results": measure(args, models, [{"image": image}]),
    }
    text = markdown(report)
    paths = report_files.write_files(
        args.output, "compile_cpu", {".json": report_files.json_bytes(report), ".md": text.encode()}
    )
    print(text)
    print("wrote", ", ".join(paths))


if __name__ == "__main__":
    main()
