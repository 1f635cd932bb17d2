#!/usr/bin/env python
"""Export a trained RetinaNetPlugin (config + weights) for deployment: TorchScript, torch.export
and/or ONNX.

    python tools/export_model.py --config-file CONFIG.yaml --format torchscript,export,onnx \
        --output out/ [--batch-size 2] [--sample-image a.jpg b.jpg] \
        [--onnx-exporter dynamo|torchscript] MODEL.WEIGHTS model.pth

Each format holds the whole inference (normalisation, backbone, head, decoding, NMS, top detections,
rescaling) and takes a batch: images [N, 3, H, W] float32 (resized as cfg.INPUT says, in
cfg.INPUT.FORMAT channel order, padded to a multiple of the backbone's size divisibility),
image_sizes [N, 2] and output_sizes [N, 2] int64; it returns boxes [N, D, 4], scores [N, D], classes
[N, D] (-1 on padding) and num_detections [N] (retinanet_plugin.export). Files written (atomically):
model.ts, model.pt2, model.onnx and export_info.json.

The model is captured on a sample batch of --batch-size images (--sample-image files, else images of
the embedded synthetic dataset drawn in memory); unless --no-verify, each written file is loaded
back and run on that batch, and its detections are compared with the eager model's.
"""

import argparse
import json
import os
import sys
import time

import cv2
import torch

from retinanet_plugin.data.synthetic_shapes import SyntheticShapesParams, render_synthetic_image
from retinanet_plugin.engine import BatchPredictor, CheckpointReadError, config_from_file
from retinanet_plugin.export import (
    EXPORT_FORMATS,
    ExportableRetinaNet,
    INPUT_NAMES,
    ONNX_EXPORTERS,
    OUTPUT_NAMES,
    OnnxRuntimeDetector,
    batch_from_inputs,
    export_onnx,
    export_program,
    export_torchscript,
    load_program,
    load_torchscript,
    min_image_side,
    padded_detections_to_instances,
    save_onnx,
    save_program,
    save_torchscript,
)
from retinanet_plugin.utils import atomic_write

FILE_NAMES = {"torchscript": "model.ts", "export": "model.pt2", "onnx": "model.onnx"}
# Largest differences from eager mode accepted by the verification (pixels of the output size;
# probabilities).
BOX_TOLERANCE = 1e-2
SCORE_TOLERANCE = 1e-4


class ExportError(Exception):
    """A problem with the command's input, reported as one line."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--format",
        required=True,
        metavar="FORMATS",
        help=f"comma-separated, among {', '.join(EXPORT_FORMATS)}; or all",
    )
    parser.add_argument("--output", required=True, help="folder for the exported files")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=2,
        help="images in the sample batch the model is captured and verified on (>= 2 for "
        "export/onnx); "
        "the exported model takes any batch size",
    )
    parser.add_argument(
        "--sample-image",
        nargs="+",
        default=[],
        metavar="FILE",
        help="images for the sample batch (default: embedded synthetic images)",
    )
    parser.add_argument(
        "--onnx-exporter",
        choices=ONNX_EXPORTERS,
        default="dynamo",
        help="dynamo (torch.export based, PyTorch's current exporter) or torchscript (legacy, "
        "faster)",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="do not compare the exported files with eager mode"
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides, KEY VALUE pairs (MODEL.WEIGHTS ...)",
    )
    return parser.parse_args(argv)


def selected_formats(requested):
    formats = []
    for part in requested.split(","):
        if part == "all":
            formats.extend(EXPORT_FORMATS)
        elif part in EXPORT_FORMATS:
            formats.append(part)
        else:
            raise ExportError(
                f"unknown --format {part!r}: choose among {', '.join(EXPORT_FORMATS)}, or all"
            )
    return list(dict.fromkeys(formats))


def check_args(args, formats):
    if not os.path.isfile(args.config_file):
        raise ExportError(f"--config-file {args.config_file!r} does not exist")
    if args.batch_size < 1:
        raise ExportError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.batch_size < 2 and (
        "export" in formats or ("onnx" in formats and args.onnx_exporter == "dynamo")
    ):
        raise ExportError(
            "--batch-size must be >= 2 for the export and (dynamo) onnx formats: a sample batch of "
            "one image would fix the exported batch size to 1"
        )
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ExportError(f"--output {args.output!r} exists and is not a folder")


def setup_cfg(args):
    cfg, warnings = config_from_file(args.config_file, args.opts)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise ExportError(
            "MODEL.WEIGHTS is empty: give the checkpoint to export "
            "(e.g. MODEL.WEIGHTS output/model_final.pth)"
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise ExportError(f"MODEL.WEIGHTS {weights!r} does not exist")
    cfg.freeze()
    return cfg


def sample_images(args):
    """BGR uint8 images for the sample batch: the --sample-image files (repeated if fewer than
    --batch-size), else images of the embedded synthetic dataset's val split, drawn in memory."""
    if args.sample_image:
        paths = [args.sample_image[i % len(args.sample_image)] for i in range(args.batch_size)]
        images = []
        for path in paths:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise ExportError(f"cannot read --sample-image {path!r}")
            images.append(image)
        return images
    params = SyntheticShapesParams(num_val=max(args.batch_size, 1))
    return [render_synthetic_image(params, "val", i)[0] for i in range(args.batch_size)]


