"""Throughput of ``tools/predict.py``'s pipeline against a plain ``DefaultPredictor`` loop, over a
folder of image files, in one run, with the same weights.

Model: the plugin from ``configs/retinanet_R50.yaml`` (``--depth`` 50, R50-FPN) with the
benchmarks' seeded, calibrated random weights (``harness/weights.py``, calibrated on an image of
the test-time input size), saved as a checkpoint that both sides load as ``MODEL.WEIGHTS``; the
config's test-time resize (``INPUT.MIN_SIZE_TEST`` 800 unless overridden by trailing ``KEY VALUE``
config options). Images: ``--images`` (default 200) seeded smooth-noise images
(``harness/inputs.py``) of ``--size`` (default 480x640, COCO's typical size), written as JPEG files
(quality 90) to a temporary folder before anything is timed.

Measured, in one process, each after ``--warmup`` images that are not timed, in alternating order
over ``--rounds`` rounds (A B, B A, ...):

- ``DefaultPredictor``: Detectron2's ``DefaultPredictor`` of the config, in a loop over the files:
  ``detectron2.data.detection_utils.read_image(path, "BGR")`` then ``predictor(image)``, one image
  at a time;
- ``predict.py``: the tool's own pipeline (``tools/predict.py``: ``build_backend``,
  ``image_stream``; ``retinanet_plugin.engine.prediction_backends.predict_stream``; the detections
  turned into COCO results as the tool does),
  for each ``--backends`` x ``--workers`` x ``--batch-size`` setting (default: the tool's defaults,
  eager PyTorch, 1 image per batch, its default worker count), from the start of the image stream
  (worker processes included) to the last image's detections; no drawing (``--no-draw``) and no
  file writing. With the ``onnxruntime`` backend the model is exported first (untimed, reported).

Reported: images/s of each, and the ratio to the ``DefaultPredictor`` loop (above 1: predict.py is
faster), with the CPU's name, the load average and the torch threads; and whether the detections
equal ``DefaultPredictor``'s (batch 1, eager: exactly; ONNX Runtime: up to float rounding; larger
batches pad images, see ``BatchPredictor``).

    python benchmarks/bench_predict.py [--images 200] [--size 480x640] [--workers 0,2] \
        [--batch-size 1,4] [--backends pytorch,onnxruntime] [--rounds 1] [--threads N] \
        [--output benchmarks/results] [KEY VALUE ...]

(from the repository root; ``python -m benchmarks.bench_predict`` works the same). Writes
``predict_cpu.json`` and ``predict_cpu.md`` under ``--output``. A quick check that it runs:
``--images 4 --warmup 1 --depth 18 --size 160x192 --output /tmp/bench_predict``.
"""

if not __package__:  # run as a file: see benchmarks/bootstrap.py
    import bootstrap  # noqa: F401  (beside this file)

import argparse
import importlib.util
import itertools
import os
import statistics
import sys
import tempfile
import time

import cv2
import torch

from benchmarks.harness import REPO_ROOT, RESULTS_DIR, inputs, machine, peers, weights
from benchmarks.harness import report as report_files

DEFAULT_PREDICTOR = "DefaultPredictor"
JPEG_QUALITY = 90


def load_predict_tool():
    """``tools/predict.py`` as a module."""
    path = os.path.join(REPO_ROOT, "tools", "predict.py")
    spec = importlib.util.spec_from_file_location("bench_predict_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="image files (default 200)")
    parser.add_argument(
        "--size", type=inputs.parse_size, default=(480, 640), help="HEIGHTxWIDTH of the files"
    )
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth (default 50)")
    parser.add_argument(
        "--backends",
        default="pytorch",
        help="predict.py backends, comma-separated (pytorch, onnxruntime)",
    )
    parser.add_argument(
        "--workers",
        default=None,
        help="predict.py --workers settings, comma-separated (default: the tool's default)",
    )
    parser.add_argument(
        "--batch-size", type=inputs.int_list, default=[1], help="predict.py --batch-size settings"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed images before each run")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, in alternating order")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's default)"
    )
    parser.add_argument("--output", default=RESULTS_DIR)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    if args.images < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--images and --rounds must be >= 1, --warmup >= 0")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    return args


def worker_settings(text, default):
    if text is None:
        return [default]
    try:
        values = [int(v) for v in str(text).split(",") if v != ""]
    except ValueError:
        raise SystemExit(f"--workers {text!r}: give comma-separated integers >= 0") from None
    if not values or min(values) < 0:
        raise SystemExit(f"--workers {text!r}: give comma-separated integers >= 0")
    return values


