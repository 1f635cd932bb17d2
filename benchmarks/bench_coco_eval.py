"""Time of COCO bbox evaluation: faster-coco-eval against pycocotools, on one generated problem.

The problem (``benchmarks/coco_eval_data.py``): ``--images`` images (default 2,000) with
``--detections`` detections each (default 100: Detectron2's ``TEST.DETECTIONS_PER_IMAGE``), 8
categories, crowd regions, tied scores. Each backend runs what Detectron2's ``COCOEvaluator`` runs
(``retinanet_plugin.evaluation.run_coco_eval``: build the ground-truth index, ``loadRes``,
``evaluate``, ``accumulate``, ``summarize``), ``--repeats`` times, alternating the order (A B, B A,
...) so that a machine getting busier or quieter favours neither; wall and CPU time are reported as
medians. The AP of both is printed too (the test ``tests/test_fast_coco_eval.py`` checks it is
equal).

    python benchmarks/bench_coco_eval.py [--images 2000] [--detections 100] [--repeats 3]
                                         [--output benchmarks/results]

(from the repository root; ``python -m benchmarks.bench_coco_eval`` works the same). Writes
``coco_eval_cpu.json`` and ``coco_eval_cpu.md`` under ``--output``, with the CPU's name from
``lscpu``.
"""

if not __package__:  # run as a file: see benchmarks/bootstrap.py
    import bootstrap  # noqa: F401  (beside this file)

import argparse
import datetime
import os
import platform
import statistics
import time

from benchmarks.coco_eval_data import generated_detection_problem
from benchmarks.harness import RESULTS_DIR, machine, report as report_files

BACKENDS = ("faster_coco_eval", "pycocotools")


def time_one(gt, results, backend):
    from retinanet_plugin.evaluation.coco_backend import run_coco_eval

    wall, cpu = time.perf_counter(), time.process_time()
    coco_eval = run_coco_eval(gt, results, backend)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, [float(s) for s in coco_eval.stats]


def time_backends(gt, results, backends, repeats):
    """``repeats`` evaluations by each backend, in alternating order: their wall and CPU times and
    the last run's 12 COCO stats."""
    runs = {name: {"wall_s": [], "cpu_s": [], "stats": None} for name in BACKENDS}
    for repeat in range(repeats):
        order = BACKENDS if repeat % 2 == 0 else BACKENDS[::-1]
        for name in order:
            wall, cpu, stats = time_one(gt, results, backends[name])
            runs[name]["wall_s"].append(wall)
            runs[name]["cpu_s"].append(cpu)
            runs[name]["stats"] = stats
            print(
                f"repeat {repeat + 1}: {name:17s} {wall:7.2f} s wall, {cpu:7.2f} s CPU, "
                f"AP {100 * stats[0]:.3f}"
            )
    return runs


def markdown(report, backends) -> str:
    problem, runs, medians = report["problem"], report["runs"], report["median"]
    ratio = report["ratio_pycocotools_over_faster"]
    table = [
        f"COCO bbox evaluation, {problem['images']} images x {problem['detections_per_image']} "
        f"detections ({problem['detections']} detections, {problem['annotations']} ground-truth "
        f"boxes), median of {report['repeats']}; CPU: {report['cpu']} ({report['usable_cpus']} "
        f"usable cores, load average at the end {report['load_average_at_end'][0]:.1f})",
        "",
        "| backend | version | wall | CPU | AP |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in BACKENDS:
        table.append(
            f"| {name} | {backends[name].version} | {medians[name]['wall_s']:.2f} s | "
            f"{medians[name]['cpu_s']:.2f} s | {100 * runs[name]['stats'][0]:.4f} |"
        )
    table += [
        "",
        f"pycocotools / faster-coco-eval: {ratio['wall']:.2f}x wall time, "
        f"{ratio['cpu']:.2f}x CPU time; largest difference of the 12 COCO stats: "
        f"{report['max_abs_stats_difference']:.2e}",
    ]
    return "\n".join(table) + "\n"


def main(argv=None):
    from retinanet_plugin.evaluation.coco_backend import resolve_coco_backend

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=RESULTS_DIR)
    args = parser.parse_args(argv)

    gt, results = generated_detection_problem(args.images, args.detections, args.seed)
    backends = {name: resolve_coco_backend(name) for name in BACKENDS}
    runs = time_backends(gt, results, backends, args.repeats)
    medians = {
        name: {k: statistics.median(runs[name][k]) for k in ("wall_s", "cpu_s")}
        for name in BACKENDS
    }
    fast, slow = medians["faster_coco_eval"], medians["pycocotools"]
    stats = zip(runs["faster_coco_eval"]["stats"], runs["pycocotools"]["stats"])
    report = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": machine.cpu_name(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {name: b.version for name, b in backends.items()},
        "problem": {
            "images": args.images,
            "detections_per_image": args.detections,
            "seed": args.seed,
            "annotations": len(gt["annotations"]),
            "detections": len(results),
            "categories": len(gt["categories"]),
        },
        "repeats": args.repeats,
        "runs": runs,
        "median": medians,
        "ratio_pycocotools_over_faster": {
            "wall": slow["wall_s"] / fast["wall_s"],
            "cpu": slow["cpu_s"] / fast["cpu_s"],
        },
        "max_abs_stats_difference": max(abs(a - b) for a, b in stats),
    }
    text = markdown(report, backends)
    report_files.write_files(
        args.output,
        "coco_eval_cpu",
        {".json": report_files.json_bytes(report, indent=1), ".md": text.encode()},
    )
    print(text)
    return report


if __name__ == "__main__":
    main()