def compare(expected, actual):
    """Counts, classes and the largest box / score differences between two lists of Instances."""
    report = {"detections": [], "classes_equal": True, "max_box_diff": 0.0, "max_score_diff": 0.0}
    for e, a in zip(expected, actual):
        report["detections"].append([len(e), len(a)])
        if len(e) != len(a) or not torch.equal(e.pred_classes.cpu(), a.pred_classes.cpu()):
            report["classes_equal"] = False
            continue
        if len(e):
            box_diff = (e.pred_boxes.tensor.cpu() - a.pred_boxes.tensor.cpu()).abs().max()
            report["max_box_diff"] = max(report["max_box_diff"], float(box_diff))
            score_diff = (e.scores.cpu() - a.scores.cpu()).abs().max()
            report["max_score_diff"] = max(report["max_score_diff"], float(score_diff))
    report["ok"] = (
        report["classes_equal"]
        and report["max_box_diff"] <= BOX_TOLERANCE
        and report["max_score_diff"] <= SCORE_TOLERANCE
    )
    return report


def load_runner(fmt, path, device):
    if fmt == "torchscript":
        return load_torchscript(path, device)
    if fmt == "export":
        return load_program(path).module()
    return OnnxRuntimeDetector(path)


def check_sample_size(sample, exportable, formats, onnx_exporter) -> None:
    """torch.export (the "export" format, and ONNX through dynamo) needs padded sides of at least
    ``min_image_side``."""
    captured_by_torch_export = "export" in formats or (
        "onnx" in formats and onnx_exporter == "dynamo"
    )
    if captured_by_torch_export and min(sample[0].shape[-2:]) < min_image_side(exportable):
        raise ExportError(
            f"the sample batch's padded size {tuple(sample[0].shape[-2:])} is below "
            f"{min_image_side(exportable)} px, the smallest the export and onnx formats take: "
            "give larger --sample-image files"
        )


def export_info(args, cfg, predictor, exportable) -> dict:
    """What ``export_info.json`` says of the exported model's interface (its files are added)."""
    metadata = getattr(predictor, "metadata", None)
    return {
        "config_file": os.path.abspath(args.config_file),
        "weights": cfg.MODEL.WEIGHTS,
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "size_divisibility": exportable.size_divisibility,
        "min_padded_side_export": min_image_side(exportable),
        "detections_per_image": exportable.max_detections_per_image,
        "class_names": list(getattr(metadata, "thing_classes", []) or []),
        "files": {},
    }


def export_one(fmt: str, model, sample, path: str, onnx_exporter: str) -> dict:
    """Write ``model`` in format ``fmt`` to ``path``; its entry of ``export_info.json``."""
    start = time.perf_counter()
    if fmt == "torchscript":
        save_torchscript(export_torchscript(model, sample), path)
    elif fmt == "export":
        save_program(export_program(model, sample), path)
    else:
        save_onnx(export_onnx(model, sample, exporter=onnx_exporter), path)
    entry = {
        "file": os.path.basename(path),
        "export_seconds": round(time.perf_counter() - start, 2),
        "bytes": os.path.getsize(path),
    }
    if fmt == "onnx":
        entry["exporter"] = onnx_exporter
    return entry


def verify_one(fmt: str, path: str, device: str, sample, expected) -> dict:
    """The exported file reloaded and run on ``sample``, against eager mode's ``expected``."""
    runner = load_runner(fmt, path, device)
    with torch.no_grad():
        outputs = runner(*sample)
    actual = padded_detections_to_instances([o.cpu() for o in outputs], sample[2].cpu())
    return compare(expected, actual)


def main(argv=None):
    args = parse_args(argv)
    formats = selected_formats(args.format)
    check_args(args, formats)
    cfg = setup_cfg(args)
    # The model in eval mode with the weights, and DefaultPredictor's preprocessing.
    predictor = BatchPredictor(cfg)
    model = predictor.model
    exportable = ExportableRetinaNet(model)
    inputs = [predictor.prepare(image) for image in sample_images(args)]
    sample = tuple(
        t.to(model.device) for t in batch_from_inputs(inputs, exportable.size_divisibility)
    )
    check_sample_size(sample, exportable, formats, args.onnx_exporter)
    print(f"sample batch: {tuple(sample[0].shape)} (padded), image sizes {sample[1].tolist()}")
    if not args.no_verify:
        with torch.no_grad():
            expected = [out["instances"] for out in model(inputs)]
    os.makedirs(args.output, exist_ok=True)
    info = export_info(args, cfg, predictor, exportable)
    failed = []
    for fmt in formats:
        path = os.path.join(args.output, FILE_NAMES[fmt])
        entry = info["files"][fmt] = export_one(fmt, model, sample, path, args.onnx_exporter)
        line = f"{fmt}: {path} ({entry['bytes'] / 2**20:.1f} MiB) in {entry['export_seconds']} s"
        if not args.no_verify:
            v = entry["verification"] = verify_one(fmt, path, cfg.MODEL.DEVICE, sample, expected)
            line += (
                f"; vs eager: detections {[n for n, _ in v['detections']]}, max |box diff| "
                f"{v['max_box_diff']:.3g} px, max |score diff| {v['max_score_diff']:.3g}"
                f"{'' if v['ok'] else ' -- MISMATCH'}"
            )
            if not v["ok"]:
                failed.append(fmt)
        print(line)
    atomic_write(
        os.path.join(args.output, "export_info.json"),
        lambda f: f.write(json.dumps(info, indent=1).encode()),
    )
    if failed:
        raise ExportError(
            f"the exported {', '.join(failed)} model(s) differ from eager mode (see above)"
        )
    return info


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ExportError, FileNotFoundError, CheckpointReadError) as error:
        print(f"export_model.py: error: {error}", file=sys.stderr)
        sys.exit(2)