def plugin_cfg(args, checkpoint=""):
    cfg = peers.plugin_config("cpu", depth=args.depth, num_classes=inputs.NUM_CLASSES)
    cfg.merge_from_list(list(args.opts))
    cfg.MODEL.WEIGHTS = checkpoint
    cfg.freeze()
    return cfg


def input_size(cfg, size):
    """(height, width) the model sees for a file of ``size``: the config's test-time resize."""
    from detectron2.data import transforms as T

    return T.ResizeShortestEdge.get_output_shape(
        size[0], size[1], cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    )


def prepare_checkpoint(args, folder):
    """The benchmarks' weights for the plugin, as a checkpoint file both sides load; its
    fingerprint."""
    cfg = plugin_cfg(args)
    prepared = weights.prepare_weights(["plugin"], input_size(cfg, args.size), args.depth, folder)
    model = peers.build_plugin_model(cfg)
    fingerprint = weights.load_weights("plugin", model, prepared["detectron2"]["path"])
    path = os.path.join(folder, "model.pth")
    torch.save({"model": model.state_dict()}, path)
    return path, fingerprint, prepared["detectron2"]["calibration"]


def write_images(args, folder):
    """``--images`` seeded smooth-noise JPEG files of ``--size``, in file-name order."""
    paths = []
    for index in range(args.images):
        image = inputs.make_samples(*args.size, 1, 0, seed=inputs.SEED + 100 + index)[0][0]
        bgr = image.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        path = os.path.join(folder, f"{index:05d}.jpg")
        if not cv2.imwrite(path, bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise RuntimeError(f"could not write {path}")
        paths.append(path)
    return paths


def default_predictor_run(cfg, paths, warmup):
    """The plain loop: read one file, run ``DefaultPredictor`` on it; per image the detections."""
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    predictor = DefaultPredictor(cfg)
    for path in paths[:warmup]:
        predictor(read_image(path, format="BGR"))
    start = time.perf_counter()
    outputs = [predictor(read_image(path, format="BGR"))["instances"].to("cpu") for path in paths]
    return time.perf_counter() - start, outputs


def predict_tool_run(tool, cfg, setting, paths, warmup, output):
    """predict.py's pipeline with ``setting`` (backend, workers, batch size); the backend is built
    (and, for ONNX Runtime, exported) before the clock starts."""
    from retinanet_plugin.data.image_reading import read_image_checked
    from retinanet_plugin.engine.prediction_backends import predict_stream
    from retinanet_plugin.evaluation import coco_results_for_image

    backend_name, workers, batch_size = setting
    argv = ["--config-file", peers.PLUGIN_CONFIG, "--output", output]
    argv += ["--backend", backend_name, "--workers", str(workers), "--batch-size", str(batch_size)]
    exported = os.path.join(output, "model.onnx")  # by the first onnxruntime run: reused
    if backend_name == "onnxruntime" and os.path.isfile(exported):
        argv += ["--onnx", exported]
    args = tool.parse_args(argv + ["--no-draw", "--no-progress"])
    start = time.perf_counter()
    backend = tool.build_backend(cfg, args)
    build_s = time.perf_counter() - start
    if warmup:
        backend.predict([read_image_checked(path, "BGR") for path in paths[:warmup]])
    max_dets = tool.max_detections(cfg, args)
    sources = [tool.ImageSource(path) for path in paths]
    results, outputs = [], []
    start = time.perf_counter()
    stream = tool.image_stream(args, sources)
    for item, instances in predict_stream(backend, stream, max_dets, progress=False):
        results += coco_results_for_image(instances, item.index + 1, {})
        outputs.append(instances)
    return time.perf_counter() - start, outputs, build_s, stream.workers


def compare(expected, actual):
    """How many images have the same detections (counts and classes, in score order), and the
    largest box and score differences among those."""
    same, boxes, scores = 0, 0.0, 0.0
    for e, a in zip(expected, actual):
        if len(e) != len(a) or not torch.equal(e.pred_classes, a.pred_classes):
            continue
        same += 1
        if len(e):
            boxes = max(boxes, float((e.pred_boxes.tensor - a.pred_boxes.tensor).abs().max()))
            scores = max(scores, float((e.scores - a.scores).abs().max()))
    return {
        "images_with_same_detections": same,
        "images": len(expected),
        "max_box_diff": boxes,
        "max_score_diff": scores,
    }


def label(setting):
    backend, workers, batch_size = setting
    return f"predict.py {backend}, batch {batch_size}, {workers} workers"


def markdown(report) -> str:
    info, problem = report["machine"], report["problem"]
    lines = [
        f"# predict.py throughput vs a DefaultPredictor loop ({info['device']})",
        "",
        f"Machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, {info['torch_threads']} torch "
        f"threads, torch {info['torch']}, detectron2 {info['detectron2']}; load average "
        f"{info['load_average_at_start'][0]:.1f} at start, {report['load_average_at_end'][0]:.1f} "
        f"at end. Run {info['date_utc']}, code at {str(info.get('git_commit', '?'))[:10]}.",
        "",
        f"{problem['images']} JPEG files of {problem['file_size'][0]}x{problem['file_size'][1]} "
        f"(model input {problem['input_size'][0]}x{problem['input_size'][1]}), R{problem['depth']}"
        f"-FPN, the same weights (fingerprint {report['weights_fingerprint']}) for every run; "
        f"{report['warmup']} untimed warm-up images per run, {report['rounds']} round(s) in "
        "alternating order, images/s from the summed wall time of the rounds. Ratio: "
        "images/s / DefaultPredictor's (> 1: faster).",
        "",
        "| pipeline | images/s | wall s | vs DefaultPredictor | images with the same detections "
        "| max box diff px |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in report["runs"].items():
        check = run.get("vs_default_predictor")
        lines.append(
            f"| {name} | {run['images_per_s']:.3f} | {sum(run['wall_s']):.1f} | "
            f"{run['ratio']:.2f} | "
            + (
                f"{check['images_with_same_detections']}/{check['images']} | "
                f"{check['max_box_diff']:.2g} |"
                if check
                else "- | - |"
            )
        )
    lines += ["", "Notes:"]
    for name, run in report["runs"].items():
        if name != DEFAULT_PREDICTOR:
            lines.append(
                f"- {name}: backend built in {run['build_s']:.1f} s (not timed), "
                f"{run['workers_used']} worker processes"
            )
    lines.append(
        "- same detections: counts and classes equal to DefaultPredictor's, in score order; box "
        "differences over those images (ONNX Runtime has its own kernels: near-ties at the score "
        "threshold or in NMS can change an image's detections)"
    )
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    tool = load_predict_tool()
    workers = worker_settings(args.workers, tool.default_workers())
    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(tool.backends.BACKENDS))
    if unknown:
        raise SystemExit(f"--backends: unknown {unknown}, choose among {tool.backends.BACKENDS}")
    settings = list(itertools.product(backends, workers, args.batch_size))
    info = machine.machine_info("cpu")
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as folder:
        checkpoint, fingerprint, calibration = prepare_checkpoint(args, folder)
        cfg = plugin_cfg(args, checkpoint)
        paths = write_images(args, folder)
        names = [DEFAULT_PREDICTOR] + [label(s) for s in settings]
        runs = {name: {"wall_s": [], "build_s": 0.0} for name in names}
        outputs = {}
        for round_index in range(args.rounds):
            order = names if round_index % 2 == 0 else names[::-1]
            for name in order:
                if name == DEFAULT_PREDICTOR:
                    wall, outputs[name] = default_predictor_run(cfg, paths, args.warmup)
                else:
                    setting = settings[names.index(name) - 1]
                    wall, outputs[name], build_s, used = predict_tool_run(
                        tool, cfg, setting, paths, args.warmup, os.path.join(folder, "out")
                    )
                    runs[name].update(build_s=build_s, workers_used=used)
                runs[name]["wall_s"].append(wall)
                print(
                    f"round {round_index + 1}: {name:45s} {wall:8.1f} s, "
                    f"{args.images / wall:7.3f} images/s",
                    flush=True,
                )
    base = args.images * args.rounds / sum(runs[DEFAULT_PREDICTOR]["wall_s"])
    for name, run in runs.items():
        run["images_per_s"] = args.images * args.rounds / sum(run["wall_s"])
        run["median_wall_s"] = statistics.median(run["wall_s"])
        run["ratio"] = run["images_per_s"] / base
        if name != DEFAULT_PREDICTOR:
            run["vs_default_predictor"] = compare(outputs[DEFAULT_PREDICTOR], outputs[name])
    report = {
        "machine": info,
        "load_average_at_end": list(os.getloadavg()),
        "problem": {
            "images": args.images,
            "file_size": list(args.size),
            "input_size": list(input_size(cfg, args.size)),
            "depth": args.depth,
            "config_overrides": list(args.opts),
            "jpeg_quality": JPEG_QUALITY,
            "detections_per_image_default_predictor": statistics.mean(
                len(o) for o in outputs[DEFAULT_PREDICTOR]
            ),
        },
        "weights_fingerprint": fingerprint,
        "calibration": calibration,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "runs": runs,
    }
    text = markdown(report)
    report_files.write_files(
        args.output,
        "predict_cpu",
        {".json": report_files.json_bytes(report, indent=1), ".md": text.encode()},
    )
    print(text)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
