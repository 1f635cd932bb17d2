"""tools/ablate.py: the settings of the paper's Table 1 ablations, and an end-to-end run of two of
them."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import traceback
from unittest import mock

import pytest
import torch

from conftest import REPO_ROOT

CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "retinanet_R18_synthetic.yaml")


def _load_tool():
    """tools/ablate.py as a module, loaded as Python runs the script: with its folder first on
    sys.path while it imports its helpers (tools/ablation/)."""
    tools = os.path.join(REPO_ROOT, "tools")
    spec = importlib.util.spec_from_file_location("ablate", os.path.join(tools, "ablate.py"))
    module = importlib.util.module_from_spec(spec)
    with mock.patch.object(sys, "path", [tools, *sys.path]):
        spec.loader.exec_module(module)
    return module


ablate = _load_tool()


def _opts_dict(opts):
    return dict(zip(opts[::2], opts[1::2]))


def _config(setting_name, iters=600):
    cfg = ablate.load_config(CONFIG)
    opts = ablate.run_opts(cfg, ablate.SETTINGS_BY_NAME[setting_name], iters, [])
    return ablate.load_config(CONFIG, opts), opts


# ------------------------------------------------------------------------------------------------
# settings


def test_gamma_alpha_pairs_are_table_1b_best_alphas():
    gamma = ablate.select_settings("gamma")
    assert [(s.gamma, s.alpha) for s in gamma] == [
        (0.0, 0.75),
        (0.5, 0.5),
        (1.0, 0.25),
        (2.0, 0.25),
        (5.0, 0.25),
    ]
    assert all(s.prior_init and s.anchors == "3x3" and s.seed == 1 for s in gamma)
    for s in gamma:
        cfg, _ = _config(s.name)
        assert (cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA, cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA) == (
            s.gamma,
            s.alpha,
        )
        assert cfg.MODEL.RETINANET.PRIOR_PROB == 0.01
    assert ablate.PAPER_TABLE1[ablate.SETTINGS_BY_NAME["g2_a25"].paper_row][0] == max(
        ablate.PAPER_TABLE1[s.paper_row][0] for s in gamma
    )


def test_select_settings_by_name_and_ablation_keeps_table_order():
    chosen = ablate.select_settings("anchors_1x1, g0_a75 ,prior")
    assert [s.name for s in chosen] == ["g0_a75", "g2_a25_noprior", "g0_a75_noprior", "anchors_1x1"]
    assert ablate.select_settings("all") == list(ablate.SETTINGS)
    with pytest.raises(ValueError, match="unknown setting or ablation 'g3'.*g2_a25"):
        ablate.select_settings("g3")


def _model(cfg):
    from retinanet_plugin.engine import RetinaNetPluginTrainer

    return RetinaNetPluginTrainer.build_model(cfg)


def test_baseline_keeps_the_configs_anchors_and_prior():
    base = ablate.load_config(CONFIG)
    cfg, _ = _config("g2_a25")
    for ours, theirs in zip(cfg.MODEL.ANCHOR_GENERATOR.SIZES, base.MODEL.ANCHOR_GENERATOR.SIZES):
        assert ours == pytest.approx(theirs, rel=1e-12)
    assert cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == [[0.5, 1.0, 2.0]]
    head = _model(cfg).head
    assert head.cls_score.out_channels == 9 * 5 and head.bbox_pred.out_channels == 9 * 4
    assert torch.sigmoid(head.cls_score.bias).allclose(torch.tensor(0.01))


def test_anchors_1x1_one_base_size_per_level_and_a_head_with_one_anchor():
    cfg, _ = _config("anchors_1x1")
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[16.0], [32.0], [64.0], [128.0], [256.0]]
    assert cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == [[1.0]]
    model = _model(cfg)
    assert model.head.cls_score.out_channels == 5 and model.head.bbox_pred.out_channels == 4
    anchors = model.anchor_generator([torch.zeros(1, 1, 2, 2)] * 5)
    sides = [(a.tensor[:, 2] - a.tensor[:, 0]).unique().tolist() for a in anchors]
    assert sides == [[16.0], [32.0], [64.0], [128.0], [256.0]]  # square anchors, one size per level


def test_no_prior_starts_the_class_bias_at_zero():
    cfg, _ = _config("g2_a25_noprior")
    assert cfg.MODEL.RETINANET.PRIOR_PROB == 0.5
    assert torch.equal(_model(cfg).head.cls_score.bias, torch.zeros(9 * 5))
    cfg, _ = _config("g0_a75_noprior")
    assert (cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA, cfg.MODEL.RETINANET.PRIOR_PROB) == (0.0, 0.5)


def test_schedule_is_scaled_to_the_iterations():
    # the config: 1400 iterations, steps (1200, 1330), warm-up 100
    _, opts = _config("g2_a25", iters=600)
    opts = _opts_dict(opts)
    assert (opts["SOLVER.MAX_ITER"], opts["SOLVER.STEPS"], opts["SOLVER.WARMUP_ITERS"]) == (
        "600",
        "(514, 570)",
        "43",
    )
    assert int(opts["SOLVER.CHECKPOINT_PERIOD"]) > 600 and opts["TEST.EVAL_PERIOD"] == "0"
    tiny = _opts_dict(ablate.schedule_opts(1200, (900, 1100), 100, 3))
    assert (tiny["SOLVER.STEPS"], tiny["SOLVER.WARMUP_ITERS"]) == ("(2,)", "1")
    cfg = ablate.load_config(
        CONFIG, ablate.run_opts(ablate.load_config(CONFIG), ablate.SETTINGS[0], 300, ["SEED", "7"])
    )
    # 1200 and 1330 of 1400 iterations scaled to 300; the user's overrides come last and win
    assert cfg.SOLVER.STEPS == (257, 285) and cfg.SEED == 7


def _real_divergence_log():
    """The traceback the plugin's trainer prints when a loss term becomes NaN at iteration 37."""
    from retinanet_plugin.engine.finite_checks import check_finite_losses

    try:
        check_finite_losses(
            {"loss_cls": torch.tensor(float("nan")), "loss_box_reg": torch.tensor(0.5)}, 37
        )
    except FloatingPointError:
        return (
            "[11/23 12:00:00 d2.utils.events]: iter: 19 total_loss: 3.2\n" + traceback.format_exc()
        )
    raise AssertionError("check_finite_losses did not raise")


