"""Step 7 of the GPU session: parity with Detectron2's RetinaNet on the GPU (``parity.py``: R50,
same weights, within 1e-4, TF32 off) and short training runs on the synthetic shapes
(``train_synthetic.py``); a dry run runs both drivers on the CPU (R18)."""

import os

from . import gpu_check, process, read_json

PARITY_GPU_ARGS = ("--device", "cuda", "--depths", "R50", "--impls", "op,reference")
PARITY_DRY_ARGS = ("--device", "cpu", "--depths", "R18", "--impls", "op")
TRAIN_DRY_ARGS = (
    "--device",
    "cpu",
    "--depth",
    "18",
    "--iters",
    "2",
    "--amp-iters",
    "1",
    "--num-train",
    "4",
    "--num-val",
    "1",
    "--workers",
    "0",
)


def driver_step(session, record, deadline, script, gpu_args, dry_args, what):
    """Runs a driver that writes a JSON report with ``ok`` and ``failures``; its figures are the
    report's."""
    report_path = os.path.join(session.work, os.path.basename(script).replace(".py", ".json"))
    args = dry_args if session.dry else gpu_args
    command = session.python_command(script, *args, "--json", report_path)
    result = session.run(command, session.time_left(deadline))
    report = read_json(report_path) or {}
    ok = result["rc"] == 0 and report.get("ok") is True
    figures = {k: v for k, v in report.items() if k not in ("ok",)}
    error = "; ".join(report.get("failures", [])) or process.error_text(result, script)
    if session.dry:
        gpu_check(record, ok, what, error=error, figures=figures)
        return
    record.update(status=process.result_status(result, ok), figures=figures)
    if not ok:
        record["error"] = error


def parity(session, record, deadline):
    driver_step(
        session,
        record,
        deadline,
        "tools/gpu/parity.py",
        PARITY_GPU_ARGS,
        PARITY_DRY_ARGS,
        "R18 on the CPU",
    )


def train_synthetic(session, record, deadline):
    work = ("--work", os.path.join(session.work, "train"))
    driver_step(
        session,
        record,
        deadline,
        "tools/gpu/train_synthetic.py",
        ("--device", "cuda") + work,
        TRAIN_DRY_ARGS + work,
        "R18, 2 + 1 iterations on the CPU",
    )
