#!/usr/bin/env python
"""Run the model on image files, ``--batch-size`` images per forward, and write the detections
(drawn with Detectron2's ``Visualizer``, as json and as a COCO results json); or evaluate it on a
dataset.

    python tools/predict.py --config-file CONFIG.yaml --input a.jpg dir/ 'imgs/*.png' \
        --output out/ [--batch-size 4] [--workers 2] [--mosaic out/all.png] MODEL.WEIGHTS model.pth
    # a folder of thousands of images: no drawings, the json files only
    python tools/predict.py --config-file CONFIG.yaml --input photos/ --output out/ --no-draw \
        MODEL.WEIGHTS model.pth
    # ONNX Runtime (the model of tools/export_model.py --format onnx, or exported now)
    python tools/predict.py --config-file CONFIG.yaml --input photos/ --output out/ \
        --backend onnxruntime [--onnx exported/model.onnx] MODEL.WEIGHTS model.pth
    # sliced inference on a large image
    python tools/predict.py --config-file CONFIG.yaml --input big.tif --output out/ \
        --tile 512 --tile-overlap 0.25 MODEL.WEIGHTS model.pth
    # AP on whole large images (out/metrics.json, out/coco_results.json)
    python tools/predict.py --config-file CONFIG.yaml --evaluate coco:val.json --output out/ \
        --tile 512 MODEL.WEIGHTS model.pth

Images are decoded by ``--workers`` processes (0: in the main process) while the model runs, read
as the trainer reads them, in input order (``retinanet_plugin.engine.image_stream``), with a
progress bar on stderr (``--no-progress``: none). A file that cannot be read stops the run with an
error naming it, before any json file is written; ``--skip-bad-images`` leaves it out with a
warning, listed in OUTPUT/skipped_images.json. Preprocessing is ``DefaultPredictor``'s: with
``--batch-size 1`` (the default) each image gets exactly its detections; a larger batch pads the
images to the largest one, which can change those of smaller images near their bottom and right
borders. ``--backend onnxruntime`` runs the exported model (``--onnx FILE`` from
``tools/export_model.py --format onnx``, else the config's exported now to OUTPUT/model.onnx) in
ONNX Runtime, with eager PyTorch's detections up to float rounding
(``retinanet_plugin.engine.prediction_backends``).

Files written (each atomically), under ``--output``:

- ``<index>_<name>_pred.png``: each image with its detections at or above
  ``--confidence-threshold`` (not with ``--no-draw``);
- ``detections.json``: per image, ``file``, ``image_id``, ``drawn``, ``boxes_xyxy``, ``scores``,
  ``classes``, ``labels`` of the detections at or above ``--confidence-threshold``;
- ``coco_results.json`` (or ``--coco-results FILE``): every detection as COCO results, with the
  dataset's category ids (``retinanet_plugin.evaluation.dataset_category_ids``) and, with
  ``--evaluate``, image ids; for plain files, image id = 1 + the position in the input list, and
  ``coco_images.json`` lists the images and categories, a COCO dataset without annotations:
  ``COCO("coco_images.json").loadRes("coco_results.json")`` loads the results.

``--tile SIZE``: SIZE px tiles overlapping by ``--tile-overlap`` (a fraction of SIZE),
``--batch-size`` tiles per forward, merged by class-aware NMS
(``retinanet_plugin.engine.tiled_inference``); each tile gets the test-time resize (set
``INPUT.MIN_SIZE_TEST`` and ``MAX_SIZE_TEST`` to SIZE; with ``TEST.AUG.ENABLED``, the PyTorch
backend runs each image or tile under test-time augmentation at ``TEST.AUG.MIN_SIZES`` instead).
``--evaluate DATASET`` (a registered name, ``coco:JSON`` or ``voc:FOLDER``): COCO AP on its whole
images at ``--max-detections`` per image, printed and written to metrics.json; a skipped image
counts as one without detections.
"""

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from retinanet_plugin.data import dataset_class_names
from retinanet_plugin.data.image_reading import UnreadableImageError
from retinanet_plugin.engine import BatchPredictor, CheckpointReadError, config_from_file
from retinanet_plugin.engine import prediction_backends as backends
from retinanet_plugin.engine.image_stream import ImageSource, ImageStream, default_workers
from retinanet_plugin.engine.image_stream import image_files
from retinanet_plugin.evaluation import (
    coco_images_dict,
    coco_results_for_image,
    dataset_category_ids,
    score_coco_results,
)
from retinanet_plugin.utils import atomic_write