def test_a_run_stopped_by_a_non_finite_loss_is_recorded_as_diverged(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"iteration": 19, "total_loss": 3.25}) + "\n")
    summary = ablate.summarize_run(str(tmp_path), 1, _real_divergence_log())
    assert summary["status"] == "diverged" and summary["diverged_at_iter"] == 37
    assert "loss_cls is nan" in summary["divergence"]
    assert (
        summary["AP"] is None and summary["final_loss"] == 3.25 and summary["final_loss_iter"] == 19
    )


def test_other_failures_are_errors_not_results(tmp_path):
    with pytest.raises(RuntimeError, match="(?s)exit code 1.*No such file"):
        ablate.summarize_run(
            str(tmp_path), 1, "Traceback...\nFileNotFoundError: No such file: x.jpg"
        )
    with pytest.raises(RuntimeError, match="no bbox/AP evaluation"):
        ablate.summarize_run(str(tmp_path), 0, "done")


# ------------------------------------------------------------------------------------------------
# end to end

TINY = [  # a few iterations on small images: this checks the plumbing, not the accuracy
    "SOLVER.IMS_PER_BATCH",
    "2",
    "INPUT.MIN_SIZE_TRAIN",
    "(160,)",
    "INPUT.MIN_SIZE_TEST",
    "160",
    "DATALOADER.NUM_WORKERS",
    "0",
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    "0.0",
    "TEST.DETECTIONS_PER_IMAGE",
    "100",
]


