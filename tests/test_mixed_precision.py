"""Mixed-precision training (SOLVER.AMP.ENABLED) on the CPU in bfloat16: finite, fp32 losses, close
to fp32."""

import copy
import itertools

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from retinanet_plugin.engine.train_loops import FiniteLossAMPTrainer, FiniteLossSimpleTrainer
from retinanet_plugin.engine.mixed_precision import amp_dtype_for


def _batches(num_batches=3, size=(96, 128)):
    g = torch.Generator().manual_seed(0)
    h, w = size
    batches = []
    for _ in range(num_batches):
        batch = []
        for _ in range(2):
            xy = torch.rand(4, 2, generator=g) * torch.tensor([w - 60.0, h - 60.0])
            boxes = torch.cat([xy, xy + 20 + torch.rand(4, 2, generator=g) * 40], dim=1)
            instances = Instances(
                size, gt_boxes=Boxes(boxes), gt_classes=torch.randint(0, 5, (4,), generator=g)
            )
            image = torch.randint(0, 255, (3, h, w), generator=g).float()
            batch.append({"image": image, "instances": instances})
        batches.append(batch)
    return batches


def _run(trainer_class, model, batches, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    trainer = trainer_class(model, itertools.cycle(batches), optimizer, **kwargs)
    logit_dtypes, losses = [], []
    hook = model.head.cls_score.register_forward_hook(
        lambda m, i, out: logit_dtypes.append(out.dtype)
    )
    with EventStorage(0) as storage:
        trainer.storage = storage
        for step in range(len(batches)):
            trainer.iter = storage.iter = step
            trainer.run_step()
            losses.append({k: storage.history(k).latest() for k in ("loss_cls", "loss_box_reg")})
    hook.remove()
    return trainer, logit_dtypes, losses


def test_bfloat16_training_on_cpu_is_finite_and_close_to_fp32(small_cfg):
    torch.manual_seed(0)
    model_fp32 = build_model(small_cfg())
    model_bf16 = copy.deepcopy(model_fp32)
    start = {name: p.detach().clone() for name, p in model_fp32.named_parameters()}
    batches = _batches()
    _, dtypes_fp32, losses_fp32 = _run(FiniteLossSimpleTrainer, model_fp32, batches)
    trainer, dtypes_bf16, losses_bf16 = _run(
        FiniteLossAMPTrainer, model_bf16, batches, precision=torch.bfloat16
    )

    assert set(dtypes_fp32) == {torch.float32} and set(dtypes_bf16) == {
        torch.bfloat16
    }  # autocast was on
    assert not trainer.grad_scaler.is_enabled()  # bfloat16 needs no loss scaling
    for name in ("loss_cls", "loss_box_reg"):  # same weights, same batch: bfloat16 rounding only
        assert abs(losses_bf16[0][name] - losses_fp32[0][name]) <= 0.01 * losses_fp32[0][name], name
    # later steps start from weights that drifted apart a little
    for fp32, bf16 in zip(losses_fp32, losses_bf16):
        for name in fp32:
            assert fp32[name] > 0 and torch.isfinite(torch.tensor(bf16[name]))
            assert abs(bf16[name] - fp32[name]) <= 0.1 * fp32[name], (name, fp32[name], bf16[name])
    # Both trained the same way: the weights stayed fp32 and finite, and moved in the same
    # direction.
    for p16 in model_bf16.parameters():
        assert p16.dtype == torch.float32 and torch.isfinite(p16).all()
    for name in ("head.cls_score.weight", "head.bbox_pred.weight", "backbone.fpn_output3.weight"):
        update32 = (dict(model_fp32.named_parameters())[name] - start[name]).flatten()
        update16 = (dict(model_bf16.named_parameters())[name] - start[name]).flatten()
        assert update32.norm() > 0
        assert torch.nn.functional.cosine_similarity(update32, update16, dim=0) > 0.95, name


def test_amp_losses_are_fp32_from_bfloat16_logits(small_cfg):
    model = build_model(small_cfg())
    model.train()
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(_batches(1)[0])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_amp_dtype_names():
    assert amp_dtype_for("auto", "cuda") == torch.float16
    assert amp_dtype_for("auto", "cpu") == torch.bfloat16
    assert amp_dtype_for("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="MODEL.RETINANET_PLUGIN.AMP_DTYPE"):
        amp_dtype_for("fp8", "cuda")


@pytest.mark.cuda
def test_float16_training_on_cuda_is_finite(small_cfg):
    model = build_model(small_cfg(**{"MODEL.DEVICE": "cuda"}))
    batches = [[{**x, "instances": x["instances"]} for x in b] for b in _batches()]
    trainer, dtypes, losses = _run(FiniteLossAMPTrainer, model, batches, precision=torch.float16)
    assert set(dtypes) == {torch.float16} and trainer.grad_scaler.is_enabled()
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)