class UsageError(ValueError):
    """A problem with the command line, reported as one line."""


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def _add_task_args(add):
    add("--config-file", required=True, metavar="FILE")
    add("--input", nargs="+", default=[], help="image files, folders or glob patterns")
    add("--output", required=True, help="folder for the drawn images and the json files")
    add(
        "--evaluate",
        default="",
        metavar="DATASET",
        help="instead of --input: COCO AP on this dataset (registered name, coco:JSON, voc:FOLDER)",
    )
    add("--tile", type=int, default=0, metavar="SIZE", help="sliced inference in SIZE px tiles")
    add(
        "--tile-overlap",
        type=float,
        default=0.25,
        metavar="FRACTION",
        help="overlap of neighbouring tiles, a fraction of --tile (default 0.25)",
    )
    add(
        "--max-detections",
        type=int,
        default=0,
        help="detections kept per image (and AP limit of --evaluate); default "
        "TEST.DETECTIONS_PER_IMAGE without --tile, 1000 with it",
    )
    add(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="lowest score drawn and written to detections.json (coco_results.json has all); "
        "0.5 as Detectron2's demo",
    )
    add("--mosaic", default="", help="also write all drawn images tiled into this file")
    add("--max-images", type=int, default=0, help="use only the first N inputs (0: all)")


