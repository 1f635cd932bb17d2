"""Smoke test of ``benchmarks/bench_retinanet.py``: a tiny CPU run of all three models, then the
structure of its JSON, the ratios (exactly peer median / plugin median), identical weights and
first-step losses for the plugin and Detectron2, and the written table and chart. No timing is
asserted. The script runs as a file (through ``benchmarks/bootstrap.py``); its parts are imported
from the ``benchmarks`` package."""

import json
import os
import subprocess
import sys

import pytest
import torch

import sane_random_weights  # noqa: F401  (makes the benchmarks package importable)
from benchmarks import bench_retinanet, retinanet_report
from benchmarks.harness import inputs, timing

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")
MODELS = ("plugin", "detectron2", "torchvision")
REPS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run: 64x96 images, R18, batch 1, 2 measured steps after 1 warm-up, one round (rounds are
    pooled by ``timing.pool_rounds``, tested below), 1 thread (a shared machine)."""
    output = tmp_path_factory.mktemp("bench_retinanet")
    command = [
        sys.executable,
        os.path.join(BENCHMARKS, "bench_retinanet.py"),
        "--device",
        "cpu",
        "--sizes",
        "64x96",
        "--batch",
        "1",
        "--reps",
        str(REPS),
        "--rounds",
        "1",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--depth",
        "18",
        "--models",
        ",".join(MODELS),
        "--output",
        str(output),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    with open(output / "retinanet_cpu.json") as f:
        report = json.load(f)
    return report, output, result.stdout


@pytest.mark.slow
def test_report_structure_and_ratios(run):
    report, _, _ = run
    info = report["info"]
    for key in (
        "cpu",
        "logical_cpus",
        "torch",
        "torchvision",
        "detectron2",
        "device_name",
        "date_utc",
    ):
        assert info[key], key
    assert info["device"] == "cpu" and info["torch_threads"] == 1
    assert report["settings"]["models"] == list(MODELS)
    assert [c["kind"] for c in report["cases"]] == ["train", "inference"]
    for case in report["cases"]:
        assert case["size"] == [64, 96] and case["reps"] == REPS
        assert set(case["results"]) == set(MODELS)
        for model, result in case["results"].items():
            assert "error" not in result, (model, result)
            assert len(result["times_s"]) == len(result["cpu_times_s"]) == REPS
            assert all(t > 0 for t in result["times_s"] + result["cpu_times_s"])
            assert (
                result["min_s"]
                <= result["q1_s"]
                <= result["median_s"]
                <= result["q3_s"]
                <= result["max_s"]
            )
            # CPU: the peak of the memory child, and the timing child's own (default allocator)
            # beside it.
            for key in ("peak_increase_bytes", "default_malloc_peak_increase_bytes"):
                assert isinstance(result[key], int) and result[key] > 0, key
            assert result["threads"] == 1
        # Ratios are peer / plugin, from the reported medians and peaks, for every peer.
        plugin = case["results"]["plugin"]
        assert set(case["ratios"]) == {"detectron2", "torchvision"}
        for peer, ratio in case["ratios"].items():
            peer_result = case["results"][peer]
            assert ratio["time"] == pytest.approx(
                peer_result["median_s"] / plugin["median_s"], rel=1e-12
            )
            assert ratio["peak_memory_increase"] == pytest.approx(
                peer_result["peak_increase_bytes"] / plugin["peak_increase_bytes"], rel=1e-12
            )
            assert ratio["cpu_time"] == pytest.approx(
                peer_result["cpu_median_s"] / plugin["cpu_median_s"], rel=1e-12
            )
    inference = report["cases"][1]
    for result in inference["results"].values():
        assert result["median_s_per_image"] == pytest.approx(result["median_s"])  # batch 1


@pytest.mark.slow
def test_plugin_and_detectron2_compute_the_same_thing(run):
    report, _, _ = run
    train, inference = report["cases"]
    plugin, detectron2, torchvision = (train["results"][m] for m in MODELS)
    assert (
        plugin["weights_fingerprint"]
        == detectron2["weights_fingerprint"]
        != torchvision["weights_fingerprint"]
    )
    assert set(plugin["first_losses"]) == {"loss_cls", "loss_box_reg"}
    for key, value in detectron2["first_losses"].items():
        assert plugin["first_losses"][key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    assert all(r["finite"] for r in train["results"].values())
    # Calibrated random weights give every model detections to post-process.
    counts = {m: inference["results"][m]["detections_per_image"] for m in MODELS}
    assert counts["plugin"] == counts["detectron2"]
    assert all(len(c) == 1 and c[0] > 0 for c in counts.values()), counts
    assert report["notes"][0].startswith("plugin and detectron2: identical weights")


@pytest.mark.slow
def test_table_markdown_and_chart_written(run):
    report, output, stdout = run
    for column in ("time peer/plugin", "CPU-time peer/plugin", "mem peer/plugin"):
        assert column in stdout
    markdown = (output / "retinanet_cpu.md").read_text()
    assert (
        markdown.count("| train 64x96 b1 fp32 |") == 3
        and markdown.count("| inference 64x96 b1 fp32 |") == 3
    )
    assert (output / "retinanet_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [
        p for p in os.listdir(output) if p.startswith(".tmp")
    ]  # atomic writes left nothing behind


@pytest.mark.slow
def test_outputs_can_be_rewritten_from_the_json(run):
    _, output, _ = run
    markdown = (output / "retinanet_cpu.md").read_text()
    (output / "retinanet_cpu.md").unlink()
    (output / "retinanet_cpu.png").unlink()
    bench_retinanet.main(["--from-json", str(output / "retinanet_cpu.json")])
    assert (output / "retinanet_cpu.md").read_text() == markdown
    assert (output / "retinanet_cpu.png").exists()


def test_inputs_are_deterministic_and_valid():
    first = inputs.make_samples(96, 128, 2, 50)
    second = inputs.make_samples(96, 128, 2, 50)
    for (image_a, boxes_a, classes_a), (image_b, boxes_b, classes_b) in zip(first, second):
        assert (
            torch.equal(image_a, image_b)
            and torch.equal(boxes_a, boxes_b)
            and torch.equal(classes_a, classes_b)
        )
        assert image_a.shape == (3, 96, 128) and 0 <= image_a.min() and image_a.max() <= 255
        assert boxes_a.shape == (50, 4)
        widths, heights = boxes_a[:, 2] - boxes_a[:, 0], boxes_a[:, 3] - boxes_a[:, 1]
        assert (widths >= 2 - 1e-4).all() and (heights >= 2 - 1e-4).all()
        assert (
            (boxes_a[:, :2] >= 0).all()
            and (boxes_a[:, 2] <= 128).all()
            and (boxes_a[:, 3] <= 96).all()
        )
        assert ((0 <= classes_a) & (classes_a < inputs.NUM_CLASSES)).all()
    assert not torch.equal(first[0][1], first[1][1])  # two images, two sets of boxes


def test_ratios_skip_failed_models():
    case = {
        "results": {
            "plugin": {"median_s": 2.0, "peak_increase_bytes": 100},
            "detectron2": {"median_s": 3.0, "peak_increase_bytes": 150},
            "torchvision": {"error": "child process exited with code -9 (SIGKILL: out of memory?)"},
        }
    }
    retinanet_report.add_ratios(case)
    assert case["ratios"] == {"detectron2": {"time": 1.5, "peak_memory_increase": 1.5}}
    case["results"]["plugin"] = {"error": "CUDA out of memory"}
    retinanet_report.add_ratios(case)
    assert case["ratios"] == {}


def test_rounds_pool_their_repetitions():
    case = {"kind": "inference", "batch": 2}
    rounds = [
        {
            "times_s": [4.0, 6.0],
            "median_s": 5.0,
            "cpu_times_s": [1.0, 1.0],
            "detections_per_image": [7, 9],
        },
        {
            "times_s": [2.0, 8.0],
            "median_s": 5.0,
            "cpu_times_s": [3.0, 3.0],
            "detections_per_image": [7, 9],
        },
    ]
    merged = timing.pool_rounds(rounds, case)
    assert merged["cpu_times_s"] == [1.0, 1.0, 3.0, 3.0] and merged["cpu_median_s"] == 2.0
    assert merged["times_s"] == [4.0, 6.0, 2.0, 8.0] and merged["round_medians_s"] == [5.0, 5.0]
    assert (
        merged["min_s"],
        merged["q1_s"],
        merged["median_s"],
        merged["q3_s"],
        merged["max_s"],
    ) == (2.0, 3.5, 5.0, 6.5, 8.0)
    assert merged["median_s_per_image"] == 2.5 and merged["detections_per_image"] == [7, 9]
    failed = {"error": "child process exited with code 1"}
    assert timing.pool_rounds([rounds[0], failed], case) is failed


def test_bad_arguments_are_named(capsys):
    with pytest.raises(SystemExit):
        bench_retinanet.parse_args(["--device", "cpu", "--sizes", "800by1333"])
    assert "'800by1333' is not HEIGHTxWIDTH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_retinanet.parse_args(["--device", "cpu", "--models", "plugin,yolo"])
    assert "unknown ['yolo']" in capsys.readouterr().err
    args = bench_retinanet.parse_args(["--device", "cpu", "--models", "torchvision,plugin"])
    assert (
        args.models == ["plugin", "torchvision"]
        and args.sizes == [(384, 640)]
        and args.batch == [2]
    )
    stress = bench_retinanet.parse_args(["--device", "cpu", "--stress"])
    assert stress.sizes == [(800, 1333)] and stress.batch == [1] and stress.boxes == 500
    assert [c["kind"] for c in bench_retinanet.build_cases(stress)] == ["train"]
