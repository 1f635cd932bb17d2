"""The exponential moving average of the weights (``MODEL.RETINANET_PLUGIN.EMA``): the update rule,
and in training: checkpoints carry the average, resume restores it, the final checkpoint is it."""

import math

import pytest
import torch

from retinanet_plugin.engine.weight_averaging import WeightAverage, with_weight_average_hook


def _small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_update_follows_the_formula_and_copies_integer_buffers():
    model = _small_model()
    average = WeightAverage(model, decay=0.9, ramp_iters=2.0)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(1, 5):
        with torch.no_grad():
            model[0].weight.add_(float(t))
        model.train()(torch.randn(5, 3))  # moves BatchNorm's running stats and counter
        average.update()
        d = 0.9 * (1 - math.exp(-t / 2.0))
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                expected[name] = d * expected[name] + (1 - d) * value
            else:
                expected[name] = value.clone()
    assert average.updates == 4
    for name, value in average.average.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-6)
    assert average.average["1.num_batches_tracked"].item() == 4
    # the average is not the model's weights, and copy_to gives it to the model
    assert not torch.equal(average.average["0.weight"], model[0].weight)
    training_weight = model[0].weight.detach().clone()
    average.copy_to_model()
    assert torch.equal(average.average["0.weight"], model[0].weight)
    # the state keeps the training weights, and loading it gives them back to a model
    state = average.state_dict()
    assert torch.equal(state["training_weights"]["0.weight"], training_weight)
    other = _small_model()
    restored = WeightAverage(other, decay=0.9, ramp_iters=2.0)
    restored.load_state_dict(state)
    assert torch.equal(other[0].weight, training_weight) and restored.updates == 4
    assert torch.equal(restored.average["0.weight"], average.average["0.weight"])
    # a saved average that does not fit the model is named
    state["average"]["0.weight"] = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="'0.weight' of shape \\(2, 3\\)"):
        restored.load_state_dict(state)


def test_decay_ramps_up_to_its_value_and_bad_settings_are_named():
    average = WeightAverage(_small_model(), decay=0.999, ramp_iters=100.0)
    assert average.current_decay() < 0.01
    average.updates = 2000
    assert average.current_decay() == pytest.approx(0.999, abs=1e-8)
    with pytest.raises(ValueError, match="EMA.DECAY"):
        WeightAverage(_small_model(), decay=1.0, ramp_iters=10.0)
    with pytest.raises(ValueError, match="EMA.RAMP_ITERS"):
        WeightAverage(_small_model(), decay=0.99, ramp_iters=0.0)


def test_the_hook_comes_before_the_checkpointer_and_the_evaluation():
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import hooks

    model = _small_model()
    average = WeightAverage(model, decay=0.9, ramp_iters=1.0)
    timer = hooks.IterationTimer()
    precise_bn = hooks.PreciseBN(0, model, [], 1)
    checkpointer = hooks.PeriodicCheckpointer(DetectionCheckpointer(model), 10)
    evaluation = hooks.EvalHook(0, lambda: {})
    ordered = with_weight_average_hook([timer, precise_bn, checkpointer, evaluation], average)
    assert [type(h).__name__ for h in ordered] == [
        "IterationTimer",
        "WeightAverageHook",
        "PreciseBN",
        "PeriodicCheckpointer",
        "EvalHook",
    ]
    # a worker without a checkpointer: before the evaluation
    ordered = with_weight_average_hook([timer, evaluation], average)
    assert [type(h).__name__ for h in ordered][1] == "WeightAverageHook"


EMA_RUN = [
    "MODEL.RETINANET_PLUGIN.EMA.ENABLED",
    "True",
    "MODEL.RETINANET_PLUGIN.EMA.DECAY",
    "0.9",
    "MODEL.RETINANET_PLUGIN.EMA.RAMP_ITERS",
    "2.0",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "6",
    "SOLVER.CHECKPOINT_PERIOD",
    "3",
    "SOLVER.WARMUP_ITERS",
    "2",
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    "160",
    "DATALOADER.NUM_WORKERS",
    "0",
    "DATASETS.TEST",
    "()",
]


