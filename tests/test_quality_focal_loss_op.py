"""Tests of the compiled quality focal loss op (torch.ops.retinanet_plugin.quality_focal_loss).

The op is checked against the composite reference (quality_focal_loss_reference: BCE-with-logits
times |target - sigmoid|^beta), against the paper's formula on scalars, against the sigmoid focal
loss op on hard targets, against torch.autograd.gradcheck in fp64, and for its torch.library
registration (fake kernel, autograd, torch.compile, opcheck). Every test runs on the CPU; the
"cuda" ones are skipped when no GPU is visible.

Tolerances:
- fp32 vs the reference: rtol 1e-5 with atol 1e-6 (CPU), 1e-4 (CUDA, built with --use_fast_math);
  the op computes s - y as (1 - y) - (1 - s) for x >= 0, so the two differ by a few ulps of 1 where
  the loss is ~0.
- fp64 vs the reference: rtol 1e-9, atol 1e-12.
- hard targets vs sigmoid_focal_loss(alpha=-1, gamma=beta): the same function computed another way:
  rtol 1e-12 in fp64, 1e-5 in fp32.
- fp16/bf16 vs the fp32 op on the same (rounded) logits: the loss is computed in fp32 either way,
  rtol 1e-6; the gradient is rounded once to the input dtype: rtol 2^-10 (fp16), 2^-7 (bf16).
"""

import contextlib
import itertools
import math
import subprocess
import sys

import pytest
import torch
from test_focal_loss_op import (
    DEVICES,
    REDUCTIONS,
    _labels,
    _logits,
    _loss_and_grad,
    _normalizer,
    _same_upstream,
)

from retinanet_plugin.layers import (
    focal_loss_op_available,
    quality_focal_loss,
    quality_focal_loss_reference,
    sigmoid_focal_loss,
)

qfl_op = torch.ops.retinanet_plugin.quality_focal_loss if focal_loss_op_available() else None


def _rtol(device, dtype):
    if dtype == torch.float64:
        return 1e-9
    return 1e-5 if device == "cpu" else 1e-4


def _atol(dtype):
    return 1e-12 if dtype == torch.float64 else 1e-6


def _quality(labels, num_classes, generator, device="cpu"):
    """Uniform targets in [0, 1] with some exact 0s and 1s on labelled rows, NaN elsewhere (it must
    not be read)."""
    quality = torch.rand(labels.shape[0], generator=generator, dtype=torch.float64)
    quality[::7] = 1.0
    quality[3::11] = 0.0
    quality[(labels.cpu() < 0) | (labels.cpu() >= num_classes)] = float("nan")
    return quality.to(device, torch.float32)


def _problem(num_rows, num_classes, seed, device="cpu", dtype=torch.float32, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = _logits(num_rows, num_classes, gen, dtype, device, scale)
    labels = _labels(num_rows, num_classes, gen, device=device)
    return logits, labels, _quality(labels, num_classes, gen, device)


def test_op_is_built():
    assert focal_loss_op_available(), (
        "retinanet_plugin._C did not load: pip install --no-build-isolation -e ."
    )
    assert hasattr(torch.ops.retinanet_plugin, "quality_focal_loss")


# Shapes include N = 0, K = 1 and K = 80 (COCO); beta includes 0 (BCE), 1 and non-integers.
CASES = [
    ((0, 5), 2.0),
    ((1, 1), 2.0),
    ((9, 1), 1.5),
    ((13, 3), 0.0),
    ((40, 17), 1.0),
    ((64, 80), 2.0),
    ((33, 9), 2.5),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "reduction, normalizer_kind", list(itertools.product(REDUCTIONS, ["none", "float", "tensor"]))
)
@pytest.mark.parametrize("shape, beta", CASES)
def test_matches_reference(device, dtype, reduction, normalizer_kind, shape, beta):
    num_rows, num_classes = shape
    logits, labels, quality = _problem(
        num_rows, num_classes, 2000 + 100 * num_rows + num_classes, device, dtype
    )
    kwargs = dict(beta=beta, reduction=reduction, normalizer=_normalizer(normalizer_kind, device))
    upstream = _same_upstream(num_rows)
    loss, grad = _loss_and_grad(
        quality_focal_loss, logits, labels, upstream(), quality=quality, **kwargs
    )
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == expected_dtype and grad.dtype == dtype
    assert loss.shape == ((num_rows, num_classes) if reduction == "none" else ())
    ref_loss, ref_grad = _loss_and_grad(
        quality_focal_loss_reference, logits, labels, upstream(), quality=quality, **kwargs
    )
    rtol, atol = _rtol(device, dtype), _atol(dtype)
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=atol)


