"""Small forward + backward calls of the loss ops, for ``compute-sanitizer`` (step 5 of the GPU
session).

Runs ``sigmoid_focal_loss``, ``quality_focal_loss`` and, when ``retinanet_plugin.layers`` has it,
``sigmoid_focal_loss_dense`` over N in {0, 1, 37, 300} x K in {1, 3, 80} x reduction in {none, sum,
mean}; every case also draws (cycling with different periods, so that each value meets many others)
a logits dtype (float32/float64/float16/bfloat16), a label dtype (int64/int32), a layout of the
logits and a normaliser:

- layouts: ``contiguous``; ``column_major`` (``x.t().contiguous().t()``); ``t_view_padded``
  (``.t()`` of a [K, N+3] buffer's first N columns: column-major with a leading dimension that is
  not N); ``row_padded`` (the first K columns of an [N, K+3] buffer); ``offset`` (a view one element
  into its storage: not 16-byte aligned);
- normalisers: none, a float, a 0-dim tensor on the device, a 0-dim CPU tensor.

Inputs are made on the CPU and copied to the device, the layouts are views made there (no extra
kernels for the sanitizer to wade through). Each result and gradient is checked against the
composite reference expression in float64 on the CPU (``sigmoid_focal_loss_reference``,
``quality_focal_loss_reference``, torchvision's ``sigmoid_focal_loss``), so a wrong answer fails the
run as well as a sanitizer report. Exit status 1 when any case failed or raised.

    python tools/gpu/sanitize_ops.py --device cuda [--subset all|reduced] [--sweeps 2] [--json PATH]
    compute-sanitizer --tool memcheck python tools/gpu/sanitize_ops.py --device cuda

``--subset reduced`` (for racecheck, whose shared-memory races live in the reductions): only
"sum"/"mean" and N >= 37. On the CPU (``--device cpu``) the same cases check the driver's own logic
and the CPU kernels.
"""

import argparse
import itertools
import json
import math
import sys
import time
import traceback

import torch

NS = (0, 1, 37, 300)
KS = (1, 3, 80)
REDUCTIONS = ("none", "sum", "mean")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LABEL_DTYPES = (torch.int64, torch.int32)
LAYOUTS = ("contiguous", "column_major", "t_view_padded", "row_padded", "offset")
NORMALIZERS = ("none", "float", "device_tensor", "cpu_tensor")
# (rtol, floor of atol) of a result against the float64 reference; atol = rtol * max|reference| +
# floor. fp16/bf16: the loss is accumulated in fp32 from the rounded logits; the gradient is rounded
# once to the logits' dtype.
TOLERANCES = {
    torch.float64: (1e-9, 1e-15),
    torch.float32: (1e-4, 1e-12),
    torch.float16: (2e-3, 6e-8),
    torch.bfloat16: (1.6e-2, 1e-30),
}


