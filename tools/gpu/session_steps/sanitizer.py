"""Step 5 of the GPU session: ``compute-sanitizer`` memcheck and racecheck over ``sanitize_ops.py``
(every op, dtype, reduction, layout and normaliser; each result also checked against the fp64
reference). Both tools' reports go to ``sanitizer.txt``; a dry run runs the driver on the CPU."""

import os
import re

from . import TOOLS, gpu_check, process, read_json

SANITIZER_LOG_LIMIT = 400_000  # bytes of each tool's report kept in sanitizer.txt
MEMCHECK_SUMMARY = r"ERROR SUMMARY: (\d+) error"
RACECHECK_SUMMARY = (
    r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, "
    r"(\d+) warnings?\)"
)
SOURCE_IN_REPORT = r" in (\S+?\.(?:cu|cuh|h|hpp|cpp)):\d+"


def driver_args(tool):
    return ["--subset", "reduced", "--sweeps", "1"] if tool == "racecheck" else ["--sweeps", "2"]


def dry_run_check(session, record, deadline, tool, report_path):
    """The driver on the CPU, with the same cases."""
    command = session.python_command(
        "tools/gpu/sanitize_ops.py", "--device", "cpu", *driver_args(tool), "--json", report_path
    )
    result = session.run(command, session.time_left(deadline))
    report = read_json(report_path) or {}
    ok = result["rc"] == 0 and report.get("ok") is True
    gpu_check(
        record,
        ok,
        "the driver on the CPU",
        error=None if report else process.error_text(result, "sanitize_ops.py"),
        ops=report.get("ops"),
        failures=(report.get("failures") or [])[:10],
    )


def keep_log(session, tool, log_path, returncode):
    """Appends the tool's report (its start and end when long) to sanitizer.txt; returns its
    text."""
    text = ""
    if os.path.exists(log_path):
        with open(log_path, errors="replace") as f:
            text = f.read()
    half = SANITIZER_LOG_LIMIT // 2
    with open(os.path.join(session.out, "sanitizer.txt"), "a") as f:
        f.write(f"===== compute-sanitizer --tool {tool} (exit {returncode})\n")
        f.write(
            text if len(text) <= SANITIZER_LOG_LIMIT else text[:half] + "\n[...]\n" + text[-half:]
        )
        f.write("\n")
    return text


def report_figures(text, report):
    """The driver's figures and the counts in the sanitizer's summary lines."""
    figures = {
        "driver": {k: report.get(k) for k in ("cases_per_op", "ops", "coverage", "seconds")},
        "driver_failures": (report.get("failures") or [])[:20],
    }
    memcheck = re.search(MEMCHECK_SUMMARY, text)
    racecheck = re.search(RACECHECK_SUMMARY, text)
    if memcheck:
        figures["sanitizer_errors"] = int(memcheck.group(1))
    if racecheck:
        figures.update(
            hazards=int(racecheck.group(1)),
            sanitizer_errors=int(racecheck.group(2)),
            race_warnings=int(racecheck.group(3)),
        )
    # the source files named in the reports: the plugin's kernels (csrc/) or someone else's
    figures["sources_in_reports"] = sorted(set(re.findall(SOURCE_IN_REPORT, text)))[:20]
    return figures


def sanitizer(session, record, deadline, tool):
    report_path = os.path.join(session.work, f"{tool}.json")
    if session.dry:
        dry_run_check(session, record, deadline, tool, report_path)
        return
    executable = session.facts.get("compute_sanitizer")
    if not executable:
        record.update(status="skipped", note="compute-sanitizer not found on this machine")
        return
    log_path = os.path.join(session.work, f"{tool}.log")
    command = [
        executable,
        "--tool",
        tool,
        "--error-exitcode",
        "99",
        "--print-limit",
        "50",
        "--log-file",
        log_path,
        session.python,
        os.path.join(TOOLS, "sanitize_ops.py"),
        "--device",
        "cuda",
        *driver_args(tool),
        "--json",
        report_path,
    ]
    # Without the caching allocator every tensor is its own allocation, so memcheck sees
    # out-of-bounds accesses that would otherwise land inside another cached block.
    env = session.step_env({"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
    result = session.run(command, session.time_left(deadline), env=env)
    text = keep_log(session, tool, log_path, result["rc"])
    report = read_json(report_path) or {}
    figures = record["figures"] = report_figures(text, report)
    unsupported = re.search(r"Device not supported|device is not supported", text)
    if unsupported:
        record.update(
            status="skipped",
            note=f"compute-sanitizer cannot run here: {unsupported.group(0)}",
            error=process.error_text(result, "compute-sanitizer"),
        )
        return
    ok = result["rc"] == 0 and report.get("ok") is True and figures.get("sanitizer_errors") == 0
    record["status"] = process.result_status(result, ok)
    if not ok:
        record["error"] = (
            f"sanitizer errors {figures.get('sanitizer_errors')}, driver ok "
            f"{report.get('ok')}, exit {result['rc']} (see sanitizer.txt); "
            + "; ".join(figures["driver_failures"][:3])
        )


def sanitizer_memcheck(session, record, deadline):
    sanitizer(session, record, deadline, "memcheck")


def sanitizer_racecheck(session, record, deadline):
    sanitizer(session, record, deadline, "racecheck")
