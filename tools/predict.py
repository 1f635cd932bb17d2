#!/usr/bin/env python
"""Run the model on image files, ``--batch-size`` images per forward, and write the detections drawn
with Detectron2's ``Visualizer``; or evaluate it on a dataset.

    python tools/predict.py --config-file CONFIG.yaml --input a.jpg dir/ 'imgs/*.png' \
        --output out/ [--batch-size 4] [--mosaic out/all.png] MODEL.WEIGHTS model_final.pth
    # sliced inference on a large image
    python tools/predict.py --config-file CONFIG.yaml --input big.tif --output out/ \
        --tile 512 --tile-overlap 0.25 MODEL.WEIGHTS model_final.pth
    # AP on whole large images (out/metrics.json)
    python tools/predict.py --config-file CONFIG.yaml --evaluate coco:val.json --output out/ \
        --tile 512 MODEL.WEIGHTS model_final.pth

Preprocessing is ``DefaultPredictor``'s (``retinanet_plugin.engine.BatchPredictor``); with
``--batch-size 1`` (the default) each image gets exactly ``DefaultPredictor``'s detections. In a
larger batch, images are padded to the largest one, which can change the detections of smaller
images near their bottom and right borders. Images are read as the trainer reads them (EXIF
orientation, palette/RGBA/16-bit files: ``read_image_checked``).

``--tile SIZE`` cuts each image into SIZE px tiles overlapping by ``--tile-overlap`` (a fraction of
SIZE), runs the model on each tile (``--batch-size`` tiles per forward) and merges the detections by
class-aware NMS across tiles (``retinanet_plugin.engine.tiled_inference``); each tile gets the
test-time resize, so set ``INPUT.MIN_SIZE_TEST`` (and ``MAX_SIZE_TEST``) to SIZE to run tiles at
their own resolution. ``--evaluate DATASET`` (a registered name or ``coco:JSON``, ``voc:FOLDER``)
runs the same inference on every image of the dataset, whole, and prints COCO AP computed at
``--max-detections`` per image (faster-coco-eval when installed, else pycocotools).
"""

import argparse
import glob
import json
import os
import sys

import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.utils.visualizer import Visualizer

from retinanet_plugin.data import dataset_class_names
from retinanet_plugin.data.image_reading import read_image_checked
from retinanet_plugin.engine import config_from_file
from retinanet_plugin.engine.batch_predictor import BatchPredictor
from retinanet_plugin.engine.tiled_inference import TiledPredictor
from retinanet_plugin.utils import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--input", nargs="+", default=[], help="image files, folders or glob patterns"
    )
    parser.add_argument(
        "--output", required=True, help="folder for the drawn images and detections.json"
    )
    parser.add_argument(
        "--evaluate",
        default="",
        metavar="DATASET",
        help="instead of --input: COCO AP on this dataset (registered name, coco:JSON, voc:FOLDER)",
    )
    parser.add_argument(
        "--tile", type=int, default=0, metavar="SIZE", help="sliced inference in SIZE px tiles"
    )
    parser.add_argument(
        "--tile-overlap",
        type=float,
        default=0.25,
        metavar="FRACTION",
        help="overlap of neighbouring tiles, a fraction of --tile (default 0.25)",
    )
    parser.add_argument(
        "--max-detections",
        type=int,
        default=0,
        help="detections kept per image (and AP limit of --evaluate); default "
        "TEST.DETECTIONS_PER_IMAGE "
        "without --tile, 1000 with it",
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.3, help="lowest score drawn"
    )
    parser.add_argument(
        "--mosaic", default="", help="also write all drawn images tiled into this file"
    )
    parser.add_argument(
        "--max-images", type=int, default=0, help="use only the first N inputs (0: all)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward of the model")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser.parse_args(argv)


def expand_inputs(patterns):
    """Image paths from files, folders and glob patterns; an input that matches nothing is an
    error."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                p
                for p in glob.glob(os.path.join(pattern, "*"))
                if p.lower().endswith(IMAGE_SUFFIXES)
            )
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise FileNotFoundError(f"--input {pattern!r} matches no image file")
        paths.extend(found)
    return paths


def setup_cfg(args):
    cfg, warnings = config_from_file(args.config_file, args.opts)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    cfg.freeze()
    return cfg


def tile(images, columns=3):
    """Tile HxWx3 uint8 images (any sizes) into one image, row by row."""
    height = max(i.shape[0] for i in images)
    width = max(i.shape[1] for i in images)
    rows = (len(images) + columns - 1) // columns
    canvas = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
    for n, image in enumerate(images):
        r, c = divmod(n, columns)
        canvas[r * height : r * height + image.shape[0], c * width : c * width + image.shape[1]] = (
            image
        )
    return canvas


def write_png(path, rgb):
    """Write an RGB uint8 image as PNG, atomically; an encoding failure is an error, not a silent
    no-op."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {path!r} as PNG")
    atomic_write(path, lambda f: f.write(data.tobytes()))