def case_list(subset, sweeps):
    """[(op-independent case dict)]: the N x K x reduction grid, each with a drawn dtype, label
    dtype, layout and normaliser; ``sweeps`` passes over the grid with shifted draws."""
    cases = []
    grid = list(itertools.product(NS, KS, REDUCTIONS))
    for sweep in range(sweeps):
        for index, (n, k, reduction) in enumerate(grid):
            if subset == "reduced" and (reduction == "none" or n < 37):
                continue
            i = index + 7 * sweep
            cases.append(
                {
                    "N": n,
                    "K": k,
                    "reduction": reduction,
                    "dtype": DTYPES[i % len(DTYPES)],
                    "label_dtype": LABEL_DTYPES[(i // len(DTYPES)) % len(LABEL_DTYPES)],
                    "layout": LAYOUTS[i % len(LAYOUTS)],
                    "normalizer": NORMALIZERS[(i // 2) % len(NORMALIZERS)],
                    "seed": 1000 * sweep + index,
                }
            )
    return cases


def on_device(values, layout, device):
    """``values`` ([N, K], CPU) as a tensor on ``device`` with the given layout (a view where it is
    not contiguous)."""
    n, k = values.shape
    if layout == "contiguous":
        return values.to(device)
    if layout == "column_major":
        return values.t().contiguous().to(device).t()
    if layout == "t_view_padded":
        buffer = torch.zeros(k, n + 3, dtype=values.dtype)
        buffer[:, :n] = values.t()
        return buffer.to(device)[:, :n].t()
    if layout == "row_padded":
        buffer = torch.zeros(n, k + 3, dtype=values.dtype)
        buffer[:, :k] = values
        return buffer.to(device)[:, :k]
    if layout == "offset":
        flat = torch.zeros(n * k + 1, dtype=values.dtype)
        flat[1:] = values.reshape(-1)
        return flat.to(device)[1:].view(n, k)
    raise ValueError(f"unknown layout {layout!r}")


def make_inputs(case):
    """CPU tensors: logits (rounded to the case's dtype), labels (-1 ignored, K background, 0..K-1),
    quality (NaN on rows it must not be read), dense targets (one-hot, soft and multi-label
    rows)."""
    n, k = case["N"], case["K"]
    g = torch.Generator().manual_seed(case["seed"])
    logits = (torch.randn(n, k, generator=g, dtype=torch.float64) * 4.0).to(case["dtype"])
    u = torch.rand(n, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    labels[u < 0.35] = k
    labels[u > 0.85] = -1
    quality = torch.rand(n, generator=g, dtype=torch.float64).to(torch.float32)
    quality[::5] = 1.0
    quality[(labels < 0) | (labels >= k)] = float("nan")
    targets = torch.zeros(n, k, dtype=torch.float64)
    rows = torch.arange(n)
    labelled = (labels >= 0) & (labels < k)
    targets[rows[labelled], labels[labelled]] = 1.0
    soft = torch.rand(n, generator=g) < 0.3
    targets[soft] = torch.rand(int(soft.sum()), k, generator=g, dtype=torch.float64)
    return logits, labels.to(case["label_dtype"]), quality, targets.to(case["dtype"])


def make_normalizer(kind, device):
    return {
        "none": None,
        "float": 7.5,
        "device_tensor": torch.tensor(12.0, device=device),
        "cpu_tensor": torch.tensor(3.0),
    }[kind]


def ops():
    """name -> (call(x, labels, quality, targets, reduction, normalizer), reference in float64 on
    the CPU)."""
    import torchvision

    from retinanet_plugin import layers

    def reference_normalizer(normalizer):
        return float(normalizer) if isinstance(normalizer, torch.Tensor) else normalizer

    table = {
        "sigmoid_focal_loss": (
            lambda x, labels, quality, targets, reduction, norm: layers.sigmoid_focal_loss(
                x, labels, 2.0, 0.25, reduction, norm
            ),
            lambda x, labels, quality, targets, reduction, norm: (
                layers.sigmoid_focal_loss_reference(
                    x,
                    labels.long(),
                    2.0,
                    0.25,
                    reduction,
                    reference_normalizer(norm),
                    composite=torchvision.ops.sigmoid_focal_loss,
                )
            ),
        ),
        "quality_focal_loss": (
            lambda x, labels, quality, targets, reduction, norm: layers.quality_focal_loss(
                x, labels, quality, 2.0, reduction, norm
            ),
            lambda x, labels, quality, targets, reduction, norm: (
                layers.quality_focal_loss_reference(
                    x, labels.long(), quality.double(), 2.0, reduction, reference_normalizer(norm)
                )
            ),
        ),
    }
    if hasattr(layers, "sigmoid_focal_loss_dense"):

        def dense_reference(x, labels, quality, targets, reduction, norm):
            if reduction == "mean" and x.numel() == 0:
                # torchvision's mean of nothing is NaN (0/0); the plugin's ops (and their
                # references) give 0, the rule the dense op follows too. Only this case departs from
                # torchvision.
                return (x.sum() * 0.0).reshape(())
            loss = torchvision.ops.sigmoid_focal_loss(
                x, targets.double(), alpha=0.25, gamma=2.0, reduction=reduction
            )
            norm = reference_normalizer(norm)
            return loss if norm is None else loss / norm

        table["sigmoid_focal_loss_dense"] = (
            lambda x, labels, quality, targets, reduction, norm: layers.sigmoid_focal_loss_dense(
                x, targets, 0.25, 2.0, reduction, norm
            ),
            dense_reference,
        )
    return table


def close(actual, expected, dtype):
    """(ok, max abs error, allowed): ``actual`` (any dtype) against the float64 ``expected``."""
    if actual.shape != expected.shape:
        return False, math.inf, 0.0
    if actual.numel() == 0:
        return True, 0.0, 0.0
    actual = actual.double()
    rtol, floor = TOLERANCES[dtype]
    finite = torch.isfinite(expected)
    if not torch.equal(finite, torch.isfinite(actual)):
        return False, math.inf, 0.0
    if not bool(finite.any()):
        return True, 0.0, 0.0
    error = float((actual[finite] - expected[finite]).abs().max())
    allowed = rtol * float(expected[finite].abs().max()) + floor
    return error <= allowed, error, allowed


def run_case(name, call, reference, case, device):
    logits, labels, quality, targets = make_inputs(case)
    normalizer = make_normalizer(case["normalizer"], device)
    view = on_device(logits, case["layout"], device)
    x = view.detach().requires_grad_(True)  # keeps the view's strides
    dev_labels, dev_quality = labels.to(device), quality.to(device)
    dev_targets = on_device(targets, case["layout"], device)
    loss = call(x, dev_labels, dev_quality, dev_targets, case["reduction"], normalizer)
    g = torch.Generator().manual_seed(case["seed"] + 1)
    upstream = torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5
    (grad,) = torch.autograd.grad(loss, x, upstream.to(device=device, dtype=loss.dtype))
    if grad.shape != x.shape or grad.dtype != x.dtype:
        return {
            "ok": False,
            "error": f"gradient {tuple(grad.shape)} {grad.dtype}, expected {tuple(x.shape)} "
            f"{x.dtype}",
        }

    x64 = logits.double().requires_grad_(True)
    ref_loss = reference(x64, labels, quality, targets, case["reduction"], normalizer)
    (ref_grad,) = torch.autograd.grad(ref_loss, x64, upstream)
    loss_ok, loss_err, loss_tol = close(
        loss.detach().cpu(),
        ref_loss.detach(),
        torch.float32 if case["dtype"] != torch.float64 else torch.float64,
    )
    grad_ok, grad_err, grad_tol = close(grad.cpu(), ref_grad, case["dtype"])
    result = {
        "ok": loss_ok and grad_ok,
        "loss_error": loss_err,
        "loss_tolerance": loss_tol,
        "grad_error": grad_err,
        "grad_tolerance": grad_tol,
    }
    if not result["ok"]:
        result["error"] = (
            f"mismatch: loss {loss_err:.3g} (allowed {loss_tol:.3g}), grad {grad_err:.3g} (allowed "
            f"{grad_tol:.3g})"
        )
    return result


def describe(case):
    return (
        f"N={case['N']} K={case['K']} {case['reduction']} "
        f"{str(case['dtype']).replace('torch.', '')} "
        f"labels {str(case['label_dtype']).replace('torch.', '')} {case['layout']} normalizer "
        f"{case['normalizer']}"
    )


def sweep_op(name, call, reference, cases, device, failures) -> dict:
    """Every case through one op; failures appended to ``failures``. A sticky CUDA error (5 errors
    in a row: every later call would fail the same way) stops the op's sweep."""
    passed = errors = consecutive = 0
    for case in cases:
        try:
            result = run_case(name, call, reference, case, device)
            consecutive = 0
        except Exception as e:  # noqa: BLE001  (recorded, the sweep goes on)
            traceback.print_exc()
            message = str(e).splitlines()[0] if str(e) else ""
            result = {"ok": False, "error": f"{type(e).__name__}: {message}"}
            consecutive += 1
        if result["ok"]:
            passed += 1
        else:
            errors += 1
            failures.append(f"{name} [{describe(case)}]: {result['error']}")
            print(f"FAIL {name} [{describe(case)}]: {result['error']}", flush=True)
        if consecutive >= 5:
            failures.append(f"{name}: stopped after 5 consecutive errors")
            break
    print(f"{name}: {passed} passed, {errors} failed", flush=True)
    return {"passed": passed, "failed": errors}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--subset", default="all", choices=("all", "reduced"))
    parser.add_argument(
        "--sweeps", type=int, default=2, help="passes over the N x K x reduction grid (default 2)"
    )
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")

    from retinanet_plugin import layers

    if not layers.focal_loss_op_available():
        print("retinanet_plugin._C is not built", file=sys.stderr)
        return 1
    start = time.perf_counter()
    cases = case_list(args.subset, args.sweeps)
    report = {
        "device": args.device,
        "subset": args.subset,
        "cases_per_op": len(cases),
        "ops": {},
        "failures": [],
    }
    for name, (call, reference) in ops().items():
        report["ops"][name] = sweep_op(
            name, call, reference, cases, args.device, report["failures"]
        )
    if args.device == "cuda":
        torch.cuda.synchronize()
    coverage = {
        key: sorted({str(c[key]).replace("torch.", "") for c in cases})
        for key in ("N", "K", "reduction", "dtype", "label_dtype", "layout", "normalizer")
    }
    report["coverage"] = coverage
    report["seconds"] = time.perf_counter() - start
    report["ok"] = not report["failures"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}, indent=None))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