def _run_tool(output, datasets_root, *args):
    cmd = [
        sys.executable,
        os.path.join(REPO_ROOT, "tools", "ablate.py"),
        "--output",
        str(output),
        *args,
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


def _coco_eval(gt_json, results_json):
    """(AP, AP50, AP75) in percent of a detections file, by pycocotools (as
    COCOEvaluator(use_fast_impl=False))."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        with open(results_json) as f:
            detections = json.load(f)
        evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [100 * float(v) for v in evaluation.stats[:3]], len(detections)


def _detections_file(out, result):
    """The detections COCOEvaluator wrote for the run of ``result``."""
    return (
        out
        / result["run_dir"]
        / "inference"
        / "retinanet_synthetic_shapes_val"
        / "coco_instances_results.json"
    )


@pytest.mark.slow
def test_two_settings_end_to_end_then_resumed(tmp_path):
    from retinanet_plugin.data.synthetic_shapes import DATASET_DIRNAME, ensure_synthetic_shapes

    datasets_root = os.path.abspath(
        os.environ.get("DETECTRON2_DATASETS", os.path.join(REPO_ROOT, "datasets"))
    )
    dataset = ensure_synthetic_shapes(os.path.join(datasets_root, DATASET_DIRNAME))
    out = tmp_path / "abl"
    args = ["--iters", "3", "--settings", "g2_a25,anchors_1x1", *TINY]
    proc = _run_tool(out, datasets_root, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    summary = json.loads((out / "results.json").read_text())
    results = {r["name"]: r for r in summary["results"]}
    assert list(results) == ["g2_a25", "anchors_1x1"]
    table = (out / "results.md").read_text()
    for name, r in results.items():
        assert r["status"] == "ok" and r["iters"] == 3 and r["wall_time_s"] > 0
        assert math.isfinite(r["final_loss"]) and r["final_loss_iter"] == 2
        # the AP of the table is the evaluator's: recompute it from the detections file the
        # evaluator wrote
        (ap, ap50, ap75), num_detections = _coco_eval(
            os.path.join(dataset, "val.json"), _detections_file(out, r)
        )
        assert num_detections > 0
        assert (r["AP"], r["AP50"], r["AP75"]) == pytest.approx((ap, ap50, ap75), abs=1e-9)
        # seeded: a few detections match after 3 iterations, so the check above has teeth
        assert 0 < r["AP50"] <= 100
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {r['AP']:.1f} | {r['AP50']:.1f} | {r['AP75']:.1f} |" in row
        assert os.path.isfile(out / "settings" / f"{name}.json")
        # checkpoints deleted by default
        assert not os.path.exists(out / r["run_dir"] / "model_final.pth")
    assert (
        results["anchors_1x1"]["anchors"] == "1x1" and "[[1.0]]" in results["anchors_1x1"]["opts"]
    )
    # the two runs trained different models: their detections differ
    files = [_detections_file(out, r).read_bytes() for r in results.values()]
    assert files[0] != files[1]
    png = (out / "ablation_ap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # a second invocation skips the finished settings and rewrites the same reports
    before = {n: (out / "settings" / f"{n}.json").read_bytes() for n in results}
    proc = _run_tool(out, datasets_root, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("skipped") == 2 and "training" not in proc.stdout
    assert {n: (out / "settings" / f"{n}.json").read_bytes() for n in results} == before
    assert json.loads((out / "results.json").read_text()) == summary

    # another schedule in the same folder would mix two schedules in one table: refused, nothing run
    proc = _run_tool(out, datasets_root, "--iters", "4", "--settings", "g2_a25", *TINY)
    assert proc.returncode != 0 and "run with another config or overrides" in proc.stderr
    assert {n: (out / "settings" / f"{n}.json").read_bytes() for n in results} == before
