"""End-to-end runs of train_net.py and tools/predict.py on the synthetic dataset (1 and 2 CPU
processes)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from launch_helpers import dist_url

from retinanet_plugin.engine.trainer import TTA_DONE

pytestmark = pytest.mark.slow

CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "retinanet_R18_synthetic.yaml")
TINY = [  # a few iterations on small images: this checks the plumbing, not the accuracy
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "4",
    "SOLVER.CHECKPOINT_PERIOD",
    "2",
    "SOLVER.WARMUP_ITERS",
    "2",
    "SOLVER.STEPS",
    "(3,)",
    "INPUT.MIN_SIZE_TRAIN",
    "(160,)",
    "INPUT.MIN_SIZE_TEST",
    "160",
    "DATALOADER.NUM_WORKERS",
    "0",
    "TEST.EVAL_PERIOD",
    "0",
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    "0.0",  # after 4 iterations scores are still near the 0.01 prior
]

# test-time augmentation at one small size and its mirror: the trainer's second evaluation
TTA = ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(128,)", "TEST.AUG.MAX_SIZE", "224"]


def run(args, datasets_root, timeout=600):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def train(out_dir, datasets_root, *extra, num_gpus=1, resume=False):
    args = [
        "train_net.py",
        "--config-file",
        CONFIG,
        "--num-gpus",
        str(num_gpus),
        "--dist-url",
        dist_url(),
    ]
    if resume:
        args.append("--resume")
    proc = run(args + TINY + ["OUTPUT_DIR", str(out_dir), *extra], datasets_root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_evaluation(out_dir, log, training=True):
    assert os.path.isfile(
        os.path.join(
            out_dir, "inference", "retinanet_synthetic_shapes_val", "coco_instances_results.json"
        )
    )
    assert (
        "Evaluation results for retinanet_synthetic_shapes_val" in log
        and "copypaste: AP,AP50,AP75" in log
    )
    if not training:  # --eval-only writes no metrics.json
        return None
    evaluated = [m for m in metrics(out_dir) if "bbox/AP50" in m]
    assert evaluated, "no bbox AP in metrics.json"
    return evaluated[-1]


@pytest.fixture(scope="module")
def trained_one_process(tmp_path_factory, datasets_root):
    out = tmp_path_factory.mktemp("one_process")
    proc = train(out, datasets_root, *TTA)
    return out, proc.stdout + proc.stderr


def test_one_process_trains_checkpoints_and_evaluates(trained_one_process):
    out, log = trained_one_process
    for name in (
        "model_0000001.pth",
        "model_0000003.pth",
        "model_final.pth",
        "last_checkpoint",
        "config.yaml",
    ):
        assert os.path.isfile(os.path.join(out, name)), name
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_final.pth"
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")], (
        "a temporary checkpoint file was left behind"
    )
    # readable like any file the user writes
    assert os.stat(out / "model_final.pth").st_mode & 0o044 == 0o044
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 3 and {"model", "trainer"} <= set(ckpt)
    assert "optimizer" in ckpt["trainer"]["_trainer"] and "LRScheduler" in ckpt["trainer"]["hooks"]
    losses = [m["total_loss"] for m in metrics(out) if "total_loss" in m]
    assert losses and all(loss == loss and loss < 1e4 for loss in losses)  # finite
    evaluated = check_evaluation(out, log)
    # then the final model with test-time augmentation, its results written beside the plain ones
    assert TTA_DONE in log and "bbox_TTA/AP50" in evaluated, sorted(evaluated)
    assert os.path.isfile(
        os.path.join(
            out, "inference_TTA", "retinanet_synthetic_shapes_val", "coco_instances_results.json"
        )
    )


def test_resume_continues_from_last_checkpoint(trained_one_process, tmp_path, datasets_root):
    out, _ = trained_one_process
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("model_final.pth", "last_checkpoint"):
        (resumed / name).write_bytes((out / name).read_bytes())
    proc = train(resumed, datasets_root, "SOLVER.MAX_ITER", "7", resume=True)
    log = proc.stdout + proc.stderr
    assert f"Loading trainer from {resumed / 'model_final.pth'}" in log
    iterations = [m["iteration"] for m in metrics(resumed) if "total_loss" in m]
    # no iteration before the checkpoint was repeated
    assert iterations and min(iterations) >= 4, iterations
    ckpt = torch.load(resumed / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 6
    # the scheduler went on from where the checkpoint left it (it counts steps taken: iteration + 1)
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 7


def test_two_cpu_processes_over_gloo(tmp_path, datasets_root):
    proc = train(tmp_path, datasets_root, num_gpus=2)
    log = proc.stdout + proc.stderr
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert "World size: 2" in log
    check_evaluation(tmp_path, log)


def test_eval_only_and_predictor(trained_one_process, tmp_path, datasets_root):
    out, _ = trained_one_process
    weights = str(out / "model_final.pth")
    proc = run(
        [
            "train_net.py",
            "--config-file",
            CONFIG,
            "--eval-only",
            *TINY,
            *TTA,
            "OUTPUT_DIR",
            str(tmp_path / "eval"),
            "MODEL.WEIGHTS",
            weights,
        ],
        datasets_root,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_evaluation(tmp_path / "eval", proc.stdout + proc.stderr, training=False)
    assert TTA_DONE in proc.stdout + proc.stderr  # and, with TEST.AUG.ENABLED, augmented

    val_images = sorted((datasets_root / "retinanet_synthetic_shapes" / "val").iterdir())[:3]
    proc = run(
        [
            "tools/predict.py",
            "--config-file",
            CONFIG,
            "--input",
            *map(str, val_images),
            "--output",
            str(tmp_path / "pred"),
            "--mosaic",
            str(tmp_path / "pred" / "all.png"),
            "--confidence-threshold",
            "0",
            "MODEL.WEIGHTS",
            weights,
        ],
        datasets_root,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (
        len(list((tmp_path / "pred").glob("*_pred.png"))) == 3
        and (tmp_path / "pred" / "all.png").is_file()
    )


def test_default_predictor_returns_instances_inside_the_image(trained_one_process, datasets_root):
    import cv2
    from detectron2.engine import DefaultPredictor

    from retinanet_plugin import model_zoo

    out, _ = trained_one_process
    cfg = model_zoo.get_config("synthetic/retinanet_R18_synthetic.yaml")
    cfg.MODEL.WEIGHTS = str(out / "model_final.pth")
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = (
        0.0  # keep every candidate: the tiny run's scores are low
    )
    cfg.INPUT.MIN_SIZE_TEST = 160
    image_path = sorted((datasets_root / "retinanet_synthetic_shapes" / "val").iterdir())[0]
    image = cv2.imread(str(image_path))
    instances = DefaultPredictor(cfg)(image)["instances"]
    h, w = image.shape[:2]
    assert instances.image_size == (h, w) and len(instances) > 0
    boxes = instances.pred_boxes.tensor
    assert torch.all(boxes[:, 0] >= 0) and torch.all(boxes[:, 1] >= 0)
    assert torch.all(boxes[:, 2] <= w) and torch.all(boxes[:, 3] <= h)
    assert torch.all(boxes[:, 2] > boxes[:, 0]) and torch.all(boxes[:, 3] > boxes[:, 1])


def test_missing_coco_files_give_a_clear_error(tmp_path):
    proc = run(
        [
            "train_net.py",
            "--config-file",
            os.path.join(REPO_ROOT, "configs", "retinanet_R50.yaml"),
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ],
        tmp_path / "empty_datasets",
        timeout=120,
    )
    assert proc.returncode != 0
    assert "DETECTRON2_DATASETS" in proc.stderr and "instances_train2017.json" in proc.stderr


def test_cuda_config_falls_back_to_cpu_with_bfloat16_amp(tmp_path, monkeypatch):
    import argparse
    import importlib.util

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: there is no fallback to test")
    spec = importlib.util.spec_from_file_location(
        "train_net", os.path.join(REPO_ROOT, "train_net.py")
    )
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = argparse.Namespace(
        config_file=CONFIG,
        eval_only=False,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
        resume=False,
        opts=["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path)],
    )
    cfg = train_net.setup(args)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.AMP.ENABLED is True
    assert cfg.MODEL.RETINANET_PLUGIN.AMP_DTYPE == "bfloat16"
    log = (tmp_path / "log.txt").read_text()
    assert "running on the CPU" in log and "mixed precision uses bfloat16" in log
