"""The GPU session's dry run (``tools/gpu_session.sh --dry-run``) on this machine, and the session's
own logic.

The dry run is run once (into a temporary folder) and its ``summary.json`` checked: every step
present, in order; the steps that need no GPU (environment, stack, build) done for real; every GPU
step skipped after a check of its own logic on the CPU that passed (pytest's collection of the CUDA
selection, the sanitizer driver, the quick benchmark, the parity and training drivers), with their
figures; at most 8 files written. Without a wheel folder (.whl/, ignored by git: CI has none) the
stack step must say it was skipped and why. No timing is asserted.

The other tests show that the checks can fail: the sanitizer driver's value check catches a wrong
loss, the summary turns "failed" when a step or a dry-run check fails, and the JUnit and
wheel-inventory parsers count what they read. The driver (``tools/gpu/session.py``) and its steps
(``tools/gpu/session_steps/``) are imported from ``tools/gpu``, the folder a script there runs from.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

GPU_TOOLS = os.path.join(REPO_ROOT, "tools", "gpu")
STEPS = [
    "environment",
    "stack",
    "build",
    "cuda_tests",
    "train_step_checks",
    "sanitizer_memcheck",
    "sanitizer_racecheck",
    "bench_focal_loss",
    "bench_retinanet",
    "parity",
    "train_synthetic",
]
GPU_STEPS = STEPS[3:]


@pytest.fixture(scope="module")
def gpu_tools():
    sys.path.insert(0, GPU_TOOLS)
    try:
        import sanitize_ops
        import session
        import session_steps.environment
        import session_steps.tests  # noqa: F401  (the parsers some tests call)
    finally:
        sys.path.remove(GPU_TOOLS)
    return session, sanitize_ops


@pytest.fixture(scope="module")
def session_steps(gpu_tools):
    """The step modules (imported with the driver)."""
    return sys.modules["session_steps"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_session")
    env = dict(os.environ, GPU_SESSION_PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [
            "bash",
            os.path.join(REPO_ROOT, "tools", "gpu_session.sh"),
            "--dry-run",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500 + 120,  # the dry run's own budget (DRY_RUN_BUDGET_S), and time to end it
        cwd=REPO_ROOT,
    )
    summary_path = out / "summary.json"
    assert summary_path.exists(), result.stdout[-4000:] + result.stderr[-4000:]
    with open(summary_path) as f:
        summary = json.load(f)
    return result, summary, out


@pytest.mark.slow
def test_dry_run_exits_0_with_every_step_in_order(dry_run):
    result, summary, _ = dry_run
    failed = {
        n: s.get("error") or s.get("dry_run_check", {}).get("error")
        for n, s in summary["steps"].items()
        if s["status"] in ("failed", "timeout")
        or s.get("dry_run_check", {}).get("status") == "failed"
    }
    assert result.returncode == 0, (failed, result.stdout[-3000:])
    assert summary["mode"] == "dry-run" and summary["status"] == "ok", failed
    assert list(summary["steps"]) == STEPS
    assert summary["failed_steps"] == []


@pytest.mark.slow
def test_steps_without_a_gpu_ran_and_gpu_steps_were_checked_on_the_cpu(dry_run):
    _, summary, _ = dry_run
    steps = summary["steps"]
    env = steps["environment"]
    assert env["status"] == "ok" and env["figures"]["torch"] and env["figures"]["python"]
    build = steps["build"]
    assert build["status"] == "ok", build
    assert build["figures"]["command"].endswith("setup.py build_ext --inplace")
    assert build["figures"]["env"]["FORCE_CUDA"] == "0" and build["figures"]["with_cuda"] is False
    assert build["figures"]["library"].startswith("_C") and build["figures"]["library_bytes"] > 0
    # the build happened in a copy of the sources, and later steps imported that copy
    assert not os.path.realpath(build["figures"]["file"]).startswith(
        os.path.realpath(REPO_ROOT) + os.sep
    )
    stack = steps["stack"]
    if os.path.isdir(os.path.join(REPO_ROOT, ".whl")):
        assert stack["status"] == "ok", stack
        assert (
            stack["figures"]["inventory"]["missing"] == []
            and stack["figures"]["inventory"]["several_versions"] == []
        )
    else:
        assert (
            stack["status"] == "skipped"
            and ".whl" in stack["note"]
            and "not checked" in stack["note"]
        )
    for name in GPU_STEPS:
        step = steps[name]
        assert (
            step["needs_gpu"] is True
            and step["status"] == "skipped"
            and step["note"] == "needs a GPU"
        ), (name, step)
        assert step["dry_run_check"]["status"] == "ok", (name, step["dry_run_check"])
    for name in STEPS[:3]:
        assert steps[name]["needs_gpu"] is False


@pytest.mark.slow
def test_dry_run_checks_carry_their_figures(dry_run):
    _, summary, out = dry_run
    steps = summary["steps"]
    assert steps["cuda_tests"]["dry_run_check"]["selected"] > 10
    assert "cuda or emulat" in steps["cuda_tests"]["figures"]["selection"]
    assert "tests/test_focal_loss_op.py" in steps["cuda_tests"]["figures"]["files"]
    # the sync-debug and the fp16 AMP test
    assert steps["train_step_checks"]["dry_run_check"]["selected"] >= 2
    for name in ("sanitizer_memcheck", "sanitizer_racecheck"):
        ops = steps[name]["dry_run_check"]["ops"]
        assert {"sigmoid_focal_loss", "quality_focal_loss"} <= set(ops), ops
        assert all(v["failed"] == 0 and v["passed"] > 0 for v in ops.values()), ops
    bench = steps["bench_focal_loss"]["figures"]
    assert bench["cases"] and all(
        c["op_ms"] > 0 and c["fvcore_over_op"] > 0 for c in bench["cases"]
    )
    with open(out / bench["file"]) as f:
        report = json.load(f)
    assert report["info"]["device"] == "cpu" and len(report["results"]) == len(bench["cases"])
    parity = steps["parity"]["dry_run_check"]["figures"]["results"]["R18/op"]
    assert parity["detections"]["ok"] and parity["detections"]["compared"] > 0
    assert parity["training"]["ok"] and parity["training"]["steps"][0]["max_loss_diff"] <= 1e-4
    runs = steps["train_synthetic"]["dry_run_check"]["figures"]["runs"]
    assert (
        runs["fp32"]["all_losses_finite"]
        and runs["fp32"]["loss_cls"]["logged"] == runs["fp32"]["iterations"]
    )
    assert runs["fp32"]["bbox"] is not None and runs["amp"]["amp_precision"] == "torch.bfloat16"


@pytest.mark.slow
def test_at_most_8_files_and_a_log_of_every_step(dry_run):
    _, summary, out = dry_run
    files = sorted(os.listdir(out))
    assert len(files) <= 8 and {"log.txt", "summary.json"} <= set(files), files
    assert summary["files"] == files
    log = (out / "log.txt").read_text()
    for name in STEPS:
        assert f"==== {name}" in log, name


def test_sanitizer_driver_catches_a_wrong_loss(gpu_tools):
    _, sanitize_ops = gpu_tools
    from retinanet_plugin import layers

    call, reference = sanitize_ops.ops()["sigmoid_focal_loss"]
    cases = [c for c in sanitize_ops.case_list("all", 1) if c["N"] == 37 and c["K"] == 80]
    assert len(cases) == 3
    for case in cases:
        assert sanitize_ops.run_case("sigmoid_focal_loss", call, reference, case, "cpu")["ok"], case

        def wrong_alpha(x, labels, q, t, reduction, norm):
            return layers.sigmoid_focal_loss(x, labels, 2.0, 0.3, reduction, norm)

        result = sanitize_ops.run_case("sigmoid_focal_loss", wrong_alpha, reference, case, "cpu")
        assert not result["ok"] and "mismatch" in result["error"], case
    if hasattr(layers, "sigmoid_focal_loss_dense"):
        call, reference = sanitize_ops.ops()["sigmoid_focal_loss_dense"]

        def wrong_gamma(x, labels, q, t, reduction, norm):
            return layers.sigmoid_focal_loss_dense(x, t, 0.25, 2.1, reduction, norm)

        for case in cases:
            assert sanitize_ops.run_case("dense", call, reference, case, "cpu")["ok"], case
            assert not sanitize_ops.run_case("dense", wrong_gamma, reference, case, "cpu")["ok"], (
                case
            )


def test_cases_cover_every_value_of_every_factor(gpu_tools):
    _, sanitize_ops = gpu_tools
    cases = sanitize_ops.case_list("all", 2)
    for key, values in (
        ("N", sanitize_ops.NS),
        ("K", sanitize_ops.KS),
        ("reduction", sanitize_ops.REDUCTIONS),
        ("dtype", sanitize_ops.DTYPES),
        ("label_dtype", sanitize_ops.LABEL_DTYPES),
        ("layout", sanitize_ops.LAYOUTS),
        ("normalizer", sanitize_ops.NORMALIZERS),
    ):
        assert {c[key] for c in cases} == set(values), key
    reduced = sanitize_ops.case_list("reduced", 1)
    assert reduced and all(c["reduction"] != "none" and c["N"] >= 37 for c in reduced)
    import torch  # each layout really has the strides it is named for

    values = torch.randn(5, 3)
    strides = {
        layout: sanitize_ops.on_device(values, layout, "cpu") for layout in sanitize_ops.LAYOUTS
    }
    for view in strides.values():
        assert torch.equal(view, values)
    assert strides["column_major"].stride() == (1, 5) and strides["t_view_padded"].stride() == (
        1,
        8,
    )
    assert strides["row_padded"].stride() == (6, 1) and strides["offset"].storage_offset() == 1


def test_summary_fails_when_a_step_or_a_dry_run_check_fails(gpu_tools, tmp_path):
    session_module, _ = gpu_tools
    session = session_module.Session(
        session_module.parse_args(["--dry-run", "--out", str(tmp_path)])
    )
    session.summary["steps"]["environment"] = {"status": "ok", "needs_gpu": False}
    session.summary["steps"]["parity"] = {
        "status": "skipped",
        "needs_gpu": True,
        "dry_run_check": {"status": "ok"},
    }
    assert session.finish() == 0 and session.summary["status"] == "ok"
    session.summary["steps"]["parity"]["dry_run_check"]["status"] = "failed"
    assert session.finish() == 1 and session.summary["failed_steps"] == ["parity"]
    gpu = session_module.Session(session_module.parse_args(["--out", str(tmp_path / "gpu")]))
    gpu.summary["steps"]["build"] = {"status": "ok", "needs_gpu": False}
    gpu.summary["steps"]["bench_retinanet"] = {
        "status": "skipped",
        "needs_gpu": True,
        "note": "only 10 s left",
    }
    assert gpu.finish() == 0 and gpu.summary["status"] == "incomplete"
    gpu.summary["steps"]["build"]["status"] = "timeout"
    assert gpu.finish() == 1 and gpu.summary["status"] == "failed"
    with open(tmp_path / "gpu" / "summary.json") as f:
        assert json.load(f)["failed_steps"] == ["build"]


def test_a_step_that_raises_is_recorded_and_the_session_goes_on(gpu_tools, tmp_path):
    session_module, _ = gpu_tools
    session = session_module.Session(
        session_module.parse_args(["--dry-run", "--out", str(tmp_path)])
    )

    def broken(record, deadline):
        raise RuntimeError("boom")

    def fine(record, deadline):
        record["status"] = "ok"

    session.step("first", broken, needs_gpu=False, min_s=1, cap_s=10)
    session.step("second", fine, needs_gpu=False, min_s=1, cap_s=10)
    # more than the budget: skipped, not run
    session.step("late", fine, needs_gpu=False, min_s=10**6, cap_s=10)
    steps = session.summary["steps"]
    assert steps["first"]["status"] == "failed" and "boom" in steps["first"]["error"]
    assert steps["second"]["status"] == "ok"
    assert steps["late"]["status"] == "skipped" and "left" in steps["late"]["note"]
    session.finish()


def test_junit_and_wheel_inventory_parsers(session_steps, tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad[cuda]"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_b" name="test_err"><error message="y"/></testcase>'
        '<testcase classname="tests.test_b" name="test_skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    counts = session_steps.tests.junit_counts(str(xml))
    assert (counts["tests"], counts["failures"], counts["errors"], counts["skipped"]) == (
        4,
        1,
        1,
        1,
    )
    assert counts["failed_tests"] == ["tests.test_a::test_bad[cuda]", "tests.test_b::test_err"]
    names = session_steps.environment.bundled_names()
    assert "sal-detectron2" in names and "pycocotools" in names and "fvcore" in names
    # present on the GPU machine: never bundled
    assert "torch" not in names and "numpy" not in names
