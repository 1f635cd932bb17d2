"""``benchmarks/profile_retinanet.py``'s convolution figures (``profile_stages``): which profiler
ops count as convolutions, their time in a real profile, and the bound it reports (a peer's step
over the plugin's convolutions alone). No timing is asserted: the numbers are made up, or only
compared with each other."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

import sane_random_weights  # noqa: F401  (makes the benchmarks package importable)
from benchmarks import profile_stages


def test_convolution_ops_are_told_apart():
    for name in (
        "aten::mkldnn_convolution",
        "aten::_slow_conv2d_forward",
        "aten::convolution_backward",
        "aten::conv2d",
    ):
        assert profile_stages.is_convolution(name), name
    for name in (
        "aten::mul",
        "aten::copy_",
        "aten::_convert_indices_from_coo_to_csr",
        "aten::mkldnn_reorder_conv2d_weight",
        "retinanet_plugin::sigmoid_focal_loss",
        "conv",
    ):
        assert not profile_stages.is_convolution(name), name


def test_a_profile_counts_its_convolutions_and_nothing_else():
    """A step of one convolution and a large elementwise product: the convolution time is within
    the step, and is the self time of the convolution ops alone."""
    x, w = torch.randn(1, 16, 64, 64), torch.randn(16, 16, 3, 3)
    big = torch.randn(2_000_000)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("forward"):
            F.conv2d(x, w, padding=1)
            for _ in range(5):
                big.mul(1.5)
    summary = profile_stages.summarize(prof, 1)
    convolution_self = sum(
        ms for key, ms in summary["ops_self_ms"].items() if "conv" in key.split(" | ")[1]
    )
    convolution = profile_stages.convolution_ms(summary)
    assert convolution == pytest.approx(convolution_self)
    multiply = sum(ms for key, ms in summary["ops_self_ms"].items() if key.endswith("aten::mul"))
    assert 0 < convolution < summary["total_ms"] - multiply + 1e-9


def test_the_bound_is_the_peer_step_over_the_plugin_convolutions():
    def summary(total_ms, ops):
        return {"total_ms": total_ms, "stages_ms": {}, "stage_calls": {}, "ops_self_ms": ops}

    results = {
        "plugin": summary(
            100.0,
            {
                "head | aten::mkldnn_convolution": 50.0,
                "backbone | aten::_slow_conv2d_forward": 30.0,
                "head | aten::mul": 20.0,
            },
        )
        | {"gflop": 16.0},
        "detectron2": summary(120.0, {"head | aten::mkldnn_convolution": 90.0}),
    }
    bound = profile_stages.convolution_bound(results)
    assert bound["detectron2_over_plugin"] == pytest.approx(1.2)
    assert bound["detectron2_over_plugin_convolutions"] == pytest.approx(1.5)
    assert bound["models"]["plugin"] == pytest.approx(
        {"convolution_ms": 80.0, "share": 0.8, "gflop": 16.0, "convolution_gflop_per_s": 200.0}
    )
    assert "gflop" not in bound["models"]["detectron2"]  # not measured: not reported
    averaged = profile_stages.average([results["plugin"], results["detectron2"]])
    assert profile_stages.convolution_ms(averaged) == pytest.approx(85.0)
