"""Before an evaluation every worker takes the main worker's buffers (``engine/buffer_sync.py``):
DDP does not broadcast them, so BatchNorm statistics differ between workers."""

import subprocess
import sys
import textwrap

import torch
from launch_helpers import free_port  # a helper beside the tests

from conftest import REPO_ROOT

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


def _run_workers(tmp_path, mode):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(free_port())
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), port, str(tmp_path), mode],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    return [(w.communicate(timeout=120)[0], w.returncode) for w in workers]


def test_every_worker_gets_the_main_workers_buffers(tmp_path):
    for output, returncode in _run_workers(tmp_path, "same"):
        assert returncode == 0, output
    main, other = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert main["buffers"]["1.running_mean"].tolist() == [0.0, 1.0, 2.0, 3.0]
    for name, value in main["buffers"].items():
        assert torch.equal(other["buffers"][name], value), name
        assert other["buffers"][name].dtype == value.dtype
    assert other["weight"].unique().tolist() == [1.0]


def test_workers_with_different_buffers_stop_with_an_error_naming_them(tmp_path):
    for output, returncode in _run_workers(tmp_path, "differ"):
        assert returncode != 0
        assert "the workers' models differ in their buffers" in output, output
        assert "only_here" in output, output


def test_the_trainers_evaluation_synchronises_the_buffers_first(monkeypatch, small_cfg):
    from detectron2.modeling import build_model

    from retinanet_plugin.engine import trainer

    calls = []
    monkeypatch.setattr(trainer, "broadcast_buffers_from_main", calls.append)
    cfg = small_cfg(**{"DATASETS.TEST": ()})
    model = build_model(cfg)
    trainer.RetinaNetPluginTrainer.test(cfg, model)
    assert calls == [model]
