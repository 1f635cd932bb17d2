"""The sigmoid focal loss of float targets, ``retinanet_plugin.layers.sigmoid_focal_loss_dense``: a
drop-in for fvcore's and torchvision's ``sigmoid_focal_loss(inputs, targets, alpha, gamma,
reduction)``.

Checked against torchvision (fp64, which computes in the input dtype) and fvcore on one-hot,
multi-label and soft targets, against gradcheck, against the label op on one-hot targets, for its
registration (torch.compile, opcheck including the output layout), and for bad input. "cuda"
parametrisations are skipped without a GPU.
"""

import itertools

import pytest
import torch
import torchvision
from fvcore.nn import sigmoid_focal_loss as fvcore_sigmoid_focal_loss

from retinanet_plugin.layers import sigmoid_focal_loss, sigmoid_focal_loss_dense

CUDA = pytest.param(
    "cuda",
    marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA test: no GPU visible"),
)
DEVICES = ["cpu", CUDA]
REDUCTIONS = ("none", "sum", "mean")


def _inputs(rows, cols, kind, seed=0, device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, cols, generator=g, dtype=torch.float64) * 3).to(device, dtype)
    if kind == "one_hot":
        targets = torch.nn.functional.one_hot(
            torch.randint(0, cols, (rows,), generator=g), cols
        ).double()
        targets[torch.rand(rows, generator=g) < 0.5] = 0  # background rows
    elif kind == "multi_label":
        targets = (torch.rand(rows, cols, generator=g) < 0.3).double()
    else:  # soft, with exact 0 and 1 among them
        targets = torch.rand(rows, cols, generator=g, dtype=torch.float64)
        targets[torch.rand(rows, cols, generator=g) < 0.2] = 0.0
        targets[torch.rand(rows, cols, generator=g) < 0.1] = 1.0
    return logits, targets.to(device, dtype if dtype == torch.float64 else torch.float32)


def _loss_and_grad(fn, logits, targets, upstream, *args):
    x = logits.detach().requires_grad_(True)
    loss = fn(x, targets, *args)
    (grad,) = torch.autograd.grad(loss, x, upstream(loss))
    return loss.detach(), grad


