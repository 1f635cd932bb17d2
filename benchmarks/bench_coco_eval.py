"""Time of COCO bbox evaluation: faster-coco-eval against pycocotools, on the same generated problem.

The problem (``benchmarks/coco_eval_data.py``): ``--images`` images (default 2,000) with ``--detections`` detections
each (default 100: Detectron2's ``TEST.DETECTIONS_PER_IMAGE``), 8 categories, crowd regions, tied scores. Each
backend runs what Detectron2's ``COCOEvaluator`` runs (``retinanet_plugin.evaluation.run_coco_eval``: build the
ground-truth index, ``loadRes``, ``evaluate``, ``accumulate``, ``summarize``), ``--repeats`` times, alternating the
order (A B, B A, ...) so that a machine getting busier or quieter favours neither; wall and CPU time are reported
as medians. The AP of both is printed too (the test ``tests/test_fast_coco_eval.py`` checks it is equal).

    python benchmarks/bench_coco_eval.py [--images 2000] [--detections 100] [--repeats 3] [--output benchmarks/results]

Writes ``coco_eval_cpu.json`` and ``coco_eval_cpu.md`` under ``--output``, with the CPU's name from ``lscpu``.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from coco_eval_data import generated_detection_problem  # noqa: E402
from machine_info import cpu_name  # noqa: E402

from retinanet_plugin.evaluation.coco_backend import resolve_coco_backend, run_coco_eval  # noqa: E402

BACKENDS = ("faster_coco_eval", "pycocotools")


def time_one(gt, results, backend):
    wall, cpu = time.perf_counter(), time.process_time()
    coco_eval = run_coco_eval(gt, results, backend)
    return time.perf_counter() - wall, time.process_time() - cpu, [float(s) for s in coco_eval.stats]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)

    gt, results = generated_detection_problem(args.images, args.detections, args.seed)
    backends = {name: resolve_coco_backend(name) for name in BACKENDS}
    runs = {name: {"wall_s": [], "cpu_s": [], "stats": None} for name in BACKENDS}
    for repeat in range(args.repeats):
        order = BACKENDS if repeat % 2 == 0 else BACKENDS[::-1]
        for name in order:
            wall, cpu, stats = time_one(gt, results, backends[name])
            runs[name]["wall_s"].append(wall)
            runs[name]["cpu_s"].append(cpu)
            runs[name]["stats"] = stats
            print(f"repeat {repeat + 1}: {name:17s} {wall:7.2f} s wall, {cpu:7.2f} s CPU, AP {100 * stats[0]:.3f}")
    medians = {name: {k: statistics.median(runs[name][k]) for k in ("wall_s", "cpu_s")} for name in BACKENDS}
    ratio_wall = medians["pycocotools"]["wall_s"] / medians["faster_coco_eval"]["wall_s"]
    ratio_cpu = medians["pycocotools"]["cpu_s"] / medians["faster_coco_eval"]["cpu_s"]
    max_stat_diff = max(abs(a - b) for a, b in zip(runs["faster_coco_eval"]["stats"], runs["pycocotools"]["stats"]))
    report = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {name: b.version for name, b in backends.items()},
        "problem": {"images": args.images, "detections_per_image": args.detections, "seed": args.seed,
                    "annotations": len(gt["annotations"]), "detections": len(results),
                    "categories": len(gt["categories"])},
        "repeats": args.repeats,
        "runs": runs,
        "median": medians,
        "ratio_pycocotools_over_faster": {"wall": ratio_wall, "cpu": ratio_cpu},
        "max_abs_stats_difference": max_stat_diff,
    }
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "coco_eval_cpu.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = [
        f"COCO bbox evaluation, {args.images} images x {args.detections} detections ({len(results)} detections, "
        f"{len(gt['annotations'])} ground-truth boxes), median of {args.repeats}; CPU: {report['cpu']} "
        f"({report['usable_cpus']} usable cores, load average at the end {report['load_average_at_end'][0]:.1f})",
        "",
        "| backend | version | wall | CPU | AP |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in BACKENDS:
        table.append(f"| {name} | {backends[name].version} | {medians[name]['wall_s']:.2f} s | "
                     f"{medians[name]['cpu_s']:.2f} s | {100 * runs[name]['stats'][0]:.4f} |")
    table += ["", f"pycocotools / faster-coco-eval: {ratio_wall:.2f}x wall time, {ratio_cpu:.2f}x CPU time; "
              f"largest difference of the 12 COCO stats: {max_stat_diff:.2e}"]
    text = "\n".join(table) + "\n"
    with open(os.path.join(args.output, "coco_eval_cpu.md"), "w") as f:
        f.write(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