def test_matches_the_paper_formula_on_scalars():
    """loss = |y - s|^beta * -(y log s + (1 - y) log(1 - s)), in plain Python math, for a 1-class
    row."""
    for x, y, beta in [
        (0.3, 0.7, 2.0),
        (-2.0, 0.25, 2.0),
        (4.0, 0.9, 1.5),
        (-1.0, 1.0, 0.5),
        (1.0, 0.0, 3.0),
    ]:
        s = 1 / (1 + math.exp(-x))
        expected = abs(y - s) ** beta * -(y * math.log(s) + (1 - y) * math.log(1 - s))
        logits = torch.tensor([[x]], dtype=torch.float64)
        loss = quality_focal_loss(
            logits, torch.tensor([0]), torch.tensor([y], dtype=torch.float64), beta
        )
        assert loss.item() == pytest.approx(expected, rel=1e-12)
    # The loss and its gradient vanish where sigmoid(x) equals the target.
    x = torch.tensor([[0.0]], dtype=torch.float64, requires_grad=True)
    loss = quality_focal_loss(x, torch.tensor([0]), torch.tensor([0.5], dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and x.grad.item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [2.0, 1.5, 0.0])
def test_hard_targets_match_sigmoid_focal_loss(device, dtype, beta):
    """quality = 1 on every labelled row: QFL is the sigmoid focal loss with alpha off and gamma =
    beta."""
    logits, labels, quality = _problem(70, 12, 31, device, dtype, scale=6.0)
    # keep NaN on unlabelled rows
    quality = torch.where(quality.isnan(), quality, torch.ones_like(quality))
    rtol = 1e-12 if dtype == torch.float64 else _rtol(device, dtype)
    for reduction in REDUCTIONS:
        loss, grad = _loss_and_grad(
            quality_focal_loss,
            logits,
            labels,
            _same_upstream(3)(),
            quality=quality,
            beta=beta,
            reduction=reduction,
        )
        focal_loss, focal_grad = _loss_and_grad(
            sigmoid_focal_loss,
            logits,
            labels,
            _same_upstream(3)(),
            gamma=beta,
            alpha=-1.0,
            reduction=reduction,
        )
        torch.testing.assert_close(loss, focal_loss, rtol=rtol, atol=rtol * 0.1)
        torch.testing.assert_close(grad, focal_grad, rtol=rtol, atol=rtol * 0.1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("beta", [2.0, 1.5, 0.5, 0.0])
def test_extreme_logits_are_finite(device, dtype, beta):
    extremes = torch.tensor([1e4, -1e4, 100.0, -100.0, 30.0, -30.0, 0.0, 5.0], dtype=torch.float64)
    # Row i is `extremes` rotated left by i, so the class column 0 of rows 0-5 meets each of the
    # first six values; row 6 is background, row 7 ignored.
    logits = torch.stack([extremes.roll(-i) for i in range(8)]).to(device, dtype)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 8, -1], device=device)
    quality = torch.tensor([0.6, 0.6, 1.0, 0.0, 0.3, 0.5, 0.5, 0.5], device=device)
    big = logits[0, 0].item()  # 1e4 (9984 in bf16)
    for reduction in REDUCTIONS:
        x = logits.clone().requires_grad_(True)
        loss = quality_focal_loss(x, labels, quality, beta, reduction)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        if reduction == "none":
            # x = 1e4 with y = 0.6 (s = 1): loss 0.4^beta * 0.4 x (BCE = (1 - y) x), gradient
            # 0.4^(beta + 1).
            assert loss[0, 0].item() == pytest.approx(0.4 ** (beta + 1) * big, rel=1e-5)
            assert grad[0, 0].item() == pytest.approx(0.4 ** (beta + 1), rel=1e-2)
            # x = -1e4 with y = 0.6 (s = 0): loss 0.6^beta * 0.6 |x| (BCE = y |x|), gradient
            # -0.6^(beta + 1).
            assert loss[1, 0].item() == pytest.approx(0.6**beta * 0.6 * big, rel=1e-5)
            assert grad[1, 0].item() == pytest.approx(-(0.6 ** (beta + 1)), rel=1e-2)
            # x = 1e4 with y = 0 (an unlabelled column): loss x, gradient 1.
            assert loss[1, 7].item() == pytest.approx(big, rel=1e-6)
            assert grad[1, 7].item() == pytest.approx(1.0, rel=1e-2)
    # the composite's gradient is NaN at s == y for beta < 1
    if dtype in (torch.float32, torch.float64) and beta >= 1:
        for reduction in REDUCTIONS:
            kwargs = dict(quality=quality.to(dtype), beta=beta, reduction=reduction)
            loss, grad = _loss_and_grad(
                quality_focal_loss, logits, labels, _same_upstream(0)(), **kwargs
            )
            ref_loss, ref_grad = _loss_and_grad(
                quality_focal_loss_reference, logits, labels, _same_upstream(0)(), **kwargs
            )
            torch.testing.assert_close(loss, ref_loss, rtol=_rtol(device, dtype), atol=1e-6)
            torch.testing.assert_close(grad, ref_grad, rtol=_rtol(device, dtype), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta, normalizer_kind", [(2.0, "tensor"), (1.5, "float"), (0.0, "none")])
def test_gradcheck_fp64(device, reduction, beta, normalizer_kind):
    x = _logits(
        6, 4, torch.Generator().manual_seed(11), torch.float64, device, scale=2.0
    ).requires_grad_(True)
    # labelled, background and an ignored row
    labels = torch.tensor([0, 3, 4, -1, 1, 4], device=device)
    quality = torch.tensor([0.9, 0.2, 0.5, 0.5, 1.0, 0.0], dtype=torch.float64, device=device)
    args = (labels, quality, beta, reduction, _normalizer(normalizer_kind, device))
    assert torch.autograd.gradcheck(
        lambda x: quality_focal_loss(x, *args), (x,), eps=1e-6, atol=1e-8, rtol=1e-6
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, grad_rtol", [(torch.float16, 2.0**-10), (torch.bfloat16, 2.0**-7)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_precision_matches_fp32(device, dtype, grad_rtol, reduction):
    # the rounded logits feed both runs
    logits, labels, quality = _problem(70, 80, 21, device, dtype)
    kwargs = dict(
        quality=quality, beta=2.0, reduction=reduction, normalizer=torch.tensor(3.0, device=device)
    )
    loss, grad = _loss_and_grad(quality_focal_loss, logits, labels, _same_upstream(2)(), **kwargs)
    loss32, grad32 = _loss_and_grad(
        quality_focal_loss, logits.float(), labels, _same_upstream(2)(), **kwargs
    )
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, loss32, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.float(), grad32, rtol=grad_rtol, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_inputs_int32_labels_and_quality_dtypes(device):
    """Transposed logits, a strided quality in fp16/fp64 and int32 labels give the contiguous
    fp32/int64 result."""
    logits, labels, quality = _problem(30, 11, 41, device)
    quality = quality.half().float()  # exactly representable in fp16
    upstream = _same_upstream(5)
    expected = _loss_and_grad(
        quality_focal_loss, logits, labels, upstream(), quality=quality, reduction="none"
    )
    strided_quality = torch.stack([quality, torch.full_like(quality, 7.0)], 1)[:, 0]
    variants = {
        "transposed logits": (logits.t().contiguous().t(), labels, quality),
        "int32 labels": (logits, labels.to(torch.int32), quality),
        "strided fp16 quality": (logits, labels, strided_quality.half()),
        "fp64 quality": (logits, labels, quality.double()),
    }
    for name, (x, y, q) in variants.items():
        loss, grad = _loss_and_grad(
            quality_focal_loss, x, y, upstream(), quality=q, reduction="none"
        )
        torch.testing.assert_close((loss, grad), expected, rtol=0, atol=0, msg=name)


def test_ignored_background_and_empty_rows_cpu():
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([-1, 3, -1, 3])  # quality is never read on these rows
    quality = torch.tensor([float("nan"), 5.0, -1.0, float("nan")])
    loss = quality_focal_loss(logits, labels, quality, reduction="none")
    background = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            logits[1::2], torch.zeros(2, 3), reduction="none"
        )
        * logits[1::2].sigmoid() ** 2
    )
    torch.testing.assert_close(loss[1::2], background)
    assert loss[0::2].abs().sum().item() == 0.0
    empty = torch.zeros(0, 80, requires_grad=True)
    for reduction in REDUCTIONS:
        loss = quality_focal_loss(
            empty, torch.zeros(0, dtype=torch.long), torch.zeros(0), reduction=reduction
        )
        (grad,) = torch.autograd.grad(loss.sum(), empty)
        assert loss.shape == ((0, 80) if reduction == "none" else ()) and grad.shape == (0, 80)


