"""Faults during training: a save that fails midway, a run killed (SIGKILL) while saving and
resumed, two CPU workers against one, one worker raising, and a 200-iteration soak on hostile boxes.

The multi-process and soak runs go through tests/instrumented_train_net.py: train_net.py plus
per-iteration records (loss terms, resident memory) and an injected fault, so that curves can be
compared iteration by iteration.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

import launch_helpers
from conftest import REPO_ROOT
from launch_helpers import (
    CONFIG,
    CURVE_ITERATIONS,
    CURVE_RUN,
    EARLY_ITERATIONS,
    EARLY_RTOL,
    INSTRUMENTED,
    LATE_RTOL,
    ONE_PROCESS_CURVE_RUN,
    TWO_WORKER_CURVE_RUN,
    dist_url,
    read_records,
    relative_loss_differences,
    worker_env,
)


def _tail(text, n=4000):
    return text[-n:]


# --------------------------------------------------------------------------------------------------
# A save that fails midway (in-process, deterministic)
# --------------------------------------------------------------------------------------------------


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_and_tag_intact(
    tmp_path, monkeypatch
):
    from detectron2.modeling import build_model

    from conftest import make_small_cfg
    from retinanet_plugin.checkpoint import CheckedDetectionCheckpointer

    cfg = make_small_cfg(**{"MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL": "reference"})
    cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.RETINANET.NUM_CONVS = 32, 1
    model = build_model(cfg)
    checkpointer = CheckedDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    good = (tmp_path / "model_0000001.pth").read_bytes()

    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half of the file is on disk when the "crash" comes
        raise OSError("simulated crash in the middle of torch.save")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(OSError, match="simulated crash"):
        checkpointer.save("model_0000003", iteration=3)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
    ]  # no tmp file, no partial file
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == good

    # the tag is written the same way: a failure while tagging keeps the previous tag
    real_replace = os.replace

    def fail_on_tag(src, dst):
        if os.path.basename(dst) == "last_checkpoint":
            raise OSError("simulated crash while tagging")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_tag)
    with pytest.raises(OSError, match="simulated crash while tagging"):
        checkpointer.save("model_0000005", iteration=5)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    # complete, untagged
    assert torch.load(tmp_path / "model_0000005.pth", weights_only=False)["iteration"] == 5


# --------------------------------------------------------------------------------------------------
# Kill (SIGKILL) while saving, then --resume
# --------------------------------------------------------------------------------------------------

KILL_RUN = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "12",
    "SOLVER.CHECKPOINT_PERIOD",
    "3",
    "SOLVER.WARMUP_ITERS",
    "2",
    "SOLVER.STEPS",
    "(8,)",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "192",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "192",
    "DATALOADER.NUM_WORKERS",
    "0",
    "TEST.EVAL_PERIOD",
    "0",
]


def _kill_while_saving(out_dir, datasets_root, timeout=300):
    """Start train_net.py; once a first checkpoint is tagged, SIGKILL it as soon as the temporary
    file of a later save appears. Returns (log, whether a temporary file was left, i.e. the kill
    landed inside a save)."""
    log_path = out_dir.parent / (out_dir.name + ".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "train_net.py",
                "--config-file",
                CONFIG,
                *KILL_RUN,
                "OUTPUT_DIR",
                str(out_dir),
            ],
            cwd=REPO_ROOT,
            env=worker_env(datasets_root),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        try:
            while True:
                assert proc.poll() is None, "the run ended before it could be killed:\n" + _tail(
                    log_path.read_text()
                )
                assert time.time() < deadline, "no second checkpoint save within the timeout"
                if (out_dir / "last_checkpoint").exists() and any(
                    f.startswith(".tmp-model_") for f in os.listdir(out_dir)
                ):
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.002)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = [f for f in os.listdir(out_dir) if f.startswith(".tmp-")]
    return log_path.read_text(), bool(left)


def _cfg_for(out_dir):
    from retinanet_plugin import model_zoo

    cfg = model_zoo.get_config("synthetic/retinanet_R18_synthetic.yaml")
    cfg.merge_from_list(KILL_RUN + ["OUTPUT_DIR", str(out_dir)])
    return cfg


@pytest.mark.slow
def test_killed_while_saving_then_resumed_continues_with_the_same_state(tmp_path, datasets_root):
    from retinanet_plugin.data.synthetic_shapes import DATASET_DIRNAME, register_synthetic_shapes
    from retinanet_plugin.engine import RetinaNetPluginTrainer

    out = tmp_path / "run"
    out.mkdir()
    _, killed_inside_a_save = _kill_while_saving(out, datasets_root)
    print(f"killed inside a save: {killed_inside_a_save}")

    # nothing half-written under a checkpoint's name: the tag names a complete checkpoint, every
    # .pth loads
    tagged = (out / "last_checkpoint").read_text().strip()
    checkpoint = torch.load(out / tagged, map_location="cpu", weights_only=False)
    resumed_from = checkpoint["iteration"]
    assert tagged == f"model_{resumed_from:07d}.pth" and resumed_from >= 2
    for name in os.listdir(out):
        if name.endswith(".pth"):
            assert "iteration" in torch.load(out / name, map_location="cpu", weights_only=False), (
                name
            )

    # what the resumed trainer loads is exactly what the checkpoint holds
    register_synthetic_shapes(str(datasets_root / DATASET_DIRNAME))
    try:
        trainer = RetinaNetPluginTrainer(_cfg_for(out))
        trainer.resume_or_load(resume=True)
    finally:
        register_synthetic_shapes()
    assert trainer.start_iter == resumed_from + 1
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")], (
        "resume removes a killed save's temporary file"
    )
    saved_optimizer = checkpoint["trainer"]["_trainer"]["optimizer"]
    loaded_optimizer = trainer.optimizer.state_dict()
    assert loaded_optimizer["param_groups"] == saved_optimizer["param_groups"]
    assert (
        saved_optimizer["state"].keys() == loaded_optimizer["state"].keys()
        and saved_optimizer["state"]
    )
    for index, state in saved_optimizer[
        "state"
    ].items():  # momentum buffers (SGD) or moments and steps (AdamW)
        assert state.keys() == loaded_optimizer["state"][index].keys(), index
        for key, value in state.items():
            assert torch.equal(
                torch.as_tensor(loaded_optimizer["state"][index][key]), torch.as_tensor(value)
            ), (index, key)
    assert trainer.scheduler.state_dict() == checkpoint["trainer"]["hooks"]["LRScheduler"]
    assert trainer.scheduler.last_epoch == resumed_from + 1
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, checkpoint["model"][name]), name
    del trainer

    # the resumed train_net.py run goes on from there to the end
    proc = subprocess.run(
        [
            sys.executable,
            "train_net.py",
            "--config-file",
            CONFIG,
            "--resume",
            *KILL_RUN,
            "OUTPUT_DIR",
            str(out),
        ],
        cwd=REPO_ROOT,
        env=worker_env(datasets_root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, _tail(log, 6000)
    assert (
        f"Loading from {out / tagged}" in log
        and f"Starting training from iteration {resumed_from + 1}" in log
    )
    next_name = f"model_{resumed_from + 3:07d}.pth"
    following = torch.load(out / next_name, map_location="cpu", weights_only=False)
    assert following["iteration"] == resumed_from + 3
    assert following["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == resumed_from + 4
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 11 and final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 12
    assert len(final["trainer"]["_trainer"]["optimizer"]["state"]) == len(saved_optimizer["state"])
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    losses = [m for m in metrics if "total_loss" in m]
    assert losses and losses[-1]["iteration"] == 11 and math.isfinite(losses[-1]["total_loss"])
    assert min(m["iteration"] for m in losses) > resumed_from
    assert any("bbox/AP50" in m for m in metrics), "the final evaluation wrote no metrics"
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


# --------------------------------------------------------------------------------------------------
# Two CPU workers (GLOO) against one process with the same total batch; one worker raising
# --------------------------------------------------------------------------------------------------

# The runs' settings (CURVE_RUN: why both give the same curve), tolerances and data
# (fixed_size_dataset): tests/launch_helpers.py, shared with tests/test_launch_modes.py.
fixed_size_dataset = launch_helpers.fixed_size_dataset  # the fixture


def _instrumented_run(out_dir, datasets, opts, num_gpus=1, timeout=600, **env):
    record = out_dir / "record.jsonl"
    args = [
        sys.executable,
        INSTRUMENTED,
        "--config-file",
        CONFIG,
        "--num-gpus",
        str(num_gpus),
        "--dist-url",
        dist_url(),
    ]
    started = time.time()
    proc = subprocess.run(
        args + opts + ["OUTPUT_DIR", str(out_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=worker_env(
            out_dir, RELIABILITY_DATASETS=datasets, RELIABILITY_RECORD=str(record), **env
        ),
    )
    return proc, (read_records(record) if record.exists() else []), time.time() - started


@pytest.mark.slow
def test_two_cpu_workers_give_the_loss_curve_of_one_process(tmp_path, fixed_size_dataset):
    one, one_curve, _ = _instrumented_run(
        tmp_path / "one",
        fixed_size_dataset,
        ONE_PROCESS_CURVE_RUN,
    )
    assert one.returncode == 0, _tail(one.stdout + one.stderr)
    two, two_curve, _ = _instrumented_run(
        tmp_path / "two",
        fixed_size_dataset,
        TWO_WORKER_CURVE_RUN,
        num_gpus=2,
    )
    assert two.returncode == 0, _tail(two.stdout + two.stderr)
    assert "World size: 2" in two.stdout + two.stderr
    assert (
        [r["iteration"] for r in one_curve]
        == [r["iteration"] for r in two_curve]
        == CURVE_ITERATIONS
    )
    differences = relative_loss_differences(one_curve, two_curve)
    print("relative loss differences, 2 workers vs 1 process:", ["%.2e" % d for d in differences])
    assert max(differences[:EARLY_ITERATIONS]) <= EARLY_RTOL, differences
    assert max(differences) <= LATE_RTOL, differences


@pytest.mark.slow
def test_one_worker_raising_stops_the_whole_job_with_its_error(tmp_path, fixed_size_dataset):
    proc, curve, seconds = _instrumented_run(
        tmp_path / "fault",
        fixed_size_dataset,
        CURVE_RUN,
        num_gpus=2,
        timeout=240,
        RELIABILITY_FAULT="1:3",
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, _tail(log)
    assert "Process 1 terminated with the following error" in log, _tail(log)
    assert "RuntimeError: injected fault on rank 1 before iteration 3" in log, _tail(log)
    assert [r["iteration"] for r in curve] == [
        0,
        1,
        2,
    ]  # rank 0 trained until rank 1 failed, then was stopped
    print(f"the failed 2-worker job ended after {seconds:.1f} s")


# --------------------------------------------------------------------------------------------------
# Soak: 200 iterations on hostile boxes
# --------------------------------------------------------------------------------------------------

SOAK_ITERATIONS = 200
RSS_GROWTH_LIMIT_MIB = (
    300  # generous: a leak of one batch's images per iteration would pass it within ~30 iterations
)


def _write_hostile_dataset(root, num_images=40, seed=0):
    """COCO json + PNGs, 64-160 px a side: a quarter of the images empty, two with 150 tiny objects,
    the others with tiny (1-4 px), huge (>= 90% of the image), thin (1:16 to 1:160) and ordinary
    boxes, some partly outside."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    os.makedirs(root / "images")
    for index in range(num_images):
        h, w = (int(v) for v in rng.integers(64, 161, size=2))
        image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        if index % 4 == 0:
            boxes = []
        elif index in (1, 2):
            boxes = [
                (rng.uniform(0, w - 4), rng.uniform(0, h - 4), rng.uniform(1, 4), rng.uniform(1, 4))
                for _ in range(150)
            ]
        else:
            boxes = []
            for _ in range(int(rng.integers(1, 9))):
                kind = rng.integers(5)
                if kind == 0:  # tiny
                    bw, bh = rng.uniform(1, 4, size=2)
                elif kind == 1:  # huge
                    bw, bh = rng.uniform(0.9, 1.0) * w, rng.uniform(0.9, 1.0) * h
                elif kind == 2:  # long and thin, either way
                    bw, bh = rng.uniform(0.5, 1.0) * w, rng.uniform(1, 4)
                    bw, bh = (bw, bh) if rng.uniform() < 0.5 else (bh, min(bw, h))
                else:
                    bw, bh = rng.uniform(8, 48, size=2)
                x, y = rng.uniform(0, max(w - bw, 1)), rng.uniform(0, max(h - bh, 1))
                if rng.uniform() < 0.1:  # partly outside: clipped by the loader
                    x, y = x - bw / 2, y + bh / 2
                boxes.append((x, y, bw, bh))
        for x, y, bw, bh in boxes:
            color = [int(c) for c in rng.integers(100, 256, size=3)]
            x0, y0 = int(max(x, 0)), int(max(y, 0))
            cv2.rectangle(
                image,
                (x0, y0),
                (int(min(x + bw, w)) - 1, int(min(y + bh, h)) - 1),
                color,
                thickness=-1,
            )
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [float(x), float(y), float(bw), float(bh)],
                    "area": float(bw * bh),
                    "iscrowd": 0,
                }
            )
        cv2.imwrite(str(root / "images" / f"{index:04d}.png"), image)
        images.append({"id": index + 1, "file_name": f"{index:04d}.png", "height": h, "width": w})
    categories = [{"id": i, "name": f"class{i}"} for i in (1, 2, 3)]
    with open(root / "train.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json.dumps([["hostile_train", str(root / "train.json"), str(root / "images")]])


@pytest.mark.slow
def test_soak_on_hostile_boxes_stays_finite_with_stable_memory(tmp_path):
    datasets = _write_hostile_dataset(tmp_path / "hostile")
    opts = [
        "DATASETS.TRAIN",
        '("hostile_train",)',
        "DATASETS.TEST",
        "()",
        "MODEL.RETINANET.NUM_CLASSES",
        "3",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.BASE_LR",
        "0.01",
        "SOLVER.MAX_ITER",
        str(SOAK_ITERATIONS),
        "SOLVER.WARMUP_ITERS",
        "20",
        "SOLVER.STEPS",
        "(150,)",
        "SOLVER.CHECKPOINT_PERIOD",
        "100000",
        "INPUT.MIN_SIZE_TRAIN",
        "(96, 128)",
        "INPUT.MAX_SIZE_TRAIN",
        "192",
        "DATALOADER.NUM_WORKERS",
        "0",
    ]
    proc, records, seconds = _instrumented_run(tmp_path / "soak", datasets, opts)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, _tail(log)
    assert "boxes partly outside their image were clipped" in log
    assert [r["iteration"] for r in records] == list(range(SOAK_ITERATIONS))
    for r in records:
        assert all(math.isfinite(r[k]) for k in ("loss_cls", "loss_box_reg", "total_loss")), r
    rss = [r["rss_mib"] for r in records]
    growth = rss[-1] - rss[20]
    print(
        f"soak: {seconds:.1f} s; RSS {rss[0]:.0f} MiB at iteration 0, {rss[20]:.0f} at 20, "
        f"{rss[-1]:.0f} at "
        f"{SOAK_ITERATIONS - 1} (max {max(rss):.0f}); growth after warm-up {growth:+.1f} MiB"
    )
    assert growth < RSS_GROWTH_LIMIT_MIB
