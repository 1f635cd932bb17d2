"""The GPU session (issue 11): every GPU check of the project in one call of at most 8 minutes, or
its dry run. This module is the driver; the steps are in ``session_steps/``.

Run through ``tools/gpu_session.sh`` (see there and the README for the device tool call). Steps, in
order, each started only when the time left allows its minimum (else skipped with a note), each
stopped at its own time cap, each recorded in ``OUT/summary.json`` (rewritten after every step, so a
killed session still leaves one) with a status (ok / failed / timeout / skipped), its figures and,
on failure, the error; a failing step never stops the session:

 1. environment          GPU, driver, torch/CUDA versions, nvcc, compute-sanitizer (env_report.py)
 2. stack                the carried wheels (.whl/) installed --no-index --no-deps, then every
                         import the session needs (check_stack.py)
 3. build                retinanet_plugin._C built in place for this GPU only, no network;
                         cuobjdump must list its sm_XY code
 4. cuda_tests,          pytest -k "cuda or emulat" over the op tests; pytest -m cuda over
    train_step_checks    tests/test_anchor_labeling.py and tests/test_mixed_precision.py
 5. sanitizer_memcheck,  compute-sanitizer over tools/gpu/sanitize_ops.py
    sanitizer_racecheck
 6. bench_focal_loss,    benchmarks/bench_focal_loss.py --device cuda; a short
    bench_retinanet      benchmarks/bench_retinanet.py --device cuda (800x1333, batch 2, AMP)
 7. parity,              tools/gpu/parity.py (R50, same weights, within 1e-4);
    train_synthetic      tools/gpu/train_synthetic.py (50 iterations of R50, + 10 with AMP)

Each step's module in ``session_steps/`` says what it runs and checks.

``--dry-run`` (no GPU): steps 1-3 run for real (the wheel install for Python 3.12 into a temporary
target when .whl/ exists; the build in a temporary copy of the sources, CPU kernels only unless
``--dry-run-cuda-build``), and each GPU step is marked skipped after a check of its own logic on the
CPU (``dry_run_check``): pytest's collection of the same selection, the sanitizer driver, the
benchmark in its quick mode, the parity and training drivers on R18.

Files under OUT (8 at most): log.txt, summary.json, sanitizer.txt, and the benchmark results named
after the GPU: focal_loss_cuda_<gpu>.json, retinanet_cuda_<gpu>.json and .md (dry run:
focal_loss_cpu_dryrun.json).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback

from session_steps import (
    REPO_ROOT,
    benchmarks,
    build,
    drivers,
    environment,
    process,
    sanitizer,
    summary,
    tests,
)

DEFAULT_BUDGET_S = 480
# The dry run has no lease to fit in: its caps are DRY_RUN_CAP_FACTOR times the GPU run's (a shared
# 2-core machine can be several times slower than usual).
DRY_RUN_BUDGET_S = 1500
DRY_RUN_CAP_FACTOR = 4
RESERVE_S = 8  # kept back from every step for the summary
MAX_FILES = 8
PLAN = (
    # name, step function, needs a GPU, minimum s to start, cap s, steps it needs
    ("environment", environment.environment, False, 5, 60, ()),
    ("stack", environment.stack, False, 10, 90, ()),
    ("build", build.build, False, 40, 200, ()),
    ("cuda_tests", tests.cuda_tests, True, 30, 100, ("build",)),
    ("train_step_checks", tests.train_step_checks, True, 20, 45, ("build",)),
    ("sanitizer_memcheck", sanitizer.sanitizer_memcheck, True, 30, 80, ("build",)),
    ("sanitizer_racecheck", sanitizer.sanitizer_racecheck, True, 25, 50, ("build",)),
    ("bench_focal_loss", benchmarks.bench_focal_loss, True, 20, 50, ("build",)),
    ("bench_retinanet", benchmarks.bench_retinanet, True, 40, 90, ("build",)),
    ("parity", drivers.parity, True, 20, 50, ("build",)),
    ("train_synthetic", drivers.train_synthetic, True, 25, 70, ("build",)),
)


class Session:
    """What the steps share: the options, the time left, the log, the facts found so far (``facts``:
    the environment's report), where the wheels (``site``) and the built plugin (``plugin_root``)
    are."""

    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.budget = args.budget or (DRY_RUN_BUDGET_S if self.dry else DEFAULT_BUDGET_S)
        self.python = args.python or sys.executable
        self.t0 = time.monotonic()
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="gpu_session_")
        self.log = open(os.path.join(self.out, "log.txt"), "a", buffering=1)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        self.env.pop("PYTHONPATH", None)
        self.site = None  # the wheels' target folder, once installed
        self.plugin_root = REPO_ROOT  # where retinanet_plugin (and its built _C) is imported from
        self.facts = {}
        self.gpu_slug = "dryrun" if self.dry else "gpu"
        self.summary = summary.start(self.dry, self.budget, self.python)

    # ------------------------------------------------------------------------------------ plumbing
    def left(self):
        return self.budget - (time.monotonic() - self.t0)

    def time_left(self, deadline, reserve=0.0):
        return max(1.0, deadline - time.monotonic() - reserve)

    def say(self, text=""):
        stamp = f"[{time.monotonic() - self.t0:6.1f}s]"
        for line in str(text).splitlines() or [""]:
            print(f"{stamp} {line}", flush=True)
            self.log.write(f"{stamp} {line}\n")

    def step_env(self, extra=None):
        """Environment of a step's commands: the wheels' target and the plugin's folder first on the
        path."""
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.site, self.plugin_root) if p)
        env.update(extra or {})
        return env

    def run(self, command, timeout, env=None, cwd=REPO_ROOT, label=None):
        """``process.run`` with the session's log; ``env`` defaults to ``step_env()``."""
        return process.run(command, timeout, env or self.step_env(), cwd, self.say, self.log, label)

    def python_command(self, script, *args):
        return [self.python, os.path.join(REPO_ROOT, script), *args]

    def write_summary(self):
        summary.write(self.summary, self.out, time.monotonic() - self.t0)

    # ------------------------------------------------------------------------------------ stepping
    def skip_reason(self, name, needs_gpu, min_s, requires):
        """Why the step ``name`` does not start (None when it does)."""
        steps = self.summary["steps"]
        unmet = [
            r
            for r in requires
            if steps.get(r, {}).get("status") in ("failed", "timeout")
            or (
                steps.get(r, {}).get("status") == "skipped"
                and not steps[r].get("note", "").startswith("not selected")
            )
        ]
        if self.args.steps is not None and name not in self.args.steps:
            return "not selected (--steps)"
        if unmet:
            return f"needs step(s) {', '.join(unmet)}, which did not succeed"
        if needs_gpu and not self.dry and not self.facts.get("cuda_available"):
            return "no GPU visible to torch (see step environment)"
        if self.left() < min_s + RESERVE_S:
            return f"only {self.left():.0f} s left; this step needs at least {min_s} s"
        return None

    def step(self, name, fn, needs_gpu, min_s, cap_s, requires=()):
        """Runs ``fn(record, deadline)`` as the step ``name`` (or records why not), then the
        summary."""
        record = {"status": None, "needs_gpu": needs_gpu}
        self.summary["steps"][name] = record
        self.say("")
        self.say(f"==== {name} ({self.left():.0f} s left)")
        reason = self.skip_reason(name, needs_gpu, min_s, requires)
        if reason:
            record.update(status="skipped", note=reason)
        else:
            limit = min(cap_s * (DRY_RUN_CAP_FACTOR if self.dry else 1), self.left() - RESERVE_S)
            start = time.monotonic()
            try:
                fn(record, time.monotonic() + limit)
            except Exception as e:  # noqa: BLE001  (recorded, the session goes on)
                record.update(
                    status="failed",
                    error=f"{type(e).__name__}: {e}",
                    traceback=traceback.format_exc().splitlines()[-8:],
                )
                self.say(traceback.format_exc())
            record["seconds"] = round(time.monotonic() - start, 1)
            record["limit_s"] = round(limit, 1)
            if record["status"] is None:
                record["status"] = "failed"
                record.setdefault("error", "the step recorded no status")
        check = record.get("dry_run_check", {}).get("status")
        self.say(
            f"==== {name}: {record['status']}"
            + (f" (dry-run check: {check})" if check else "")
            + (f" - {record.get('note')}" if record.get("note") else "")
            + (f" - {record.get('error')}" if record.get("error") else "")
        )
        self.write_summary()

    def run_all(self):
        self.say(
            f"GPU session ({'dry run' if self.dry else 'GPU'}), budget {self.budget} s, "
            f"output {self.out}, work folder {self.work}, python {self.python}"
        )
        self.write_summary()
        for name, fn, needs_gpu, min_s, cap_s, requires in PLAN:
            self.step(
                name,
                lambda record, deadline, fn=fn: fn(self, record, deadline),
                needs_gpu,
                min_s,
                cap_s,
                requires,
            )
        self.finish()

    def finish(self):
        status, failed = summary.overall_status(self.summary["steps"], self.dry)
        self.summary.update(status=status, failed_steps=failed)
        self.write_summary()
        files = sorted(os.listdir(self.out))
        if len(files) > MAX_FILES:
            self.summary["status"] = "failed"
            self.summary["error"] = (
                f"{len(files)} files under {self.out}, more than {MAX_FILES}: {files}"
            )
            self.write_summary()
        self.say("")
        for line in summary.step_lines(self.summary["steps"]):
            self.say(line)
        self.say(
            f"status {self.summary['status']}, {self.summary['wall_s']} s; summary in "
            f"{self.out}/summary.json"
        )
        if not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        return 0 if self.summary["status"] in ("ok", "incomplete") else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--out", required=True, help="results folder (log.txt, summary.json, benchmark files)")
    add(
        "--dry-run", action="store_true", help="no GPU: run what needs none, check the rest's logic"
    )
    add(
        "--budget",
        type=float,
        help=f"seconds for the whole session (default {DEFAULT_BUDGET_S}; "
        f"dry run {DRY_RUN_BUDGET_S})",
    )
    add("--python", help="interpreter for every step (default: this one)")
    add(
        "--steps",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="comma-separated subset of the steps to run (the others are marked skipped)",
    )
    add(
        "--dry-run-cuda-build",
        action="store_true",
        help="dry run: build the CUDA kernels too (FORCE_CUDA=1, --dry-run-arch), slow on 2 cores",
    )
    add("--dry-run-arch", default="9.0", help="TORCH_CUDA_ARCH_LIST of --dry-run-cuda-build")
    add("--keep-work", action="store_true", help="keep the temporary work folder")
    return parser.parse_args(argv)


def main(argv=None):
    session = Session(parse_args(argv))
    try:
        session.run_all()
    except KeyboardInterrupt:
        session.summary["status"] = "interrupted"
        session.write_summary()
        return 1
    return 0 if session.summary["status"] in ("ok", "incomplete") else 1


if __name__ == "__main__":
    sys.exit(main())
