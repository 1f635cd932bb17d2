"""Child processes that report results line by line, so that each measurement runs in a fresh
process and a crash keeps the results reported before it.

A child prints ``RESULT_MARK`` + JSON ``{"case": index, "result": ...}`` per result (``emit``); any
other line it prints is passed through to the parent's output. ``run_child`` starts one and collects
its results.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
from typing import Dict, List, Optional, Sequence

RESULT_MARK = "@@RESULT "


def emit(index: int, result: Dict[str, object]) -> None:
    """In a child: report the result of case ``index``."""
    print(RESULT_MARK + json.dumps({"case": index, "result": result}), flush=True)


def exit_reason(returncode: int) -> str:
    reason = f"child process exited with code {returncode}"
    if returncode == -9:
        reason += " (SIGKILL: out of memory?)"
    return reason


class ChildRun:
    """What a child left: ``results`` (one per case, None where it reported none), ``returncode``
    and the end of its standard error (``stderr_tail``)."""

    def __init__(
        self, results: List[Optional[Dict[str, object]]], returncode: int, stderr_tail: str
    ):
        self.results, self.returncode, self.stderr_tail = results, returncode, stderr_tail

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_child(
    script: str,
    arguments: Sequence[str],
    cases: int,
    env: Optional[Dict[str, str]] = None,
    timeout: Optional[float] = None,
) -> ChildRun:
    """Runs ``python script *arguments`` (this interpreter, the environment plus ``env``) and
    collects the results of its ``cases`` cases; its other output is printed as it comes. After
    ``timeout`` seconds the child is killed (its exit code is then -9)."""
    results: List[Optional[Dict[str, object]]] = [None] * cases
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(script), *arguments],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=dict(os.environ, **(env or {})),
        )
        timer = threading.Timer(timeout, process.kill) if timeout else None
        if timer:
            timer.start()
        try:
            for line in process.stdout:
                if line.startswith(RESULT_MARK):
                    entry = json.loads(line[len(RESULT_MARK) :])
                    results[entry["case"]] = entry["result"]
                else:
                    print(line, end="", flush=True)
            returncode = process.wait()
        finally:
            if timer:
                timer.cancel()
        stderr.seek(0)
        tail = stderr.read()[-3000:]
    return ChildRun(results, returncode, tail)
