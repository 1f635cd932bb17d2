"""Tests of the compiled sigmoid focal loss op (torch.ops.retinanet_plugin.sigmoid_focal_loss).

The op is checked against fvcore's and torchvision's composite focal losses on one-hot targets,
against torch.autograd.gradcheck in fp64, and for its torch.library registration (fake kernel,
autograd, torch.compile, opcheck). Every test runs on the CPU; the "cuda" parametrisations are
skipped when no GPU is visible.

Tolerances:
- fp32 vs fvcore / torchvision: rtol 1e-5 (CPU), 1e-4 (CUDA, built with --use_fast_math).
- fp64 vs torchvision (which computes in fp64): rtol 1e-9. fvcore casts its input to fp32, so fp64
  vs fvcore uses the fp32 tolerance.
- fp16/bf16 vs the fp32 op on the same (rounded) logits: the loss is computed in fp32 either way,
  rtol 1e-6; the gradient is rounded once to the input dtype: rtol 2^-10 (fp16), 2^-7 (bf16).
"""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from fvcore.nn import sigmoid_focal_loss as fvcore_sigmoid_focal_loss

from retinanet_plugin.layers import (
    focal_loss_op_available,
    sigmoid_focal_loss,
    sigmoid_focal_loss_reference,
)

CUDA = pytest.param(
    "cuda",
    marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA test: no GPU visible"),
)
DEVICES = ["cpu", CUDA]
REDUCTIONS = ("none", "sum", "mean")


def _rtol(device, dtype):
    if dtype == torch.float64:
        return 1e-9
    return 1e-5 if device == "cpu" else 1e-4


def _labels(
    num_rows, num_classes, generator, ignored=0.2, positive=0.4, device="cpu", dtype=torch.int64
):
    """Random labels: about `ignored` of the rows -1, `positive` a class in 0..K-1, the rest K
    (background)."""
    u = torch.rand(num_rows, generator=generator)
    labels = torch.full((num_rows,), num_classes, dtype=torch.int64)
    labels[u < positive] = torch.randint(0, max(num_classes, 1), (num_rows,), generator=generator)[
        u < positive
    ]
    labels[u > 1 - ignored] = -1
    return labels.to(device=device, dtype=dtype)


def _logits(num_rows, num_classes, generator, dtype=torch.float32, device="cpu", scale=3.0):
    return (
        torch.randn(num_rows, num_classes, generator=generator, dtype=torch.float64) * scale
    ).to(device, dtype)


def _torchvision_focal_loss(logits, labels, gamma, alpha, reduction, normalizer):
    """torchvision's composite loss on one-hot targets, in fp32 (fp64 for fp64 logits)."""
    return sigmoid_focal_loss_reference(
        logits,
        labels,
        gamma,
        alpha,
        reduction,
        normalizer,
        composite=torchvision.ops.sigmoid_focal_loss,
    )


def _loss_and_grad(fn, logits, labels, upstream, **kwargs):
    x = logits.detach().requires_grad_(True)  # a view: keeps the strides of non-contiguous logits
    loss = fn(x, labels, **kwargs)
    (grad,) = torch.autograd.grad(loss, x, upstream(loss))
    return loss.detach(), grad


def _upstream_for(generator):
    def upstream(loss):
        return (torch.rand(loss.shape, generator=generator, dtype=torch.float64) + 0.5).to(loss)

    return upstream


def _normalizer(kind, device):
    return {"none": None, "float": 7.5, "tensor": torch.tensor(12.0, device=device)}[kind]


def _same_upstream(seed):
    return lambda: _upstream_for(torch.Generator().manual_seed(seed))


def test_op_is_built():
    assert focal_loss_op_available(), (
        "retinanet_plugin._C did not load: pip install --no-build-isolation -e ."
    )
    assert hasattr(torch.ops.retinanet_plugin, "sigmoid_focal_loss")


