"""The session's ``summary.json``: its start, writing it (atomically, after every step), the overall
status and the closing table."""

import collections
import datetime
import json
import os
import subprocess

from . import REPO_ROOT


def git_head():
    """The checkout's short commit, "+changes" when tracked files changed; None outside a
    checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def start(dry, budget, python):
    """The summary before the first step."""
    return {
        "mode": "dry-run" if dry else "gpu",
        "status": "running",
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": budget,
        "repo": REPO_ROOT,
        "git_head": git_head(),
        "python": python,
        "steps": collections.OrderedDict(),
    }


def write(summary, out, wall_s):
    """``out/summary.json``, with the wall time so far and the files under ``out``."""
    summary["wall_s"] = round(wall_s, 1)
    files = sorted(os.listdir(out))
    summary["files"] = files + ([] if "summary.json" in files else ["summary.json"])
    path = os.path.join(out, "summary.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def overall_status(steps, dry):
    """(status, failed steps): failed when a step or a dry-run check failed or timed out; ok when
    all steps are ok (in a dry run: when none failed); else incomplete (steps skipped for time or
    a missing tool)."""
    statuses = {name: s["status"] for name, s in steps.items()}
    bad = [n for n, s in statuses.items() if s in ("failed", "timeout")]
    bad += [n for n, s in steps.items() if s.get("dry_run_check", {}).get("status") == "failed"]
    if bad:
        status = "failed"
    elif dry or all(s == "ok" for s in statuses.values()):
        status = "ok"
    else:
        status = "incomplete"
    return status, sorted(set(bad))


def step_lines(steps):
    """The closing table: one line per step."""
    for name, step in steps.items():
        extra = step.get("dry_run_check", {}).get("status")
        yield (
            f"  {name:<22} {step['status']:<9}"
            + (f" dry-run check {extra}" if extra else "")
            + (f"  {step.get('seconds', 0):6.1f} s" if "seconds" in step else "")
        )