def test_bad_arguments_raise_cpu():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 4, -1, 3])
    quality = torch.tensor([0.5, 1.0, 0.0, 0.2, 0.9])
    for bad in (1.5, -0.1, float("nan")):
        wrong = quality.clone()
        wrong[4] = bad
        with pytest.raises(
            ValueError, match=r"quality must be in \[0, 1\] on rows with a class label.*row 4"
        ):
            quality_focal_loss(logits, labels, wrong)
        with pytest.raises(
            ValueError, match=r"quality_focal_loss_backward: quality must be in \[0, 1\]"
        ):
            qfl_backward = torch.ops.retinanet_plugin.quality_focal_loss_backward
            qfl_backward(torch.tensor(1.0), logits, labels, wrong, None, 2.0, "sum", 1.0)
    wrong = labels.clone()
    wrong[2] = 5
    with pytest.raises(
        IndexError, match=r"quality_focal_loss: labels must be in \[-1, K\] = \[-1, 4\].*row 2"
    ):
        quality_focal_loss(logits, wrong, quality)
    with pytest.raises(RuntimeError, match=r"quality must be 1-D \[N\] with N = 5"):
        quality_focal_loss(logits, labels, quality[:4])
    with pytest.raises(RuntimeError, match=r"quality must be 1-D \[N\]"):
        quality_focal_loss(logits, labels, quality.unsqueeze(1))
    with pytest.raises(RuntimeError, match="quality must be a floating point tensor"):
        quality_focal_loss(logits, labels, (quality > 0.5).long())
    with pytest.raises(ValueError, match="quality requires grad, but it is a target"):
        quality_focal_loss(logits, labels, quality.clone().requires_grad_(True))
    with pytest.raises(ValueError, match="quality requires grad, but it is a target"):
        quality_focal_loss_reference(logits, labels, quality.clone().requires_grad_(True))
    with pytest.raises(ValueError, match="beta must be finite and >= 0"):
        quality_focal_loss(logits, labels, quality, beta=-1.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        quality_focal_loss(logits, labels, quality, reduction="avg")
    with pytest.raises(RuntimeError, match=r"labels must be 1-D \[N\]"):
        quality_focal_loss(logits, labels[:3], quality)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    logits, labels, quality = _problem(48, 10, 12, device)

    def losses(x, y, q, n):
        return (
            quality_focal_loss(x, y, q, 2.0, "sum", n)
            + quality_focal_loss(x, y, q, 1.5, "none").mean()
        )

    # fullgraph: a graph break raises
    compiled = torch.compile(losses, backend="aot_eager", fullgraph=True)
    normalizer = torch.tensor(5.0, device=device)
    compiled_run, eager_run = (
        _loss_and_grad(fn, logits, labels, torch.ones_like, q=quality, n=normalizer)
        for fn in (compiled, losses)
    )
    torch.testing.assert_close(compiled_run, eager_run)


@pytest.mark.skipif(
    not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck not available"
)
def test_opcheck_cpu():
    logits, labels, quality = _problem(12, 6, 14)
    backward = torch.ops.retinanet_plugin.quality_focal_loss_backward.default
    for reduction, norm in (
        ("sum", torch.tensor(2.0)),
        ("mean", None),
        ("none", torch.tensor(2.0)),
    ):
        args = (logits.clone().requires_grad_(True), labels, quality, norm, 2.0, reduction, 1.0)
        torch.library.opcheck(qfl_op.default, args)
        grad = torch.ones((12, 6) if reduction == "none" else ())
        torch.library.opcheck(backward, (grad, logits, labels, quality, norm, 1.5, reduction, 1.0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA test: no GPU visible")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("beta", [2.0, 1.5])
def test_cuda_matches_cpu(dtype, beta):
    logits, labels, quality = _problem(300, 80, 16, "cpu", dtype)
    rtol = 1e-12 if dtype == torch.float64 else 1e-4
    for reduction in REDUCTIONS:
        kwargs = dict(beta=beta, reduction=reduction, normalizer=torch.tensor(4.0))
        cpu = _loss_and_grad(
            quality_focal_loss, logits, labels, _same_upstream(7)(), quality=quality, **kwargs
        )
        gpu = _loss_and_grad(
            quality_focal_loss,
            logits.cuda(),
            labels.cuda(),
            _same_upstream(7)(),
            quality=quality.cuda(),
            **kwargs,
        )
        # one rounding each side
        grad_rtol = {torch.float16: 2.0**-9, torch.bfloat16: 2.0**-6}.get(dtype, rtol)
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=rtol, atol=rtol * 0.01)
        torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=grad_rtol, atol=rtol * 0.01)


@contextlib.contextmanager
def _host_sync_raises():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA test: no GPU visible")
def test_cuda_no_host_sync():
    logits, labels, quality = _problem(500, 80, 15, "cuda")
    normalizer = torch.tensor(10.0, device="cuda")
    with _host_sync_raises():
        losses = [
            _loss_and_grad(
                quality_focal_loss,
                logits,
                labels,
                torch.ones_like,
                quality=quality,
                reduction=reduction,
                normalizer=normalizer,
            )
            for reduction in REDUCTIONS
        ]
    for loss, grad in losses:
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA test: no GPU visible")
@pytest.mark.parametrize(
    "labels, quality, message",
    [
        ([0, 1, 9, 2], [0.5, 0.5, 0.5, 0.5], "label is outside [-1, K]"),
        ([0, 1, 3, 2], [0.5, 0.5, 7.0, 1.5], "quality target on a labelled row is outside [0, 1]"),
    ],
)
def test_bad_input_trips_device_assert_cuda(labels, quality, message):
    # A device-side assert poisons the CUDA context, so it runs in a child process.
    code = (
        "import torch; from retinanet_plugin.layers import quality_focal_loss; "
        f"quality_focal_loss(torch.randn(4, 3, device='cuda'), torch.tensor({labels}, "
        "device='cuda'), "
        f"torch.tensor({quality}, device='cuda')); torch.cuda.synchronize()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert message in result.stderr or "device-side assert" in result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
