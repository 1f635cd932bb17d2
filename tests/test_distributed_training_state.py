"""What two DDP workers hold: before an evaluation every worker takes the main worker's buffers
(``engine/buffer_sync.py``: DDP does not broadcast them, so BatchNorm statistics differ between
workers); a model training channels-last gets weights whose gradients fit DDP's buckets
(``engine/trainer.py: wrap_for_distributed``)."""

import textwrap

import pytest
import torch
from launch_helpers import run_two_workers  # a helper beside the tests

from retinanet_plugin.env import cpu_has_native_bfloat16


WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    from retinanet_plugin.engine.buffer_sync import broadcast_buffers_from_main

    rank, port, out, differ = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "differ"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    model.register_buffer("fp16_buffer", torch.zeros(3, dtype=torch.float16))
    if differ and rank == 1:
        model.register_buffer("only_here", torch.zeros(2))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.arange(4.0) + 10 * rank)
        model[1].running_var.fill_(rank + 1.0)
        model[1].num_batches_tracked.fill_(7 + rank)
        model.fp16_buffer.fill_(rank + 0.5)
        model[0].weight.fill_(rank)  # a parameter: DDP's business, left alone
    broadcast_buffers_from_main(model)
    torch.save(
        {"buffers": dict(model.named_buffers()), "weight": model[0].weight.detach()},
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()
    """
)


def test_every_worker_gets_the_main_workers_buffers(tmp_path):
    for output, returncode in run_two_workers(WORKER, tmp_path, "same"):
        assert returncode == 0, output
    main, other = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert main["buffers"]["1.running_mean"].tolist() == [0.0, 1.0, 2.0, 3.0]
    for name, value in main["buffers"].items():
        assert torch.equal(other["buffers"][name], value), name
        assert other["buffers"][name].dtype == value.dtype
    assert other["weight"].unique().tolist() == [1.0]


def test_workers_with_different_buffers_stop_with_an_error_naming_them(tmp_path):
    for output, returncode in run_two_workers(WORKER, tmp_path, "differ"):
        assert returncode != 0
        assert "the workers' models differ in their buffers" in output, output
        assert "only_here" in output, output


LAYOUT_WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    from retinanet_plugin.engine import wrap_for_distributed

    rank, port, out, mixed = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "amp"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    torch.manual_seed(0)
    # a 1x1 convolution, like the FPN's laterals: its channels-last gradient has other strides
    # (on its size-1 dims) than an NCHW weight
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)
    )
    model.channels_last = True  # as RetinaNetPlugin's MEMORY_FORMAT "auto" on the CPU
    reference = [p.detach().clone() for p in model.parameters()]
    ddp = wrap_for_distributed(model, mixed)
    images = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ddp(images).float().square().mean()
    loss.backward()
    weight = ddp.module[0].weight
    torch.save(
        {
            "weight_channels_last": weight.is_contiguous(memory_format=torch.channels_last)
            and not weight.is_contiguous(),
            "same_values": all(torch.equal(a, b) for a, b in zip(reference, model.parameters())),
            "grad_strides_fit": all(
                p.grad.stride() == p.stride() for p in ddp.module.parameters() if p.dim() == 4
            ),
        },
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()
    """
)


@pytest.mark.parametrize("mixed_precision", [True, False])
def test_channels_last_training_gets_weights_that_fit_ddps_buckets(tmp_path, mixed_precision):
    """Under mixed precision the weights become channels-last (same values) and every gradient has
    its weight's strides, which DDP's bucket views have: PyTorch's "Grad strides do not match
    bucket view strides" stays silent. Told the training is not mixed-precision (float32 training
    runs NCHW), the weights keep their layout, and the same bf16 step (here, with channels-last
    activations) makes DDP warn where this CPU's kernels give channels-last gradients: the 1x1
    convolution's gradient is the one that differs."""
    mode = "amp" if mixed_precision else "fp32"
    outputs = run_two_workers(LAYOUT_WORKER, tmp_path, mode)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for (output, returncode), result in zip(outputs, results):
        assert returncode == 0, output
        assert result["same_values"]
        assert result["weight_channels_last"] == mixed_precision
        # DDP warns exactly when a gradient's strides are not its weight's
        warned = "Grad strides do not match bucket view strides" in output
        assert warned != result["grad_strides_fit"], output
    fit = [result["grad_strides_fit"] for result in results]
    if mixed_precision:
        assert all(fit)
    elif cpu_has_native_bfloat16() or not all(fit):
        assert not any(fit)
    else:
        # a CPU without native bfloat16 (AVX2: oneDNN's bf16 kernels need AVX-512) gives this
        # gradient NCHW strides anyway, so the control has no mismatch to show
        pytest.skip(
            "control: this CPU's bfloat16 convolution gives NCHW gradients for channels-last "
            f"input (native bfloat16: {cpu_has_native_bfloat16()}), so DDP has nothing to warn of"
        )


def test_the_trainers_evaluation_synchronises_the_buffers_first(monkeypatch, small_cfg):
    from detectron2.modeling import build_model

    from retinanet_plugin.engine import trainer

    calls = []
    monkeypatch.setattr(trainer, "broadcast_buffers_from_main", calls.append)
    cfg = small_cfg(**{"DATASETS.TEST": ()})
    model = build_model(cfg)
    trainer.RetinaNetPluginTrainer.test(cfg, model)
    assert calls == [model]


@pytest.mark.parametrize("amp", [True, False])
def test_the_trainer_tells_the_wrapper_whether_training_is_mixed_precision(
    monkeypatch, tmp_path, datasets_root, amp
):
    from retinanet_plugin import model_zoo
    from retinanet_plugin.data.synthetic_shapes import DATASET_DIRNAME, register_synthetic_shapes
    from retinanet_plugin.engine import trainer

    seen = []

    def wrap(model, mixed_precision=False):
        seen.append(mixed_precision)
        return model

    monkeypatch.setattr(trainer, "wrap_for_distributed", wrap)
    cfg = model_zoo.get_config("synthetic/retinanet_R18_synthetic.yaml")
    cfg.merge_from_list(
        ["SOLVER.AMP.ENABLED", str(amp), "OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", "0"]
    )
    register_synthetic_shapes(str(datasets_root / DATASET_DIRNAME))
    try:
        trainer.RetinaNetPluginTrainer(cfg)
    finally:
        register_synthetic_shapes()
    assert seen == [amp]
