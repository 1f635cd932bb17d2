#!/usr/bin/env python
"""Convert a Detectron2 RetinaNet checkpoint into a plugin checkpoint.

    python tools/convert_detectron2_retinanet.py --input model_final.pkl \
        --output retinanet_plugin.pth [--num-classes K]

``--input`` is a model-zoo ``.pkl`` or a ``.pth`` written by ``DetectionCheckpointer``. The output
holds ``{"model": state_dict, "__author__": ..., "meta": {...}}`` and is written atomically
(temporary file, then rename); load it with ``MODEL.WEIGHTS``. With ``--num-classes`` different from
the checkpoint's, the class output layer (``head.cls_score``) is left out, to fine-tune on another
dataset.

A ``.pkl`` is read with a restricted unpickler (``retinanet_plugin.checkpoint.safe_pickle``) that
admits only numpy arrays, plain containers and numbers, and a ``.pth`` with
``torch.load(weights_only=True)``: a file that asks for anything else (``os.system``, ``eval``, ...)
is refused, naming the file and the global, and nothing in it runs. Every error names the input
file and exits with status 1.
"""

import argparse
import json
import logging
import os
import sys

from retinanet_plugin.checkpoint import (
    convert_detectron2_retinanet_state_dict,
    load_detectron2_checkpoint,
    save_plugin_checkpoint,
)

AUTHOR = "retinanet_plugin tools/convert_detectron2_retinanet.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="Detectron2 RetinaNet checkpoint (.pkl or .pth)",
    )
    parser.add_argument(
        "--output", required=True, metavar="FILE", help="plugin checkpoint to write (.pth)"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="K",
        help="the plugin model's MODEL.RETINANET.NUM_CLASSES; head.cls_score is dropped when it "
        "differs",
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Run the conversion; returns the report (also printed as JSON)."""
    args = parse_args(argv)
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise SystemExit("--output must differ from --input")
    checkpoint = load_detectron2_checkpoint(args.input)  # its errors name the file
    try:
        state_dict, report = convert_detectron2_retinanet_state_dict(
            checkpoint["model"], num_classes=args.num_classes
        )
    except ValueError as e:
        raise ValueError(f"{args.input}: {e}") from e
    meta = {
        "source": os.path.abspath(args.input),
        "source_author": str(checkpoint.get("__author__", "")),
        "num_classes": report["num_classes"] if args.num_classes is None else args.num_classes,
        "conversion": report,
    }
    save_plugin_checkpoint(state_dict, args.output, __author__=AUTHOR, meta=meta)
    summary = {"output": os.path.abspath(args.output), "num_weights": len(state_dict), **report}
    print(json.dumps(summary, indent=2))
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
