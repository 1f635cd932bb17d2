#!/usr/bin/env python
"""Run the model on image files, ``--batch-size`` images per forward, and write the detections drawn with
Detectron2's ``Visualizer``.

    python tools/predict.py --config-file CONFIG.yaml --input a.jpg dir/ 'imgs/*.png' --output out/ \
        [--batch-size 4] [--mosaic out/all.png] MODEL.WEIGHTS model_final.pth

Preprocessing is ``DefaultPredictor``'s (``retinanet_plugin.engine.BatchPredictor``); with ``--batch-size 1`` (the
default) each image gets exactly ``DefaultPredictor``'s detections. In a larger batch, images are padded to the
largest one, which can change the detections of smaller images near their bottom and right borders.
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

from retinanet_plugin.engine import config_from_file
from retinanet_plugin.engine.batch_predictor import BatchPredictor
from retinanet_plugin.utils import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="folder for the drawn images and detections.json")
    parser.add_argument("--confidence-threshold", type=float, default=0.3, help="lowest score drawn")
    parser.add_argument("--mosaic", default="", help="also write all drawn images tiled into this file")
    parser.add_argument("--max-images", type=int, default=0, help="use only the first N inputs (0: all)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward of the model")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser.parse_args(argv)


def expand_inputs(patterns):
    """Image paths from files, folders and glob patterns; an input that matches nothing is an error."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(p for p in glob.glob(os.path.join(pattern, "*")) if p.lower().endswith(IMAGE_SUFFIXES))
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
        canvas[r * height : r * height + image.shape[0], c * width : c * width + image.shape[1]] = image
    return canvas


def write_png(path, rgb):
    """Write an RGB uint8 image as PNG, atomically; an encoding failure is an error, not a silent no-op."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {path!r} as PNG")
    atomic_write(path, lambda f: f.write(data.tobytes()))


def read_image(path):
    """BGR uint8, which the predictor expects whatever INPUT.FORMAT is."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path!r}")
    return image


def main(argv=None):
    args = parse_args(argv)
    cfg = setup_cfg(args)
    paths = expand_inputs(args.input)
    if args.max_images > 0:
        paths = paths[: args.max_images]
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    predictor = BatchPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    os.makedirs(args.output, exist_ok=True)
    drawn, records = [], []
    for first in range(0, len(paths), args.batch_size):
        batch_paths = paths[first : first + args.batch_size]
        images = [read_image(path) for path in batch_paths]
        outputs = predictor(images)
        for index, path, image, output in zip(range(first, first + len(images)), batch_paths, images, outputs):
            instances = output["instances"].to("cpu")
            instances = instances[instances.scores >= args.confidence_threshold]
            vis = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(instances).get_image()
            stem = os.path.splitext(os.path.basename(path))[0]
            out_path = os.path.join(args.output, f"{index:04d}_{stem}_pred.png")  # unique even for equal file names
            write_png(out_path, vis)
            drawn.append(vis)
            records.append(
                {
                    "file": path,
                    "drawn": out_path,
                    "boxes_xyxy": instances.pred_boxes.tensor.tolist(),
                    "scores": instances.scores.tolist(),
                    "classes": instances.pred_classes.tolist(),
                }
            )
            print(f"{path}: {len(instances)} detections -> {out_path}")
    atomic_write(os.path.join(args.output, "detections.json"), lambda f: f.write(json.dumps(records, indent=1).encode()))
    if args.mosaic:
        write_png(args.mosaic, tile(drawn))
        print(f"mosaic of {len(drawn)} images -> {args.mosaic}")
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
