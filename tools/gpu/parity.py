"""Parity of the plugin with Detectron2's RetinaNet on one device (step 7 of the GPU session).

The comparison of ``tests/test_parity.py``, run on ``--device`` (its helpers are imported from
there, so the two cannot drift apart; with them the random-weight calibration of
``benchmarks/harness/calibration.py``): Detectron2's ``RetinaNet`` from its own R50 config with sane
random weights, the plugin's model with the same weights copied through the checkpoint converter
(``strict=True``), both moved to the device. Compared within 1e-4: the detections of a two-image
batch (boxes and scores of detections paired one to one: same class, near-equal scores in either
order; counts must be equal), and
over two training steps the losses, the loss normaliser and the gradients of ten parameters spread
over the network (step 0 with an SGD update, step 1 on the updated weights).

On CUDA, TF32 is switched off and cuDNN made deterministic, so that both models run the same
arithmetic.

    python tools/gpu/parity.py --device cuda [--depths R50] [--impls op,reference] [--json PATH]

Exit status 1 when a comparison fails.
"""

import argparse
import json
import math
import sys
import time
import traceback

import torch

import repo_modules  # beside this file

# tests/ is not a package: the test module and its helpers (one registers the benchmark harness)
# are loaded by their location
tp = repo_modules.test_module("test_parity", helpers=("inference_checks", "sane_random_weights"))


def detections(depth, impl, device):
    reference = tp.detectron2_model(depth)
    # Detectron2's execution (norms unfolded): equal weights give equal detections to 1e-4
    plugin = tp.plugin_model_like(reference, tp.plugin_cfg(depth, impl, overrides=tp.UNFOLDED))
    reference.to(device)
    plugin.to(device)
    expected = tp.run_inference(reference)
    actual = tp.run_inference(plugin)
    per_image = [len(o["instances"]) for o in expected]
    classes = [len(set(o["instances"].pred_classes.tolist())) for o in expected]
    meaningful = min(per_image) >= 50 and min(classes) >= 5
    diff = tp.detection_differences(expected, actual)
    ok = meaningful and diff["boxes"] <= tp.TOLERANCE and diff["scores"] <= tp.TOLERANCE
    return {
        "ok": ok,
        "detections_per_image": per_image,
        "classes_per_image": classes,
        "max_box_diff_px": diff["boxes"],
        "max_score_diff": diff["scores"],
        "compared": diff["count"],
        **(
            {}
            if meaningful
            else {"error": "too few detections or classes for a meaningful comparison"}
        ),
    }


def compare_gradients(grads_ref, grads_plugin, entry) -> bool:
    """Whether both models have the same gradients within the tolerance (figures into ``entry``)."""
    if set(grads_ref) != set(grads_plugin) or not grads_ref:
        entry["max_grad_diff"] = math.inf
        return False
    entry["max_grad_diff"] = max(
        float((grads_ref[k] - grads_plugin[k]).abs().max()) for k in grads_ref
    )
    entry["max_grad"] = max(float(grads_ref[k].abs().max()) for k in grads_ref)
    ok = True
    for name in grads_ref:
        if not torch.allclose(
            grads_plugin[name], grads_ref[name], atol=tp.TOLERANCE, rtol=tp.TOLERANCE
        ):
            entry.setdefault("grads_outside_tolerance", []).append(name)
            ok = False
    return ok


def training(depth, impl, device):
    reference = tp.detectron2_model(depth)
    plugin = tp.plugin_model_like(reference, tp.plugin_cfg(depth, impl))
    reference.to(device)
    plugin.to(device)
    optimizers = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        for m in (reference, plugin)
    ]
    result = {"steps": []}
    ok = True
    for step, with_update in ((0, True), (1, False)):
        opt_ref, opt_plugin = optimizers if with_update else (None, None)
        losses_ref, norm_ref, grads_ref = tp.training_step(reference, step, opt_ref)
        losses_plugin, norm_plugin, grads_plugin = tp.training_step(plugin, step, opt_plugin)
        loss_diff = tp.max_abs_diff(losses_ref, losses_plugin)
        entry = {
            "step": step,
            "losses_detectron2": losses_ref,
            "losses_plugin": losses_plugin,
            "max_loss_diff": loss_diff,
            "normalizer_detectron2": norm_ref,
            "normalizer_plugin": norm_plugin,
        }
        ok &= loss_diff <= tp.TOLERANCE and abs(norm_ref - norm_plugin) <= tp.TOLERANCE * norm_ref
        ok &= losses_ref["loss_cls"] > 0 and losses_ref["loss_box_reg"] > 0
        if with_update:
            ok &= compare_gradients(grads_ref, grads_plugin, entry)
        result["steps"].append(entry)
    result["ok"] = bool(ok)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument(
        "--depths", default="R50", help=f"comma-separated, of {','.join(tp.DEPTHS)}"
    )
    parser.add_argument(
        "--impls", default="op,reference", help="MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL values"
    )
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda but no GPU is visible")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    report = {"device": args.device, "tolerance": tp.TOLERANCE, "results": {}, "failures": []}
    if args.device == "cuda":
        report["device_name"] = torch.cuda.get_device_name()
        report["settings"] = "TF32 off, cuDNN deterministic"
    start = time.perf_counter()
    for depth in [d.strip() for d in args.depths.split(",") if d.strip()]:
        for impl in [i.strip() for i in args.impls.split(",") if i.strip()]:
            key = f"{depth}/{impl}"
            entry = {}
            for part, fn in (("detections", detections), ("training", training)):
                if part == "detections" and impl != args.impls.split(",")[0].strip():
                    continue  # inference does not use the loss: compared once per depth
                try:
                    entry[part] = fn(depth, impl, args.device)
                except Exception as e:  # noqa: BLE001  (recorded; the other comparisons still run)
                    traceback.print_exc()
                    entry[part] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                if not entry[part]["ok"]:
                    error = entry[part].get("error", "outside tolerance")
                    report["failures"].append(f"{key} {part}: {error}")
                print(f"{key} {part}: {json.dumps(entry[part], default=str)}", flush=True)
            report["results"][key] = entry
    report["seconds"] = time.perf_counter() - start
    report["ok"] = not report["failures"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    print("parity:", "ok" if report["ok"] else f"FAILED: {report['failures']}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