def _add_run_args(add):
    add("--batch-size", type=int, default=1, help="images per forward of the model")
    add(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes decoding images while the model runs (0: in the main process; default "
        "%(default)s)",
    )
    add(
        "--backend",
        choices=backends.BACKENDS,
        default="pytorch",
        help="pytorch (eager, default) or onnxruntime (the exported model)",
    )
    add(
        "--onnx",
        default="",
        metavar="FILE",
        help="with --backend onnxruntime: the exported model (default: export it now to "
        "OUTPUT/model.onnx)",
    )
    add(
        "--coco-results",
        default="",
        metavar="FILE",
        help="where to write the COCO results json (default OUTPUT/coco_results.json)",
    )
    add(
        "--skip-bad-images",
        action="store_true",
        help="leave out unreadable image files (with a warning) instead of stopping with an error",
    )
    add("--no-draw", action="store_true", help="write the json files only, no drawn images")
    add("--no-progress", action="store_true", help="no progress bar")
    add("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_task_args(parser.add_argument)
    _add_run_args(parser.add_argument)
    return parser.parse_args(argv)


def check_args(args):
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.onnx and args.backend != "onnxruntime":
        raise UsageError("--onnx needs --backend onnxruntime")
    if args.mosaic and args.no_draw:
        raise UsageError("--mosaic needs the drawn images: drop --no-draw")


def setup_cfg(args):
    cfg, warnings = config_from_file(args.config_file, args.opts)
    for warning in warnings:
        warn(warning)
    cfg.freeze()
    return cfg


def tile(images, columns=3):
    """Tile HxWx3 uint8 images (any sizes) into one image, row by row."""
    height, width = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    canvas = np.full((-(-len(images) // columns) * height, columns * width, 3), 255, np.uint8)
    for n, image in enumerate(images):
        top, left = n // columns * height, n % columns * width
        canvas[top : top + image.shape[0], left : left + image.shape[1]] = image
    return canvas


def write_png(path, rgb):
    """Write an RGB uint8 image as PNG, atomically; an encoding failure is an error, not a no-op."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {path!r} as PNG")
    atomic_write(path, lambda f: f.write(data.tobytes()))


def write_json(path, obj, indent=None):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent).encode()))


def max_detections(cfg, args):
    if args.max_detections < 0:
        raise UsageError(f"--max-detections must be >= 1, got {args.max_detections}")
    return args.max_detections or (1000 if args.tile else cfg.TEST.DETECTIONS_PER_IMAGE)


def build_backend(cfg, args, make_predictor=BatchPredictor):
    """The backend ``--backend`` names (``retinanet_plugin.engine.prediction_backends``), run tile
    by tile with ``--tile``: ``predict(images)`` gives one ``Instances`` per BGR image."""
    check_args(args)
    if args.backend == "onnxruntime" and not args.onnx:
        os.makedirs(args.output, exist_ok=True)
    return backends.build_backend(
        cfg,
        args.backend,
        onnx=args.onnx,
        export_path=os.path.join(args.output, "model.onnx"),
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        max_detections=max_detections(cfg, args),
        batch_size=args.batch_size,
        make_predictor=make_predictor,
    )


def image_stream(args, sources, exif_orientation="auto"):
    """The images of ``sources``: one per step with --tile (its tiles are batched instead), else
    --batch-size."""
    return ImageStream(
        sources,
        batch_size=1 if args.tile else args.batch_size,
        workers=args.workers,
        exif_orientation=exif_orientation,
        skip_unreadable=args.skip_bad_images,
    )


def predictions(backend, stream, args, max_dets):
    """``predict_stream`` of ``backend`` on ``stream``, and when it is done, the speed printed."""
    start = time.perf_counter()
    yield from backends.predict_stream(backend, stream, max_dets, not args.no_progress)
    print(backends.speed_report(stream, backend, time.perf_counter() - start))


def write_skipped(args, stream):
    if args.skip_bad_images:
        skipped = [{"file": s.file_name, "error": message} for s, message in stream.skipped]
        write_json(os.path.join(args.output, "skipped_images.json"), skipped, indent=1)


def visualizer_metadata(cfg):
    """The metadata the detections are drawn with: the first test (else training) dataset's, class
    names loaded."""
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    if not names:
        return None
    dataset_class_names(names[0])  # COCO json / VOC datasets set thing_classes when loaded
    return MetadataCatalog.get(names[0])


def coco_results_path(args):
    return args.coco_results or os.path.join(args.output, "coco_results.json")


def evaluate(cfg, args, make_predictor=BatchPredictor):
    """``--evaluate``: AP on the dataset's whole images, printed and written to
    ``--output``/metrics.json; the detections to coco_results.json, with the dataset's ids."""
    from retinanet_plugin.data import register_file_datasets
    from retinanet_plugin.data.checked_loading import load_checked_dataset_dicts

    max_dets = max_detections(cfg, args)
    register_file_datasets([args.evaluate], voc_classes=tuple(cfg.DATASETS.VOC_CLASSES))
    dicts = load_checked_dataset_dicts(cfg, args.evaluate, is_train=False)
    to_dataset_id = dataset_category_ids(MetadataCatalog.get(args.evaluate))
    backend = build_backend(cfg, args, make_predictor)
    sources = [ImageSource.of_dataset_dict(d) for d in dicts]
    stream = image_stream(args, sources, cfg.DATASETS.get("EXIF_ORIENTATION", "auto"))
    results = []
    for item, instances in predictions(backend, stream, args, max_dets):
        results += coco_results_for_image(instances, item.source.image_id, to_dataset_id)
    os.makedirs(args.output, exist_ok=True)
    write_json(coco_results_path(args), results)  # before the evaluation, which adds fields
    write_skipped(args, stream)
    summary = {
        "num_images": len(dicts),
        **score_coco_results(args.evaluate, results, max_dets, warn=warn),
        "dataset": args.evaluate,
        "tile": args.tile,
        "tile_overlap": args.tile_overlap if args.tile else None,
        "inference_backend": backend.name,
        "skipped_images": len(stream.skipped),
    }
    path = os.path.join(args.output, "metrics.json")
    write_json(path, summary, indent=1)
    how = f"tiles of {args.tile} px, overlap {args.tile_overlap}" if args.tile else "whole images"
    print(
        f"{args.evaluate}: {summary['num_images']} images, {how}, {summary['num_detections']} "
        f"detections (at most {max_dets} per image), {summary['backend']}"
    )
    for key, value in summary["metrics"].items():
        print(f"  {key:>12s} {value:6.2f}")
    print(f"-> {path}, {coco_results_path(args)}")
    return summary


def draw(args, item, instances, metadata):
    """OUTPUT/<index>_<name>_pred.png: ``item``'s image with ``instances`` drawn; (its path, the
    drawn image), or (None, None) with --no-draw."""
    if args.no_draw:
        return None, None
    drawing = Visualizer(item.image[:, :, ::-1], metadata).draw_instance_predictions(instances)
    stem = os.path.splitext(os.path.basename(item.source.file_name))[0]
    path = os.path.join(args.output, f"{item.index:04d}_{stem}_pred.png")  # unique for equal names
    vis = drawing.get_image()
    write_png(path, vis)
    return path, vis


def predict_files(cfg, args, make_predictor=BatchPredictor):
    """``--input``: each image's detections drawn, and written to the json files."""
    if not args.input:
        raise UsageError("give --input (images) or --evaluate (a dataset)")
    try:
        paths = image_files(args.input)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--input {error}") from None
    paths = paths[: args.max_images] if args.max_images > 0 else paths
    max_dets = max_detections(cfg, args)
    backend = build_backend(cfg, args, make_predictor)
    metadata = visualizer_metadata(cfg)
    names = metadata.get("thing_classes", None) if metadata is not None else None
    to_dataset_id = dataset_category_ids(metadata)
    os.makedirs(args.output, exist_ok=True)
    stream = image_stream(args, [ImageSource(path) for path in paths])
    drawn, records, results, images = [], [], [], []
    for item, instances in predictions(backend, stream, args, max_dets):
        path, image_id = item.source.file_name, item.index + 1
        results += coco_results_for_image(instances, image_id, to_dataset_id)
        height, width = item.image.shape[:2]
        images.append({"id": image_id, "file_name": path, "height": height, "width": width})
        instances = instances[instances.scores >= args.confidence_threshold]
        out_path, vis = draw(args, item, instances, metadata)
        if args.mosaic:
            drawn.append(vis)
        record = {"file": path, "image_id": image_id, "drawn": out_path}
        records.append({**record, **backends.detection_fields(instances, names)})
        tqdm.write(f"{path}: {len(instances)} detections" + (f" -> {out_path}" if out_path else ""))
    write_json(os.path.join(args.output, "detections.json"), records, indent=1)
    write_json(coco_results_path(args), results)
    images = coco_images_dict(images, cfg.MODEL.RETINANET.NUM_CLASSES, names, to_dataset_id)
    write_json(os.path.join(args.output, "coco_images.json"), images, indent=1)
    write_skipped(args, stream)
    if args.mosaic:
        if drawn:
            write_png(args.mosaic, tile(drawn))
        print(f"mosaic of {len(drawn)} images -> {args.mosaic}")
    return records


def main(argv=None, make_predictor=BatchPredictor):
    args = parse_args(argv)
    check_args(args)
    cfg = setup_cfg(args)
    if args.evaluate:
        return evaluate(cfg, args, make_predictor)
    return predict_files(cfg, args, make_predictor)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (UsageError, FileNotFoundError, UnreadableImageError, CheckpointReadError) as error:
        print(f"predict.py: error: {error}", file=sys.stderr)
        sys.exit(2)