def read_image(path, expected_size=None):
    """BGR uint8, which the predictor expects whatever INPUT.FORMAT is; read as the trainer reads
    images."""
    return read_image_checked(path, "BGR", expected_size=expected_size)


def max_detections(cfg, args):
    if args.max_detections < 0:
        raise ValueError(f"--max-detections must be >= 1, got {args.max_detections}")
    return args.max_detections or (1000 if args.tile else cfg.TEST.DETECTIONS_PER_IMAGE)


def build_predictor(cfg, args, make_predictor=BatchPredictor):
    """The predictor of ``cfg`` (``make_predictor(cfg)``), tiled when ``--tile`` asks for it: a
    callable from a list of BGR images to ``[{"instances": Instances}]``."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    predictor = make_predictor(cfg)
    if not args.tile:
        return predictor
    return TiledPredictor(
        predictor,
        args.tile,
        args.tile_overlap,
        nms_thresh=cfg.MODEL.RETINANET.NMS_THRESH_TEST,
        max_detections=max_detections(cfg, args),
        batch_size=args.batch_size,
    )


def visualizer_metadata(cfg):
    """The metadata the detections are drawn with: the first test (else training) dataset's, class
    names loaded."""
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    if not names:
        return None
    dataset_class_names(names[0])  # COCO json / VOC datasets set thing_classes when loaded
    return MetadataCatalog.get(names[0])


def evaluate(cfg, args, predictor):
    """``--evaluate``: AP on the dataset's whole images, printed and written to
    ``--output``/metrics.json."""
    from retinanet_plugin.data import register_file_datasets
    from retinanet_plugin.evaluation import evaluate_on_dataset

    register_file_datasets([args.evaluate], voc_classes=tuple(cfg.DATASETS.VOC_CLASSES))
    step = 1 if args.tile else args.batch_size
    summary = evaluate_on_dataset(
        cfg, args.evaluate, predictor, max_detections=max_detections(cfg, args), batch_size=step
    )
    summary.update(
        dataset=args.evaluate, tile=args.tile, tile_overlap=args.tile_overlap if args.tile else None
    )
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "metrics.json")
    atomic_write(path, lambda f: f.write(json.dumps(summary, indent=1).encode()))
    how = f"tiles of {args.tile} px, overlap {args.tile_overlap}" if args.tile else "whole images"
    print(
        f"{args.evaluate}: {summary['num_images']} images, {how}, {summary['num_detections']} "
        "detections "
        f"(at most {summary['max_detections']} per image), {summary['backend']}"
    )
    for key, value in summary["metrics"].items():
        print(f"  {key:>12s} {value:6.2f}")
    print(f"-> {path}")
    return summary


def main(argv=None, make_predictor=BatchPredictor):
    args = parse_args(argv)
    cfg = setup_cfg(args)
    if args.evaluate:
        return evaluate(cfg, args, build_predictor(cfg, args, make_predictor))
    if not args.input:
        raise ValueError("give --input (images) or --evaluate (a dataset)")
    paths = expand_inputs(args.input)
    if args.max_images > 0:
        paths = paths[: args.max_images]
    predictor = build_predictor(cfg, args, make_predictor)
    step = 1 if args.tile else args.batch_size  # tiles are batched instead
    metadata = visualizer_metadata(cfg)
    class_names = metadata.get("thing_classes", None) if metadata is not None else None
    os.makedirs(args.output, exist_ok=True)
    drawn, records = [], []
    for first in range(0, len(paths), step):
        batch_paths = paths[first : first + step]
        images = [read_image(path) for path in batch_paths]
        outputs = predictor(images)
        for index, path, image, output in zip(
            range(first, first + len(images)), batch_paths, images, outputs
        ):
            instances = output["instances"].to("cpu")
            instances = instances[instances.scores >= args.confidence_threshold]
            vis = (
                Visualizer(image[:, :, ::-1], metadata)
                .draw_instance_predictions(instances)
                .get_image()
            )
            stem = os.path.splitext(os.path.basename(path))[0]
            # unique even for equal file names
            out_path = os.path.join(args.output, f"{index:04d}_{stem}_pred.png")
            write_png(out_path, vis)
            drawn.append(vis)
            records.append(
                {
                    "file": path,
                    "drawn": out_path,
                    "boxes_xyxy": instances.pred_boxes.tensor.tolist(),
                    "scores": instances.scores.tolist(),
                    "classes": instances.pred_classes.tolist(),
                    "labels": [
                        class_names[c] if class_names and c < len(class_names) else str(c)
                        for c in instances.pred_classes.tolist()
                    ],
                }
            )
            print(f"{path}: {len(instances)} detections -> {out_path}")
    atomic_write(
        os.path.join(args.output, "detections.json"),
        lambda f: f.write(json.dumps(records, indent=1).encode()),
    )
    if args.mosaic:
        write_png(args.mosaic, tile(drawn))
        print(f"mosaic of {len(drawn)} images -> {args.mosaic}")
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