# Shapes include N = 0, K = 1 and K = 80/91 (COCO); (gamma, alpha) include gamma = 0 and alpha < 0.
CASES = [
    ((0, 5), (2.0, 0.25)),
    ((1, 1), (2.0, 0.25)),
    ((9, 1), (1.5, -1.0)),
    ((13, 3), (0.0, 0.25)),
    ((40, 17), (2.0, -1.0)),
    ((64, 80), (2.0, 0.25)),
    ((33, 91), (0.5, 0.75)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("normalizer_kind", ["none", "float", "tensor"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_fvcore_and_torchvision(device, dtype, reduction, normalizer_kind, case):
    (num_rows, num_classes), (gamma, alpha) = CASES[case]
    gen = torch.Generator().manual_seed(1000 + case)
    logits = _logits(num_rows, num_classes, gen, dtype, device)
    labels = _labels(num_rows, num_classes, gen, device=device)
    kwargs = dict(
        gamma=gamma,
        alpha=alpha,
        reduction=reduction,
        normalizer=_normalizer(normalizer_kind, device),
    )
    upstream = _same_upstream(case)
    loss, grad = _loss_and_grad(sigmoid_focal_loss, logits, labels, upstream(), **kwargs)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == expected_dtype and grad.dtype == dtype
    assert loss.shape == ((num_rows, num_classes) if reduction == "none" else ())

    tv_loss, tv_grad = _loss_and_grad(_torchvision_focal_loss, logits, labels, upstream(), **kwargs)
    rtol = _rtol(device, dtype)
    torch.testing.assert_close(loss, tv_loss.to(loss.dtype), rtol=rtol, atol=rtol * 0.1)
    torch.testing.assert_close(grad, tv_grad.to(grad.dtype), rtol=rtol, atol=rtol * 0.1)

    # fvcore (through the repo's reference) computes in fp32 whatever the input dtype.
    fv_loss, fv_grad = _loss_and_grad(
        sigmoid_focal_loss_reference, logits, labels, upstream(), **kwargs
    )
    rtol = _rtol(device, torch.float32)
    torch.testing.assert_close(loss, fv_loss.to(loss.dtype), rtol=rtol, atol=rtol * 0.1)
    torch.testing.assert_close(grad, fv_grad.to(grad.dtype), rtol=rtol, atol=rtol * 0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_fvcore_directly_on_one_hot_targets(device):
    """The op against fvcore.nn.sigmoid_focal_loss itself (no ignored rows, so no masking is
    involved)."""
    gen = torch.Generator().manual_seed(5)
    logits = _logits(50, 80, gen, torch.float32, device)
    labels = _labels(50, 80, gen, ignored=0.0, device=device)
    targets = F.one_hot(labels, 81)[:, :80].float()
    for reduction in REDUCTIONS:
        x = logits.clone().requires_grad_(True)
        expected = fvcore_sigmoid_focal_loss(x, targets, 0.25, 2.0, reduction)
        (expected_grad,) = torch.autograd.grad(expected.sum(), x)
        x = logits.clone().requires_grad_(True)
        loss = sigmoid_focal_loss(x, labels, 2.0, 0.25, reduction)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        rtol = _rtol(device, torch.float32)
        torch.testing.assert_close(loss, expected, rtol=rtol, atol=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [2.0, 1.5, 0.5, 0.0])
def test_extreme_logits_are_finite(device, dtype, gamma):
    values = torch.tensor([1e4, -1e4, 100.0, -100.0, 30.0, -30.0, 0.0, 5.0], dtype=torch.float64)
    logits = values.repeat(8, 1).to(device, dtype)  # [8, 8]
    # positives on the extreme columns
    labels = torch.tensor([0, 1, 2, 3, 4, 8, -1, 7], device=device)
    for reduction in REDUCTIONS:
        x = logits.clone().requires_grad_(True)
        loss = sigmoid_focal_loss(x, labels, gamma, 0.25, reduction)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        # A positive at x = -1e4 has loss alpha * |x| (gradient -alpha); a negative at x = 1e4 has
        # loss (1 - alpha) * x (gradient 1 - alpha). (1e4 is 9984 in bf16.)
        if reduction == "none":
            big = logits[1, 0].item()
            assert loss[1, 1].item() == pytest.approx(0.25 * big, rel=1e-6)
            assert grad[1, 1].item() == pytest.approx(-0.25, rel=1e-2)
            assert loss[1, 0].item() == pytest.approx(0.75 * big, rel=1e-6)
            assert grad[1, 0].item() == pytest.approx(0.75, rel=1e-2)
    # the composite's gradient is NaN for gamma < 1
    if dtype in (torch.float32, torch.float64) and gamma >= 1:
        rtol = _rtol(device, dtype)
        for reduction in REDUCTIONS:
            upstream = _same_upstream(0)
            loss, grad = _loss_and_grad(
                sigmoid_focal_loss,
                logits,
                labels,
                upstream(),
                gamma=gamma,
                alpha=0.25,
                reduction=reduction,
            )
            tv_loss, tv_grad = _loss_and_grad(
                _torchvision_focal_loss,
                logits,
                labels,
                upstream(),
                gamma=gamma,
                alpha=0.25,
                reduction=reduction,
                normalizer=None,
            )
            torch.testing.assert_close(loss, tv_loss, rtol=rtol, atol=1e-6)
            torch.testing.assert_close(grad, tv_grad, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_gamma_zero_is_alpha_weighted_binary_cross_entropy(device):
    gen = torch.Generator().manual_seed(3)
    logits = _logits(30, 6, gen, torch.float64, device)
    labels = _labels(30, 6, gen, device=device)
    valid = (labels >= 0).unsqueeze(1).double()
    targets = F.one_hot(labels.clamp(min=0), 7)[:, :6].double()
    alpha_t = 0.25 * targets + 0.75 * (1 - targets)
    x = logits.clone().requires_grad_(True)
    expected = F.binary_cross_entropy_with_logits(x, targets, reduction="none") * alpha_t * valid
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    x = logits.clone().requires_grad_(True)
    loss = sigmoid_focal_loss(x, labels, gamma=0.0, alpha=0.25, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "gamma, alpha, normalizer_kind",
    [(2.0, 0.25, "tensor"), (1.5, -1.0, "float"), (0.0, 0.4, "none")],
)
def test_gradcheck_fp64(device, reduction, gamma, alpha, normalizer_kind):
    gen = torch.Generator().manual_seed(11)
    logits = _logits(6, 4, gen, torch.float64, device, scale=2.0).requires_grad_(True)
    # positives, background and an ignored row
    labels = torch.tensor([0, 3, 4, -1, 1, 4], device=device)
    normalizer = _normalizer(normalizer_kind, device)

    def fn(x):
        return sigmoid_focal_loss(x, labels, gamma, alpha, reduction, normalizer)

    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, grad_rtol", [(torch.float16, 2.0**-10), (torch.bfloat16, 2.0**-7)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_precision_matches_fp32(device, dtype, grad_rtol, reduction):
    gen = torch.Generator().manual_seed(21)
    logits = _logits(70, 80, gen, dtype, device)  # the rounded logits feed both runs
    labels = _labels(70, 80, gen, device=device)
    normalizer = torch.tensor(3.0, device=device)
    upstream = _same_upstream(2)
    loss, grad = _loss_and_grad(
        sigmoid_focal_loss, logits, labels, upstream(), reduction=reduction, normalizer=normalizer
    )
    loss32, grad32 = _loss_and_grad(
        sigmoid_focal_loss,
        logits.float(),
        labels,
        upstream(),
        reduction=reduction,
        normalizer=normalizer,
    )
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, loss32, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.float(), grad32, rtol=grad_rtol, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_contiguous_inputs(device, reduction):
    gen = torch.Generator().manual_seed(4)
    wide = _logits(40, 50, gen, torch.float32, device)
    labels = _labels(80, 20, gen, device=device)
    contiguous_labels = labels[::2].contiguous()
    layouts = {
        "column slice (row stride 50)": wide[:, 5:25],
        "transposed": _logits(20, 40, gen, torch.float32, device).t(),
        "every other column": wide[:, ::2][:, :20],
        "expanded row": wide[:1, :20].expand(40, 20),
    }
    for name, logits in layouts.items():
        assert not logits.is_contiguous()
        upstream = _same_upstream(9)
        loss, grad = _loss_and_grad(
            sigmoid_focal_loss, logits, labels[::2], upstream(), reduction=reduction
        )
        expected_loss, expected_grad = _loss_and_grad(
            sigmoid_focal_loss,
            logits.contiguous(),
            contiguous_labels,
            upstream(),
            reduction=reduction,
        )
        torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7, msg=name)
    # A non-contiguous upstream gradient for reduction "none" (expand of a scalar, as from
    # loss.sum()).
    logits = layouts["column slice (row stride 50)"].clone().requires_grad_(True)
    sigmoid_focal_loss(logits, contiguous_labels, reduction="none").sum().backward()
    x = logits.detach().clone().requires_grad_(True)
    sigmoid_focal_loss(x, contiguous_labels, reduction="sum").backward()
    torch.testing.assert_close(logits.grad, x.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_int32_labels_match_int64(device):
    gen = torch.Generator().manual_seed(8)
    logits = _logits(25, 7, gen, torch.float32, device)
    labels = _labels(25, 7, gen, device=device)
    for reduction in REDUCTIONS:
        a, ga = _loss_and_grad(
            sigmoid_focal_loss, logits, labels, _same_upstream(1)(), reduction=reduction
        )
        b, gb = _loss_and_grad(
            sigmoid_focal_loss,
            logits,
            labels.to(torch.int32),
            _same_upstream(1)(),
            reduction=reduction,
        )
        assert torch.equal(a, b) and torch.equal(ga, gb)


def test_ignored_and_edge_rows_cpu():
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([-1, -1, -1, -1])
    for reduction in REDUCTIONS:
        loss = sigmoid_focal_loss(logits, labels, reduction=reduction)
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        # mean: 0 / max(0, 1) = 0
        assert loss.abs().sum().item() == 0.0 and grad.abs().sum().item() == 0.0
    empty = torch.zeros(0, 80, requires_grad=True)
    for reduction in REDUCTIONS:
        loss = sigmoid_focal_loss(
            empty, torch.zeros(0, dtype=torch.long), reduction=reduction, normalizer=2.0
        )
        (grad,) = torch.autograd.grad(loss.sum(), empty)
        assert loss.shape == ((0, 80) if reduction == "none" else ()) and grad.shape == (0, 80)


def test_bad_arguments_raise_cpu():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 4, -1, 3])
    for bad in (5, -2, 100):
        wrong = labels.clone()
        wrong[2] = bad
        with pytest.raises(
            IndexError, match=r"labels must be in \[-1, K\] = \[-1, 4\].*row 2 has label"
        ):
            sigmoid_focal_loss(logits, wrong)
    wrong = labels.clone()
    wrong[0] = 7
    with pytest.raises(IndexError, match="labels must be in"):  # the backward checks too
        torch.ops.retinanet_plugin.sigmoid_focal_loss_backward(
            torch.tensor(1.0), logits, wrong, None, 2.0, 0.25, "mean", 1.0
        )
    with pytest.raises(ValueError, match="reduction must be one of"):
        sigmoid_focal_loss(logits, labels, reduction="avg")
    with pytest.raises(RuntimeError, match="labels must be int64 or int32"):
        sigmoid_focal_loss(logits, labels.float())
    with pytest.raises(RuntimeError, match=r"labels must be 1-D \[N\]"):
        sigmoid_focal_loss(logits, labels[:3])
    with pytest.raises(RuntimeError, match=r"logits must be 2-D"):
        sigmoid_focal_loss(logits.flatten(), labels)
    with pytest.raises(RuntimeError, match="logits must be float32, float64, float16 or bfloat16"):
        sigmoid_focal_loss(logits.long(), labels)
    with pytest.raises(ValueError, match="gamma must be finite and >= 0"):
        sigmoid_focal_loss(logits, labels, gamma=-1.0)
    with pytest.raises(RuntimeError, match="normalizer must be a 0-dim tensor"):
        sigmoid_focal_loss(logits, labels, normalizer=torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA test: no GPU visible")
def test_bad_label_trips_device_assert_cuda():
    # A device-side assert poisons the CUDA context, so it runs in a child process.
    code = (
        "import torch\n"
        "from retinanet_plugin.layers import sigmoid_focal_loss\n"
        "x = torch.randn(4, 3, device='cuda')\n"
        "y = torch.tensor([0, 1, 9, 3], device='cuda')\n"
        "sigmoid_focal_loss(x, y)\n"
        "torch.cuda.synchronize()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "label is outside [-1, K]" in result.stderr or "device-side assert" in result.stderr


def test_cuda_tensor_without_cuda_kernels_raises_clearly():
    from retinanet_plugin import _C

    if _C.WITH_CUDA:
        pytest.skip("this build has the CUDA kernels")
    cuda_only = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    op = torch.ops.retinanet_plugin.sigmoid_focal_loss.default
    with pytest.raises(RuntimeError, match="built without CUDA kernels.*FORCE_CUDA=1"):
        op.redispatch(
            cuda_only, torch.randn(2, 3), torch.tensor([0, 3]), None, 2.0, 0.25, "sum", 1.0
        )


def test_reduced_loss_does_not_depend_on_thread_count():
    gen = torch.Generator().manual_seed(6)
    logits = _logits(3000, 80, gen)
    labels = _labels(3000, 80, gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sigmoid_focal_loss(logits, labels, reduction="sum")
        torch.set_num_threads(max(2, threads))
        many = sigmoid_focal_loss(logits, labels, reduction="sum")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(12)
    logits = _logits(48, 10, gen, torch.float32, device)
    labels = _labels(48, 10, gen, device=device)
    normalizer = torch.tensor(5.0, device=device)

    def losses(x, y, n):
        return (
            sigmoid_focal_loss(x, y, 2.0, 0.25, "sum", normalizer=n)
            + sigmoid_focal_loss(x, y, reduction="none").mean()
        )

    # fullgraph: a graph break raises
    compiled = torch.compile(losses, backend="aot_eager", fullgraph=True)
    x = logits.clone().requires_grad_(True)
    loss = compiled(x, labels, normalizer)
    loss.backward()
    x_eager = logits.clone().requires_grad_(True)
    expected = losses(x_eager, labels, normalizer)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(x.grad, x_eager.grad)


def test_torch_export_keeps_the_op():
    class Loss(torch.nn.Module):
        def forward(self, logits, labels):
            return sigmoid_focal_loss(logits, labels, reduction="mean")

    gen = torch.Generator().manual_seed(13)
    logits = _logits(16, 5, gen)
    labels = _labels(16, 5, gen)
    exported = torch.export.export(Loss(), (logits, labels))
    assert "retinanet_plugin.sigmoid_focal_loss" in str(exported.graph)
    torch.testing.assert_close(exported.module()(logits, labels), Loss()(logits, labels))


@pytest.mark.skipif(
    not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck not available"
)
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(14)
    logits = _logits(12, 6, gen, torch.float32, device)
    labels = _labels(12, 6, gen, device=device)
    forward = torch.ops.retinanet_plugin.sigmoid_focal_loss.default
    backward = torch.ops.retinanet_plugin.sigmoid_focal_loss_backward.default
    normalizer = torch.tensor(2.0, device=device)
    for reduction, norm in (("sum", normalizer), ("mean", None), ("none", normalizer)):
        args = (logits.clone().requires_grad_(True), labels, norm, 2.0, 0.25, reduction, 1.0)
        torch.library.opcheck(forward, args)
        grad = torch.ones((12, 6) if reduction == "none" else (), device=device)
        torch.library.opcheck(backward, (grad, logits, labels, norm, 2.0, 0.25, reduction, 1.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA test: no GPU visible")
def test_cuda_no_host_sync_and_graph_capture():
    gen = torch.Generator().manual_seed(15)
    logits = _logits(500, 80, gen, torch.float32, "cuda").requires_grad_(True)
    labels = _labels(500, 80, gen, device="cuda")
    normalizer = torch.tensor(10.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation below raises
    try:
        for reduction in REDUCTIONS:
            loss = sigmoid_focal_loss(logits, labels, reduction=reduction, normalizer=normalizer)
            torch.autograd.grad(loss.sum(), logits)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = sigmoid_focal_loss_reference(
        logits.detach(), labels, reduction="sum", normalizer=normalizer
    )
    static_x = logits.detach().clone().requires_grad_(True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph
        sigmoid_focal_loss(static_x, labels, normalizer=normalizer).backward()
    torch.cuda.current_stream().wait_stream(stream)
    static_x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = sigmoid_focal_loss(static_x, labels, normalizer=normalizer)
        static_loss.backward()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_loss, expected, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(static_x.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA test: no GPU visible")
def test_cuda_matches_cpu_with_cpu_normalizer():
    gen = torch.Generator().manual_seed(16)
    logits = _logits(300, 80, gen, torch.float64)
    labels = _labels(300, 80, gen)
    for reduction in REDUCTIONS:
        cpu = sigmoid_focal_loss(logits, labels, reduction=reduction, normalizer=torch.tensor(4.0))
        gpu = sigmoid_focal_loss(
            logits.cuda(), labels.cuda(), reduction=reduction, normalizer=torch.tensor(4.0)
        )
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-14)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
