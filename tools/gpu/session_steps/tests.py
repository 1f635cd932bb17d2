"""Step 4 of the GPU session: the op tests selected by ``-k "cuda or emulat"`` and the ``-m cuda``
training-step tests, with pytest (a dry run only collects the same selection)."""

import glob
import os
import re
import xml.etree.ElementTree as ET

from . import REPO_ROOT, gpu_check, process

OP_TEST_PATTERNS = ("test_*focal*op*.py", "test_*dense*.py", "test_*emulat*.py", "test_*cuda*.py")
OP_TEST_KEYWORDS = "cuda or emulat"
TRAIN_STEP_TESTS = ("test_anchor_labeling.py", "test_mixed_precision.py")
PYTEST = ("-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "--durations=5")


def op_test_files():
    files = set()
    for pattern in OP_TEST_PATTERNS:
        files.update(glob.glob(os.path.join(REPO_ROOT, "tests", pattern)))
    return sorted(files)


def junit_counts(path):
    """tests, failures, errors, skipped and the failed tests' names (40 at most) of a JUnit XML
    file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["failed_tests"] = failed[:40]
    return counts


def collect_only(session, record, deadline, command):
    """Dry run: pytest's collection of the selection must find tests."""
    result = session.run(
        command + ["--collect-only"], session.time_left(deadline), cwd=session.plugin_root
    )
    text = "\n".join(result["tail"])
    match = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
    selected = int(match.group(1)) if match else 0
    ok = result["rc"] == 0 and selected > 0
    gpu_check(
        record,
        ok,
        "pytest --collect-only of the selection",
        error=process.error_text(result, "pytest --collect-only"),
        selected=selected,
    )


def pytest_step(session, record, deadline, selection, files, name):
    command = [session.python, *PYTEST] + selection + files
    record["figures"] = {
        "files": [os.path.relpath(f, REPO_ROOT) for f in files],
        "selection": " ".join(selection),
    }
    if not files:
        record.update(status="failed", error="no test files matched")
        return
    if session.dry:
        collect_only(session, record, deadline, command)
        return
    junit = os.path.join(session.work, f"{name}.xml")
    result = session.run(
        command + [f"--junitxml={junit}"], session.time_left(deadline), cwd=session.plugin_root
    )
    if not os.path.exists(junit):
        record.update(
            status=process.result_status(result, False), error=process.error_text(result, "pytest")
        )
        return
    counts = junit_counts(junit)
    record["figures"].update(counts)
    ran = counts["tests"] - counts["skipped"]
    # On a GPU the selection is the CUDA tests: most of it skipped means the GPU was not used.
    ok = (
        result["rc"] == 0
        and counts["failures"] == 0
        and counts["errors"] == 0
        and ran > 0
        and ran >= counts["skipped"]
    )
    record["status"] = process.result_status(result, ok)
    if not ok:
        record["error"] = (
            f"{counts['failures']} failed, {counts['errors']} errors, {ran} ran, "
            f"{counts['skipped']} skipped: {counts['failed_tests'][:10]}"
        )


def cuda_tests(session, record, deadline):
    pytest_step(session, record, deadline, ["-k", OP_TEST_KEYWORDS], op_test_files(), "cuda_tests")


def train_step_checks(session, record, deadline):
    files = [
        os.path.join(REPO_ROOT, "tests", f)
        for f in TRAIN_STEP_TESTS
        if os.path.exists(os.path.join(REPO_ROOT, "tests", f))
    ]
    pytest_step(session, record, deadline, ["-m", "cuda"], files, "train_step_checks")
