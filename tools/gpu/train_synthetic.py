"""Short training runs of the plugin on the synthetic shapes dataset (step 7 of the GPU session).

1. ``--iters`` iterations (default 50) of ``configs/synthetic/retinanet_R18_synthetic.yaml`` with a
   ResNet of ``--depth`` (default 50) through the plugin's trainer (``RetinaNetPluginTrainer``:
   Detectron2's ``DefaultTrainer`` with its hooks, data loader and writers), then the trainer's COCO
   evaluation on the held-out images;
2. ``--amp-iters`` iterations (default 10) of the same with ``SOLVER.AMP.ENABLED`` (fp16 + gradient
   scaler on CUDA, bf16 on the CPU), from fresh weights.

A small copy of the dataset (``--num-train`` / ``--num-val`` images) is generated under ``--work``.
Every logged loss must be finite (the plugin's trainer also stops on a non-finite loss); the report
gives the first and last losses, the median seconds per iteration, the peak CUDA memory and the AP.

    python tools/gpu/train_synthetic.py --device cuda --work DIR [--json PATH]
    python tools/gpu/train_synthetic.py --device cpu --depth 18 --iters 3 --amp-iters 2 \
        --num-train 8 --num-val 2 ...
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "retinanet_R18_synthetic.yaml")
LOSSES = ("loss_cls", "loss_box_reg")


def build_cfg(args, output_dir, iters, amp, evaluate):
    from retinanet_plugin.data.synthetic_shapes import SYNTHETIC_SHAPES_TRAIN, SYNTHETIC_SHAPES_VAL
    from retinanet_plugin.engine import config_from_file

    opts = [
        "MODEL.DEVICE",
        args.device,
        "MODEL.RESNETS.DEPTH",
        args.depth,
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        64 if args.depth in (18, 34) else 256,
        "SOLVER.MAX_ITER",
        iters,
        "SOLVER.WARMUP_ITERS",
        min(10, iters),
        "SOLVER.STEPS",
        (),
        "SOLVER.CHECKPOINT_PERIOD",
        10**7,
        "SOLVER.AMP.ENABLED",
        amp,
        "DATALOADER.NUM_WORKERS",
        args.workers,
        "DATASETS.TRAIN",
        (SYNTHETIC_SHAPES_TRAIN,),
        "DATASETS.TEST",
        (SYNTHETIC_SHAPES_VAL,) if evaluate else (),
        "TEST.EVAL_PERIOD",
        0,
        "OUTPUT_DIR",
        output_dir,
    ]
    cfg, warnings = config_from_file(
        CONFIG, [str(o) if not isinstance(o, tuple) else o for o in opts]
    )
    for warning in warnings:
        print("config:", warning)
    cfg.freeze()
    return cfg


def run(args, name, iters, amp, evaluate):
    from retinanet_plugin.engine import RetinaNetPluginTrainer

    cfg = build_cfg(args, os.path.join(args.work, name), iters, amp, evaluate)
    torch.manual_seed(0)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = RetinaNetPluginTrainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None)  # set by the trainer's evaluation hook
    seconds = time.perf_counter() - start
    storage = trainer.storage
    entry = {
        "iterations": iters,
        "amp": amp,
        "depth": args.depth,
        "seconds": seconds,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
    }
    finite = True
    for key in LOSSES + ("total_loss",):
        values = [v for v, _ in storage.history(key).values()] if key in storage.histories() else []
        if not values:
            entry.setdefault("missing", []).append(key)
            finite = False
            continue
        entry[key] = {
            "first": values[0],
            "last": values[-1],
            "min": min(values),
            "max": max(values),
            "logged": len(values),
        }
        finite &= all(math.isfinite(v) for v in values)
    if "time" in storage.histories():
        times = [v for v, _ in storage.history("time").values()]
        entry["median_seconds_per_iter"] = statistics.median(times) if times else None
    entry["all_losses_finite"] = finite
    if amp:
        inner = trainer._trainer
        scaler = getattr(inner, "grad_scaler", None)
        entry["amp_precision"] = str(getattr(inner, "precision", None))
        entry["grad_scaler_enabled"] = bool(scaler is not None and scaler.is_enabled())
        if entry["grad_scaler_enabled"]:
            entry["grad_scale"] = float(scaler.get_scale())
    if args.device == "cuda":
        entry["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    if evaluate:
        bbox = results.get("bbox") if isinstance(results, dict) else None
        entry["bbox"] = {k: bbox[k] for k in ("AP", "AP50", "AP75") if k in bbox} if bbox else None
    ok = finite and not entry.get("missing")
    if evaluate and not entry["bbox"]:
        entry["error"] = "the trainer's COCO evaluation gave no bbox results"
        ok = False
    if amp and args.device == "cuda":
        ok &= entry["grad_scaler_enabled"]  # fp16 on CUDA: the scaler must be on
    entry["ok"] = bool(ok)
    return entry


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--amp-iters", type=int, default=10, help="0: no AMP run")
    parser.add_argument("--num-train", type=int, default=100)
    parser.add_argument("--num-val", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="DATALOADER.NUM_WORKERS")
    parser.add_argument(
        "--no-eval", action="store_true", help="skip the COCO evaluation after the fp32 run"
    )
    parser.add_argument(
        "--work", required=True, help="folder for the dataset and the trainer's output"
    )
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")

    from detectron2.utils.logger import setup_logger

    import retinanet_plugin  # noqa: F401  (registers the components)
    from retinanet_plugin.data.synthetic_shapes import DATASET_DIRNAME, register_synthetic_shapes

    setup_logger(name="detectron2")
    setup_logger(name="retinanet_plugin")
    os.makedirs(args.work, exist_ok=True)
    register_synthetic_shapes(
        os.path.join(args.work, DATASET_DIRNAME), num_train=args.num_train, num_val=args.num_val
    )
    report = {"device": args.device, "runs": {}, "failures": []}
    if args.device == "cuda":
        report["device_name"] = torch.cuda.get_device_name()
    plan = [("fp32", args.iters, False, not args.no_eval)]
    if args.amp_iters > 0:
        plan.append(("amp", args.amp_iters, True, False))
    for name, iters, amp, evaluate in plan:
        try:
            entry = run(args, name, iters, amp, evaluate)
        except Exception as e:  # noqa: BLE001  (recorded; the next run still goes)
            traceback.print_exc()
            entry = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        report["runs"][name] = entry
        if not entry["ok"]:
            report["failures"].append(
                f"{name}: {entry.get('error', 'non-finite or missing losses')}"
            )
        print(f"train {name}: {json.dumps(entry, default=str)}", flush=True)
    report["ok"] = not report["failures"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