def _trainer(datasets_root, out_dir, resume=False, overrides=()):
    from retinanet_plugin import model_zoo
    from retinanet_plugin.data.synthetic_shapes import DATASET_DIRNAME, register_synthetic_shapes
    from retinanet_plugin.engine import RetinaNetPluginTrainer

    cfg = model_zoo.get_config("synthetic/retinanet_R18_synthetic.yaml")
    cfg.merge_from_list(EMA_RUN + ["OUTPUT_DIR", str(out_dir), *overrides])
    register_synthetic_shapes(str(datasets_root / DATASET_DIRNAME))
    try:
        trainer = RetinaNetPluginTrainer(cfg)
        trainer.resume_or_load(resume=resume)
    finally:
        register_synthetic_shapes()
    return trainer


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_training_keeps_the_average_in_checkpoints_resumes_it_and_ends_with_it(
    tmp_path, datasets_root
):
    out = tmp_path / "run"
    trainer = _trainer(datasets_root, out)
    trainer.train()
    middle, final = _load(out / "model_0000002.pth"), _load(out / "model_final.pth")

    # a checkpoint during training: the training weights, and the average of 3 updates beside them
    assert middle["weight_average"]["updates"] == 3
    differing = [
        name
        for name, value in middle["model"].items()
        if value.dtype.is_floating_point
        and not torch.equal(value, middle["weight_average"]["average"][name])
    ]
    assert differing, "the average is the training weights"
    # the final checkpoint's model is the average of all 6 updates, and so is the trained model
    assert final["weight_average"]["updates"] == 6
    for name, value in final["model"].items():
        assert torch.equal(value, final["weight_average"]["average"][name]), name
    model_state = trainer.model.state_dict()
    assert all(torch.equal(model_state[k], v) for k, v in final["model"].items())

    # --resume from the final checkpoint (to train longer): the training weights come back, not
    # the average
    training_weights = final["weight_average"]["training_weights"]
    assert any(not torch.equal(v, final["model"][k]) for k, v in training_weights.items())
    resumed = _trainer(datasets_root, out, resume=True)
    assert resumed.start_iter == 6
    resumed_state = resumed.model.state_dict()
    assert all(torch.equal(resumed_state[k], v) for k, v in training_weights.items())
    # ... and with the same SOLVER.MAX_ITER nothing is left to train: the run ends with the final
    # checkpoint's model again (what its final evaluation sees), not the training weights, nor the
    # raw average where the saved model differs from it (as precise-BN statistics make it)
    saved_final = _load(out / "model_final.pth")
    saved_final["model"]["head.cls_score.bias"] = saved_final["model"]["head.cls_score.bias"] + 1.0
    torch.save(saved_final, out / "model_final.pth")
    resumed = _trainer(datasets_root, out, resume=True)
    resumed.train()
    resumed_state = resumed.model.state_dict()
    assert all(torch.equal(resumed_state[k], v) for k, v in saved_final["model"].items())

    # --resume from the middle: the average comes back exactly, with its update count
    (out / "last_checkpoint").write_text("model_0000002.pth")
    resumed = _trainer(datasets_root, out, resume=True)
    assert resumed.start_iter == 3
    assert resumed.weight_average.updates == 3
    for name, value in middle["weight_average"]["average"].items():
        assert torch.equal(resumed.weight_average.average[name], value), name

    # --resume from the middle with SOLVER.MAX_ITER lowered to where it stopped: no step runs, and
    # the run ends with that checkpoint's average
    resumed = _trainer(datasets_root, out, resume=True, overrides=["SOLVER.MAX_ITER", "3"])
    assert resumed.start_iter == 3
    resumed.train()
    resumed_state = resumed.model.state_dict()
    for name, value in middle["weight_average"]["average"].items():
        assert torch.equal(resumed_state[name], value), name