def _upstream(seed):
    def upstream(loss):
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5).to(loss)

    return upstream


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["one_hot", "multi_label", "soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torchvision_in_fp64(device, kind, reduction):
    logits, targets = _inputs(257, 19, kind, seed=1, device=device)
    for alpha, gamma in [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.75, 1.5), (0.25, 0.5)]:
        loss, grad = _loss_and_grad(
            sigmoid_focal_loss_dense, logits, targets, _upstream(2), alpha, gamma, reduction
        )
        ref_loss, ref_grad = _loss_and_grad(
            torchvision.ops.sigmoid_focal_loss,
            logits,
            targets,
            _upstream(2),
            alpha,
            gamma,
            reduction,
        )
        assert loss.dtype == torch.float64 and grad.dtype == torch.float64
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_fvcore_in_fp32(device):
    rtol = 1e-5 if device == "cpu" else 1e-4  # CUDA is built with --use_fast_math
    for kind, reduction in itertools.product(["one_hot", "soft"], REDUCTIONS):
        logits, targets = _inputs(300, 80, kind, seed=3, device=device, dtype=torch.float32)
        loss, grad = _loss_and_grad(
            sigmoid_focal_loss_dense, logits, targets, _upstream(4), 0.25, 2.0, reduction
        )
        ref_loss, ref_grad = _loss_and_grad(
            fvcore_sigmoid_focal_loss, logits, targets, _upstream(4), 0.25, 2.0, reduction
        )
        torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_one_hot_targets_give_the_label_op(device):
    """Hard targets are labels: the dense op equals sigmoid_focal_loss on the labels they encode."""
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(200, 80, generator=g) * 4).to(device)
    labels = torch.randint(0, 81, (200,), generator=g).to(device)  # 80 = background
    targets = torch.nn.functional.one_hot(labels, 81)[:, :80].float()
    for reduction in REDUCTIONS:
        dense, dense_grad = _loss_and_grad(
            sigmoid_focal_loss_dense, logits, targets, _upstream(6), 0.25, 2.0, reduction
        )
        by_label, label_grad = _loss_and_grad(
            lambda x, y, *a: sigmoid_focal_loss(x, y, 2.0, 0.25, reduction),
            logits,
            labels,
            _upstream(6),
        )
        torch.testing.assert_close(dense, by_label, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(dense_grad, label_grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_fp64(device, reduction):
    logits, targets = _inputs(9, 4, "soft", seed=7, device=device)
    for alpha, gamma in [(0.25, 2.0), (-1.0, 1.3)]:
        assert torch.autograd.gradcheck(
            lambda x: sigmoid_focal_loss_dense(x, targets, alpha, gamma, reduction, normalizer=2.5),
            (logits.clone().requires_grad_(True),),
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, grad_rtol", [(torch.float16, 2**-10), (torch.bfloat16, 2**-7)])
def test_half_precision_matches_fp32(device, dtype, grad_rtol):
    logits, targets = _inputs(128, 80, "soft", seed=8, device=device, dtype=torch.float32)
    low = logits.to(dtype)
    for reduction in REDUCTIONS:
        loss, grad = _loss_and_grad(
            sigmoid_focal_loss_dense, low, targets, _upstream(9), 0.25, 2.0, reduction
        )
        loss32, grad32 = _loss_and_grad(
            sigmoid_focal_loss_dense, low.float(), targets, _upstream(9), 0.25, 2.0, reduction
        )
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        torch.testing.assert_close(loss, loss32, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad.float(), grad32, rtol=grad_rtol, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_logits_and_layouts(device):
    logits = torch.tensor([[-1e4, -50.0, 0.0, 50.0, 1e4]] * 3, device=device)
    targets = torch.tensor(
        [[0.0, 0.5, 1.0, 0.5, 1.0], [1.0, 0.0, 0.5, 1.0, 0.0], [0.3] * 5], device=device
    )
    for gamma in (0.0, 0.5, 2.0):
        loss, grad = _loss_and_grad(
            sigmoid_focal_loss_dense, logits, targets, _upstream(10), 0.25, gamma, "none"
        )
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    base, targets = _inputs(40, 20, "soft", seed=11, device=device, dtype=torch.float32)
    layouts = {
        "transposed": base.t().contiguous().t(),
        "every other column": torch.cat([base, base], 1)[:, ::2],
    }
    for name, logits in layouts.items():
        for reduction in REDUCTIONS:
            loss, grad = _loss_and_grad(
                sigmoid_focal_loss_dense,
                logits,
                targets.t().contiguous().t(),
                _upstream(12),
                0.25,
                2.0,
                reduction,
            )
            expected, expected_grad = _loss_and_grad(
                sigmoid_focal_loss_dense,
                logits.contiguous(),
                targets,
                _upstream(12),
                0.25,
                2.0,
                reduction,
            )
            torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7, msg=name)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7, msg=name)


def test_bad_arguments_raise():
    logits, targets = _inputs(6, 3, "soft", dtype=torch.float32)
    bad = targets.clone()
    bad[4, 2] = 1.5
    with pytest.raises(ValueError, match=r"targets must be in \[0, 1\]; targets\[4, 2\] is 1.5"):
        sigmoid_focal_loss_dense(logits, bad)
    bad[4, 2] = float("nan")
    with pytest.raises(ValueError, match=r"targets\[4, 2\] is nan"):
        sigmoid_focal_loss_dense(logits, bad, reduction="sum")
    with pytest.raises(RuntimeError, match="targets must have the logits' shape"):
        sigmoid_focal_loss_dense(logits, targets[:, :2])
    with pytest.raises(RuntimeError, match="targets must be a floating point tensor"):
        sigmoid_focal_loss_dense(logits, targets.long())
    with pytest.raises(ValueError, match="targets require grad"):
        sigmoid_focal_loss_dense(logits, targets.clone().requires_grad_(True))
    with pytest.raises(ValueError, match="reduction must be one of"):
        sigmoid_focal_loss_dense(logits, targets, reduction="avg")
    with pytest.raises(ValueError, match="gamma must be finite and >= 0"):
        sigmoid_focal_loss_dense(logits, targets, gamma=-1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    logits, targets = _inputs(48, 10, "multi_label", seed=13, device=device, dtype=torch.float32)

    def loss_fn(x, t):
        return sigmoid_focal_loss_dense(
            x, t, reduction="sum", normalizer=torch.tensor(3.0, device=x.device)
        )

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    x = logits.clone().requires_grad_(True)
    compiled(x, targets).backward()
    x_eager = logits.clone().requires_grad_(True)
    loss_fn(x_eager, targets).backward()
    torch.testing.assert_close(x.grad, x_eager.grad)


@pytest.mark.skipif(
    not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck not available"
)
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    """The fake kernels give the real kernels' outputs, shapes, dtypes and strides (column-major on
    CUDA)."""
    logits, targets = _inputs(12, 6, "soft", seed=14, device=device, dtype=torch.float32)
    forward = torch.ops.retinanet_plugin.sigmoid_focal_loss_dense.default
    backward = torch.ops.retinanet_plugin.sigmoid_focal_loss_dense_backward.default
    for x in (logits, logits.t().contiguous().t()):
        for reduction, norm in (
            ("sum", torch.tensor(2.0, device=device)),
            ("mean", None),
            ("none", None),
        ):
            torch.library.opcheck(
                forward, (x.clone().requires_grad_(True), targets, norm, 2.0, 0.25, reduction, 1.0)
            )
            grad = torch.ones((12, 6) if reduction == "none" else (), device=device)
            torch.library.opcheck(backward, (grad, x, targets, norm, 2.0, 0.25, reduction, 1.0))
