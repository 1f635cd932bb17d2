"""The GPU session (issue 11): every GPU check of the project in one call of at most 8 minutes, or its dry run.

Run through ``tools/gpu_session.sh`` (see there and the README for the device tool call). Steps, in order, each
started only when the time left allows its minimum (else skipped with a note), each stopped at its own time cap,
each recorded in ``OUT/summary.json`` (rewritten after every step, so a killed session still leaves one) with a
status (ok / failed / timeout / skipped), its figures and, on failure, the error; a failing step never stops the
session:

 1. environment        GPU, driver, torch/CUDA versions, nvcc, compute-sanitizer, cuobjdump   (tools/gpu/env_report.py)
 2. stack              the carried wheels (.whl/) installed --no-index --no-deps into a target folder, then every
                       import the session needs                                            (tools/gpu/check_stack.py)
 3. build              retinanet_plugin._C built in place, FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST = this GPU only, no
                       network (setup.py build_ext --inplace); cuobjdump must list this GPU's sm_XY ELF
 4. cuda_tests         pytest -k "cuda or emulat" over the op test files (+ tests/test_*emulat*.py, *cuda*.py, *dense*.py)
    train_step_checks  pytest -m cuda tests/test_anchor_labeling.py tests/test_mixed_precision.py
                       (set_sync_debug_mode("error") over a training step; fp16 + GradScaler training)
 5. sanitizer_memcheck, sanitizer_racecheck   compute-sanitizer over tools/gpu/sanitize_ops.py
 6. bench_focal_loss   benchmarks/bench_focal_loss.py --device cuda (CUDA events, bandwidth vs peak, vs fvcore/torchvision)
    bench_retinanet    benchmarks/bench_retinanet.py --device cuda, 800x1333, batch 2, fp32 and AMP
 7. parity             tools/gpu/parity.py: the plugin vs Detectron2's RetinaNet (R50, same weights), within 1e-4
    train_synthetic    tools/gpu/train_synthetic.py: 50 iterations of R50 on the synthetic shapes (+ 10 with AMP)

``--dry-run`` (no GPU): steps 1-3 run for real (the wheel install for Python 3.12 into a temporary target when .whl/
exists; the build in a temporary copy of the sources, CPU kernels only unless ``--dry-run-cuda-build``), and each GPU
step is marked skipped after a check of its own logic on the CPU (``dry_run_check``): pytest's collection of the
same selection, the sanitizer driver, the benchmark in its quick mode, the parity and training drivers on R18.

Files under OUT (8 at most): log.txt, summary.json, sanitizer.txt, and the benchmark results named after the GPU:
focal_loss_cuda_<gpu>.json, retinanet_cuda_<gpu>.json and .md (dry run: focal_loss_cpu_dryrun.json).
"""
import argparse
import collections
import datetime
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(REPO_ROOT, "tools", "gpu")
WHEEL_DIR = os.path.join(REPO_ROOT, ".whl")
WHEEL_LIST = os.path.join(TOOLS, "wheels.txt")
DEFAULT_BUDGET_S = 480
DRY_RUN_BUDGET_S = 1500  # the dry run has no lease to fit in: its caps are DRY_RUN_CAP_FACTOR times the GPU run's
DRY_RUN_CAP_FACTOR = 4  # (a shared 2-core machine can be several times slower than usual)
RESERVE_S = 8  # kept back from every step for the summary
MAX_FILES = 8
SANITIZER_LOG_LIMIT = 400_000  # bytes of each tool's report kept in sanitizer.txt
OP_TEST_PATTERNS = ("test_*focal*op*.py", "test_*dense*.py", "test_*emulat*.py", "test_*cuda*.py")
OP_TEST_KEYWORDS = "cuda or emulat"
TRAIN_STEP_TESTS = ("test_anchor_labeling.py", "test_mixed_precision.py")
TARGET_SITE = os.path.join(tempfile.gettempdir(), "retinanet_gpu_site")  # where the wheels go on the GPU machine
PY312_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


class Session:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.budget = args.budget if args.budget else (DRY_RUN_BUDGET_S if self.dry else DEFAULT_BUDGET_S)
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
        self.summary = {
            "mode": "dry-run" if self.dry else "gpu",
            "status": "running",
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": self.budget,
            "repo": REPO_ROOT,
            "git_head": self._git_head(),
            "python": self.python,
            "steps": collections.OrderedDict(),
        }

    # ------------------------------------------------------------------------------------------------ plumbing
    def left(self):
        return self.budget - (time.monotonic() - self.t0)

    def say(self, text=""):
        stamp = f"[{time.monotonic() - self.t0:6.1f}s]"
        for line in str(text).splitlines() or [""]:
            print(f"{stamp} {line}", flush=True)
            self.log.write(f"{stamp} {line}\n")

    def _git_head(self):
        try:
            out = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=10)
            dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    def step_env(self, extra=None):
        """Environment of a step's commands: the wheels' target and the plugin's folder first on the path."""
        env = dict(self.env)
        paths = [p for p in (self.site, self.plugin_root) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update(extra or {})
        return env

    def run(self, command, timeout, env=None, cwd=REPO_ROOT, label=None):
        """Runs ``command``, its output streamed to the console and log.txt. Returns a dict: rc (None when it timed
        out or could not start), timed_out, seconds, tail (its last 60 lines)."""
        timeout = max(1.0, float(timeout))
        self.say(f"$ {' '.join(map(str, command))}    (limit {timeout:.0f} s)")
        tail = collections.deque(maxlen=60)
        start = time.monotonic()
        try:
            proc = subprocess.Popen([str(c) for c in command], cwd=cwd, env=env or self.step_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                    bufsize=1, start_new_session=True)
        except OSError as e:
            self.say(f"could not start: {e}")
            return {"rc": None, "timed_out": False, "seconds": 0.0, "tail": [str(e)]}

        def pump():
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                print(line, flush=True)
                self.log.write(line + "\n")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.say(f"time limit of {timeout:.0f} s reached: stopping {label or command[0]}")
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        reader.join(timeout=5)
        seconds = time.monotonic() - start
        rc = None if timed_out else proc.returncode
        self.say(f"-> {'timed out' if timed_out else f'exit {rc}'} after {seconds:.1f} s")
        return {"rc": rc, "timed_out": timed_out, "seconds": seconds, "tail": list(tail)}

    def python_command(self, script, *args):
        return [self.python, os.path.join(REPO_ROOT, script), *args]

    def write_summary(self):
        self.summary["wall_s"] = round(time.monotonic() - self.t0, 1)
        self.summary["files"] = sorted(os.listdir(self.out)) + ([] if "summary.json" in os.listdir(self.out) else ["summary.json"])
        path = os.path.join(self.out, "summary.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.summary, f, indent=2, default=str)
        os.replace(path + ".tmp", path)

    # ------------------------------------------------------------------------------------------------ stepping
    def step(self, name, fn, needs_gpu, min_s, cap_s, requires=()):
        record = {"status": None, "needs_gpu": needs_gpu}
        self.summary["steps"][name] = record
        self.say("")
        self.say(f"==== {name} ({self.left():.0f} s left)")
        selected = self.args.steps is None or name in self.args.steps
        unmet = [r for r in requires if self.summary["steps"].get(r, {}).get("status") in ("failed", "timeout")
                 or (self.summary["steps"].get(r, {}).get("status") == "skipped"
                     and not self.summary["steps"][r].get("note", "").startswith("not selected"))]
        if not selected:
            record.update(status="skipped", note="not selected (--steps)")
        elif unmet:
            record.update(status="skipped", note=f"needs step(s) {', '.join(unmet)}, which did not succeed")
        elif needs_gpu and not self.dry and not self.facts.get("cuda_available"):
            record.update(status="skipped", note="no GPU visible to torch (see step environment)")
        elif self.left() < min_s + RESERVE_S:
            record.update(status="skipped", note=f"only {self.left():.0f} s left; this step needs at least {min_s} s")
        else:
            limit = min(cap_s * (DRY_RUN_CAP_FACTOR if self.dry else 1), self.left() - RESERVE_S)
            start = time.monotonic()
            try:
                fn(record, time.monotonic() + limit)
            except Exception as e:  # noqa: BLE001  (recorded, the session goes on)
                record["status"] = "failed"
                record["error"] = f"{type(e).__name__}: {e}"
                record["traceback"] = traceback.format_exc().splitlines()[-8:]
                self.say(traceback.format_exc())
            record["seconds"] = round(time.monotonic() - start, 1)
            record["limit_s"] = round(limit, 1)
            if record["status"] is None:
                record["status"] = "failed"
                record.setdefault("error", "the step recorded no status")
        check = record.get("dry_run_check", {}).get("status")
        self.say(f"==== {name}: {record['status']}" + (f" (dry-run check: {check})" if check else "")
                 + (f" - {record.get('note')}" if record.get("note") else "")
                 + (f" - {record.get('error')}" if record.get("error") else ""))
        self.write_summary()

    def time_left(self, deadline, reserve=0.0):
        return max(1.0, deadline - time.monotonic() - reserve)

    @staticmethod
    def result_status(result, ok):
        if result["timed_out"]:
            return "timeout"
        return "ok" if ok else "failed"

    @staticmethod
    def error_text(result, what):
        if result["timed_out"]:
            return f"{what} did not finish within its time limit"
        tail = [line for line in result["tail"] if line.strip()][-6:]
        return f"{what} exited {result['rc']}: " + " | ".join(tail)[-1500:]

    def read_json(self, path):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------------------------------------ 1 environment
    def environment(self, record, deadline):
        path = os.path.join(self.work, "env.json")
        result = self.run(self.python_command("tools/gpu/env_report.py", "--json", path), self.time_left(deadline),
                          env=self.env)
        report = self.read_json(path) or {}
        self.facts.update(report)
        keys = ("python", "torch", "torch_cuda", "cuda_available", "gpu", "smi", "arch_list", "nvcc_release",
                "cuda_home", "compute_sanitizer", "compute_sanitizer_version", "cuobjdump", "ninja", "cpu_count")
        record["figures"] = {k: report.get(k) for k in keys}
        if result["rc"] != 0 or not report:
            record.update(status=self.result_status(result, False), error=self.error_text(result, "env_report.py"))
            return
        if not self.dry:
            name = (report.get("gpu") or {}).get("name") or (report.get("smi") or {}).get("name")
            if name:
                self.gpu_slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"
            if not report.get("cuda_available"):
                record.update(status="failed", error="torch sees no GPU: " + str(report.get("nvidia_smi_query"))[:300])
                return
            if not report.get("arch_list"):
                record.update(status="failed", error="could not tell the GPU's compute capability")
                return
        record["status"] = "ok"

    # ------------------------------------------------------------------------------------------------ 2 stack
    @staticmethod
    def bundled_names():
        names = []
        with open(WHEEL_LIST) as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if fields:
                    names.append(re.sub(r"[-_.]+", "-", fields[0]).lower())
        return names

    def wheel_inventory(self):
        wheels = sorted(glob.glob(os.path.join(WHEEL_DIR, "*.whl")))
        found = collections.defaultdict(list)
        for wheel in wheels:
            found[re.sub(r"[-_.]+", "-", os.path.basename(wheel).split("-")[0]).lower()].append(os.path.basename(wheel))
        expected = self.bundled_names()
        return wheels, {
            "wheels": [os.path.basename(w) for w in wheels],
            "bytes": sum(os.path.getsize(w) for w in wheels),
            "missing": [n for n in expected if n not in found],
            "unlisted": sorted(n for n in found if n not in expected),
            "several_versions": sorted(n for n, files in found.items() if len(files) > 1),
        }

    def find_py312(self):
        """A Python 3.12 for the dry run's install check: GPU_SESSION_PY312, else python3.12 on PATH."""
        for candidate in (os.environ.get("GPU_SESSION_PY312"), shutil.which("python3.12")):
            if not candidate:
                continue
            try:
                probe = subprocess.run([candidate, "-c", "import sys, pip; print(sys.version_info[:2] == (3, 12))"],
                                       capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if probe.returncode == 0 and probe.stdout.strip() == "True":
                has_torch = subprocess.run([candidate, "-c", "import torch"], capture_output=True, timeout=120)
                return candidate, has_torch.returncode == 0
        return None, False

    def stack(self, record, deadline):
        if not os.path.isdir(WHEEL_DIR) or not glob.glob(os.path.join(WHEEL_DIR, "*.whl")):
            note = "no wheels in .whl/: run `bash tools/bundle_gpu_wheels.sh` and carry .whl"
            if self.dry:
                record.update(status="skipped", note=note + " (wheel install not checked in this dry run)")
            else:
                record.update(status="failed", error=note)
            return
        wheels, inventory = self.wheel_inventory()
        record["figures"] = {"inventory": inventory}
        problems = [f"{k}: {inventory[k]}" for k in ("missing", "unlisted", "several_versions") if inventory[k]]
        installer, check_python, how = self.python, self.python, "the exact command"
        extra = []
        if self.dry:
            site = os.path.join(self.work, "site312")
            py312, has_torch = self.find_py312()
            if py312:
                installer = py312
                check_python = py312 if has_torch else None
            else:
                # This interpreter's pip, resolving the wheels as Python 3.12 on manylinux x86-64 would.
                how = "this interpreter's pip with --python-version 3.12 (no Python 3.12 here)"
                extra = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
                         "--abi", "none"] + [a for p in PY312_PLATFORMS for a in ("--platform", p)] + ["--platform", "any"]
                check_python = None
        else:
            site = TARGET_SITE
        shutil.rmtree(site, ignore_errors=True)
        command = [installer, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                   "--upgrade", "--target", site] + extra + wheels
        result = self.run(command, self.time_left(deadline), env=self.env)
        record["figures"].update(install_with=how, target=site)
        if result["rc"] != 0:
            record.update(status=self.result_status(result, False), error=self.error_text(result, "pip install"))
            return
        if check_python is None:
            note = "installed; imports not checked (no Python 3.12 with torch here; set GPU_SESSION_PY312)"
            record.update(status="failed" if problems else "ok", note=note)
            if problems:
                record["error"] = "; ".join(problems)
            return
        report_path = os.path.join(self.work, "stack.json")
        env = dict(self.env, PYTHONPATH=os.pathsep.join([site, REPO_ROOT]))
        result = self.run([check_python, os.path.join(TOOLS, "check_stack.py"), "--site", site, "--json", report_path],
                          self.time_left(deadline), env=env)
        report = self.read_json(report_path) or {}
        record["figures"].update(imports_checked_with=report.get("python"), versions=report.get("versions"),
                                 import_failures=report.get("failed"))
        if not self.dry:
            self.site = site
        if result["rc"] != 0:
            problems.append(self.error_text(result, "check_stack.py") if not report else f"imports: {report.get('failed')}")
        record["status"] = "failed" if problems else "ok"
        if problems:
            record["error"] = "; ".join(problems)

    # ------------------------------------------------------------------------------------------------ 3 build
    def source_copy(self):
        """The build's sources copied into the work folder (the dry run must not replace the checkout's _C)."""
        src = os.path.join(self.work, "src")
        ignore = shutil.ignore_patterns("*.so", "__pycache__", "build", "*.egg-info", "model_zoo_configs")
        os.makedirs(src)
        shutil.copy2(os.path.join(REPO_ROOT, "setup.py"), src)
        for folder in ("retinanet_plugin", "configs"):
            shutil.copytree(os.path.join(REPO_ROOT, folder), os.path.join(src, folder), ignore=ignore)
        return src

    def build(self, record, deadline):
        cuda_build = not self.dry or self.args.dry_run_cuda_build
        src = self.source_copy() if self.dry else REPO_ROOT
        arch = self.facts.get("arch_list") if not self.dry else self.args.dry_run_arch
        extra = {"FORCE_CUDA": "1" if cuda_build else "0", "MAX_JOBS": str(os.cpu_count() or 4)}
        if cuda_build:
            if not arch:
                record.update(status="failed", error="no TORCH_CUDA_ARCH_LIST for this GPU (see step environment)")
                return
            extra["TORCH_CUDA_ARCH_LIST"] = arch
            if self.facts.get("cuda_home"):
                extra["CUDA_HOME"] = self.facts["cuda_home"]
        if self.site:  # setuptools from the wheels (the version tested here)
            extra["PYTHONPATH"] = self.site
        env = dict(self.env, **extra)
        if "PYTHONPATH" not in extra:
            env.pop("PYTHONPATH", None)
        command = [self.python, "setup.py", "build_ext", "--inplace"]
        record["figures"] = {"command": " ".join(command), "cwd": src,
                             "env": {k: v for k, v in extra.items() if k != "PYTHONPATH"}}
        if self.dry:
            record["note"] = ("dry run: built in a temporary copy of the sources, "
                              + ("CUDA forced" if cuda_build else "CPU kernels only (FORCE_CUDA=0)"))
        for stale in glob.glob(os.path.join(src, "retinanet_plugin", "_C*.so")):
            os.remove(stale)
        result = self.run(command, self.time_left(deadline, reserve=20), env=env, cwd=src)
        if result["rc"] != 0:
            record.update(status=self.result_status(result, False), error=self.error_text(result, "the build"))
            return
        built = glob.glob(os.path.join(src, "retinanet_plugin", "_C*.so"))
        if len(built) != 1:
            record.update(status="failed", error=f"expected one retinanet_plugin/_C*.so after the build, found {built}")
            return
        so = built[0]
        record["figures"].update(library=os.path.basename(so), library_bytes=os.path.getsize(so))
        problems = []
        cuobjdump = self.facts.get("cuobjdump")
        if cuda_build and cuobjdump:
            listing = self.run([cuobjdump, "--list-elf", so], self.time_left(deadline), env=env)
            elfs = sorted({m for line in listing["tail"] for m in re.findall(r"sm_\d+[a-z]?", line)})
            ptx = self.run([cuobjdump, "--list-ptx", so], self.time_left(deadline), env=env)
            record["figures"].update(cubin_archs=elfs,
                                     ptx=sorted({m for line in ptx["tail"] for m in re.findall(r"sm_\d+[a-z]?", line)}))
            wanted = "sm_" + arch.replace(".", "")
            if wanted not in elfs:
                problems.append(f"cuobjdump --list-elf shows no {wanted} code in {os.path.basename(so)}: {elfs}")
        elif cuda_build:
            note = "cuobjdump not found: CUDA code not checked"
            record["note"] = f"{record['note']}; {note}" if record.get("note") else note
            if not self.dry:
                problems.append(note)
        probe = ("import json, retinanet_plugin, retinanet_plugin._C as C; "
                 "print('@@' + json.dumps({'with_cuda': bool(C.WITH_CUDA), 'file': C.__file__, "
                 "'package': retinanet_plugin.__file__}))")
        env = dict(self.env, PYTHONPATH=os.pathsep.join(p for p in (self.site, src) if p))
        result = self.run([self.python, "-c", probe], self.time_left(deadline), env=env, cwd=self.work)
        loaded = next((json.loads(l[2:]) for l in result["tail"] if l.startswith("@@")), None)
        if loaded is None:
            problems.append(self.error_text(result, "importing the built _C"))
        else:
            record["figures"].update(loaded)
            if not os.path.realpath(loaded["file"]).startswith(os.path.realpath(src)):
                problems.append(f"the built _C is not the one imported: {loaded['file']}")
            if loaded["with_cuda"] != cuda_build:
                problems.append(f"_C.WITH_CUDA is {loaded['with_cuda']}, the build asked for CUDA={cuda_build}")
        if problems:
            record.update(status="failed", error="; ".join(problems))
            return
        self.plugin_root = src
        record["status"] = "ok"

    # ------------------------------------------------------------------------------------------------ 4 tests
    @staticmethod
    def op_test_files():
        files = set()
        for pattern in OP_TEST_PATTERNS:
            files.update(glob.glob(os.path.join(REPO_ROOT, "tests", pattern)))
        return sorted(files)

    @staticmethod
    def junit_counts(path):
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        failed = []
        for case in root.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
        counts["failed_tests"] = failed[:40]
        return counts

    def pytest_step(self, record, deadline, selection, files, name):
        command = [self.python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "--durations=5"] + selection + files
        record["figures"] = {"files": [os.path.relpath(f, REPO_ROOT) for f in files], "selection": " ".join(selection)}
        if not files:
            record.update(status="failed", error="no test files matched")
            return
        if self.dry:
            result = self.run(command + ["--collect-only"], self.time_left(deadline), cwd=self.plugin_root)
            text = "\n".join(result["tail"])
            match = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
            selected = int(match.group(1)) if match else 0
            ok = result["rc"] == 0 and selected > 0
            record.update(status="skipped", note="needs a GPU")
            record["dry_run_check"] = {"status": "ok" if ok else "failed", "what": "pytest --collect-only of the selection",
                                       "selected": selected}
            if not ok:
                record["dry_run_check"]["error"] = self.error_text(result, "pytest --collect-only")
            return
        junit = os.path.join(self.work, f"{name}.xml")
        result = self.run(command + [f"--junitxml={junit}"], self.time_left(deadline), cwd=self.plugin_root)
        if not os.path.exists(junit):
            record.update(status=self.result_status(result, False), error=self.error_text(result, "pytest"))
            return
        counts = self.junit_counts(junit)
        record["figures"].update(counts)
        ran = counts["tests"] - counts["skipped"]
        # On a GPU the selection is the CUDA tests: most of it skipped means the GPU was not used.
        ok = result["rc"] == 0 and counts["failures"] == 0 and counts["errors"] == 0 and ran > 0 and ran >= counts["skipped"]
        record["status"] = self.result_status(result, ok)
        if not ok:
            record["error"] = (f"{counts['failures']} failed, {counts['errors']} errors, {ran} ran, "
                               f"{counts['skipped']} skipped: {counts['failed_tests'][:10]}")

    def cuda_tests(self, record, deadline):
        self.pytest_step(record, deadline, ["-k", OP_TEST_KEYWORDS], self.op_test_files(), "cuda_tests")

    def train_step_checks(self, record, deadline):
        files = [os.path.join(REPO_ROOT, "tests", f) for f in TRAIN_STEP_TESTS
                 if os.path.exists(os.path.join(REPO_ROOT, "tests", f))]
        self.pytest_step(record, deadline, ["-m", "cuda"], files, "train_step_checks")

    # ------------------------------------------------------------------------------------------------ 5 sanitizer
    def sanitizer(self, record, deadline, tool):
        driver_args = ["--subset", "reduced", "--sweeps", "1"] if tool == "racecheck" else ["--sweeps", "2"]
        report_path = os.path.join(self.work, f"{tool}.json")
        if self.dry:
            result = self.run(self.python_command("tools/gpu/sanitize_ops.py", "--device", "cpu", *driver_args,
                                                  "--json", report_path), self.time_left(deadline))
            report = self.read_json(report_path) or {}
            ok = result["rc"] == 0 and report.get("ok") is True
            record.update(status="skipped", note="needs a GPU")
            record["dry_run_check"] = {"status": "ok" if ok else "failed", "what": "the driver on the CPU",
                                       "ops": report.get("ops"), "failures": (report.get("failures") or [])[:10]}
            if not ok and not report:
                record["dry_run_check"]["error"] = self.error_text(result, "sanitize_ops.py")
            return
        sanitizer = self.facts.get("compute_sanitizer")
        if not sanitizer:
            record.update(status="skipped", note="compute-sanitizer not found on this machine")
            return
        log_path = os.path.join(self.work, f"{tool}.log")
        command = [sanitizer, "--tool", tool, "--error-exitcode", "99", "--print-limit", "50", "--log-file", log_path,
                   self.python, os.path.join(TOOLS, "sanitize_ops.py"), "--device", "cuda", *driver_args,
                   "--json", report_path]
        # Without the caching allocator every tensor is its own allocation, so memcheck sees out-of-bounds accesses
        # that would otherwise land inside another cached block.
        env = self.step_env({"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        result = self.run(command, self.time_left(deadline), env=env)
        text = ""
        if os.path.exists(log_path):
            with open(log_path, errors="replace") as f:
                text = f.read()
        with open(os.path.join(self.out, "sanitizer.txt"), "a") as f:
            f.write(f"===== compute-sanitizer --tool {tool} (exit {result['rc']})\n")
            f.write(text if len(text) <= SANITIZER_LOG_LIMIT else text[:SANITIZER_LOG_LIMIT // 2] + "\n[...]\n"
                    + text[-SANITIZER_LOG_LIMIT // 2:])
            f.write("\n")
        report = self.read_json(report_path) or {}
        figures = {"driver": {k: report.get(k) for k in ("cases_per_op", "ops", "coverage", "seconds")},
                   "driver_failures": (report.get("failures") or [])[:20]}
        memcheck = re.search(r"ERROR SUMMARY: (\d+) error", text)
        racecheck = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
        if memcheck:
            figures["sanitizer_errors"] = int(memcheck.group(1))
        if racecheck:
            figures.update(hazards=int(racecheck.group(1)), sanitizer_errors=int(racecheck.group(2)),
                           race_warnings=int(racecheck.group(3)))
        # the source files named in the reports: the plugin's kernels (csrc/) or someone else's
        figures["sources_in_reports"] = sorted(set(re.findall(r" in (\S+?\.(?:cu|cuh|h|hpp|cpp)):\d+", text)))[:20]
        record["figures"] = figures
        unsupported = re.search(r"Device not supported|device is not supported", text)
        if unsupported:
            record.update(status="skipped", note=f"compute-sanitizer cannot run here: {unsupported.group(0)}",
                          error=self.error_text(result, "compute-sanitizer"))
            return
        ok = result["rc"] == 0 and report.get("ok") is True and figures.get("sanitizer_errors") == 0
        record["status"] = self.result_status(result, ok)
        if not ok:
            record["error"] = (f"sanitizer errors {figures.get('sanitizer_errors')}, driver ok {report.get('ok')}, "
                               f"exit {result['rc']} (see sanitizer.txt); " + "; ".join(figures["driver_failures"][:3]))

    def sanitizer_memcheck(self, record, deadline):
        self.sanitizer(record, deadline, "memcheck")

    def sanitizer_racecheck(self, record, deadline):
        self.sanitizer(record, deadline, "racecheck")

    # ------------------------------------------------------------------------------------------------ 6 benchmarks
    def bench_focal_loss(self, record, deadline):
        if self.dry:
            output = os.path.join(self.out, "focal_loss_cpu_dryrun.json")
            args = ["--device", "cpu", "--quick", "--repeats", "1", "--no-memory", "--with-dense"]
        else:
            output = os.path.join(self.out, f"focal_loss_cuda_{self.gpu_slug}.json")
            args = ["--device", "cuda", "--repeats", "10", "--inner", "10", "--with-dense"]
        result = self.run(self.python_command("benchmarks/bench_focal_loss.py", *args, "--output", output),
                          self.time_left(deadline))
        report = self.read_json(output) if result["rc"] == 0 else None
        figures = {}
        if report:
            info = report["info"]
            figures = {"device_name": info.get("device_name"), "file": os.path.basename(output),
                       "peak_bandwidth_bytes_per_s": info.get("peak_bandwidth_bytes_per_s"),
                       "copy_bandwidth_bytes_per_s": info.get("copy_bandwidth_bytes_per_s"), "cases": []}
            for case in report["results"]:
                impls = case["impls"]
                op = impls["op"]
                entry = {"image": case["image"], "batch": case["batch"], "rows": case["rows"],
                         "op_ms": op["seconds"] * 1e3,
                         "fvcore_over_op": impls["fvcore_jit"]["time_ratio_vs_op"],
                         "torchvision_over_op": impls["torchvision"]["time_ratio_vs_op"],
                         "op_peak_extra_nk_tensors": op.get("peak_extra_nk_tensors"),
                         "bandwidth_fraction_of_peak": op.get("bandwidth_fraction_of_peak"),
                         "bandwidth_fraction_of_copy": op.get("bandwidth_fraction_of_copy")}
                if "op_dense" in impls:
                    entry["dense_ms"] = impls["op_dense"]["seconds"] * 1e3
                    entry["fvcore_over_dense"] = impls["fvcore_jit"]["seconds"] / impls["op_dense"]["seconds"]
                figures["cases"].append(entry)
        ok = bool(report) and bool(report["results"])
        if self.dry:
            record.update(status="skipped", note="needs a GPU", figures=figures)
            record["dry_run_check"] = {"status": "ok" if ok else "failed", "what": "--device cpu --quick"}
            if not ok:
                record["dry_run_check"]["error"] = self.error_text(result, "bench_focal_loss.py")
            return
        record.update(status=self.result_status(result, ok), figures=figures)
        if not ok:
            record["error"] = self.error_text(result, "bench_focal_loss.py")

    BENCH_RETINANET_ARGS = ("--sizes", "800x1333", "--batch", "2", "--reps", "5", "--warmup", "2", "--amp")

    def bench_retinanet(self, record, deadline):
        folder = os.path.join(self.work, "bench_retinanet")
        if self.dry:
            probe = ("import sys; sys.path.insert(0, 'benchmarks'); import bench_retinanet as b; "
                     f"a = b.parse_args({list(self.BENCH_RETINANET_ARGS) + ['--device', 'cpu', '--output', folder]!r}); "
                     "print('@@', a.sizes, a.batch, a.reps, a.warmup, a.amp, a.models)")
            result = self.run([self.python, "-c", probe], self.time_left(deadline))
            ok = result["rc"] == 0 and any(line.startswith("@@") for line in result["tail"])
            record.update(status="skipped", note="needs a GPU")
            record["dry_run_check"] = {"status": "ok" if ok else "failed",
                                       "what": "the GPU run's arguments parsed by bench_retinanet.parse_args",
                                       "parsed": next((l[3:] for l in result["tail"] if l.startswith("@@")), None)}
            if not ok:
                record["dry_run_check"]["error"] = self.error_text(result, "bench_retinanet.parse_args")
            return
        result = self.run(self.python_command("benchmarks/bench_retinanet.py", "--device", "cuda",
                                              *self.BENCH_RETINANET_ARGS, "--output", folder), self.time_left(deadline))
        report = self.read_json(os.path.join(folder, "retinanet_cuda.json"))
        figures = {}
        errors = []
        if report:
            for suffix in ("json", "md"):
                source = os.path.join(folder, f"retinanet_cuda.{suffix}")
                if os.path.exists(source):
                    shutil.copy2(source, os.path.join(self.out, f"retinanet_cuda_{self.gpu_slug}.{suffix}"))
            figures["cases"] = []
            for case in report.get("cases", []):
                results = case.get("results", {})
                plugin = results.get("plugin", {})
                entry = {"case": case.get("label"), "plugin_ms": (plugin.get("median_s") or 0) * 1e3 or None,
                         "plugin_peak_increase_mib": (plugin.get("peak_increase_bytes") or 0) / 2**20 or None,
                         "ratios": case.get("ratios")}
                for model, res in results.items():
                    if "error" in res:
                        errors.append(f"{case.get('label')} {model}: {str(res['error'])[:200]}")
                figures["cases"].append(entry)
        ok = result["rc"] == 0 and bool(report) and not errors
        record.update(status=self.result_status(result, ok), figures=figures)
        if not ok:
            record["error"] = "; ".join(errors) if errors else self.error_text(result, "bench_retinanet.py")

    # ------------------------------------------------------------------------------------------------ 7 parity, training
    def driver_step(self, record, deadline, script, gpu_args, dry_args, what):
        report_path = os.path.join(self.work, os.path.basename(script).replace(".py", ".json"))
        args = dry_args if self.dry else gpu_args
        result = self.run(self.python_command(script, *args, "--json", report_path), self.time_left(deadline))
        report = self.read_json(report_path) or {}
        ok = result["rc"] == 0 and report.get("ok") is True
        figures = {k: v for k, v in report.items() if k not in ("ok",)}
        if self.dry:
            record.update(status="skipped", note="needs a GPU")
            record["dry_run_check"] = {"status": "ok" if ok else "failed", "what": what, "figures": figures}
            if not ok:
                record["dry_run_check"]["error"] = "; ".join(report.get("failures", [])) or self.error_text(result, script)
            return
        record.update(status=self.result_status(result, ok), figures=figures)
        if not ok:
            record["error"] = "; ".join(report.get("failures", [])) or self.error_text(result, script)

    def parity(self, record, deadline):
        self.driver_step(record, deadline, "tools/gpu/parity.py", ["--device", "cuda", "--depths", "R50", "--impls", "op,reference"],
                         ["--device", "cpu", "--depths", "R18", "--impls", "op"], "R18 on the CPU")

    def train_synthetic(self, record, deadline):
        train_dir = os.path.join(self.work, "train")
        self.driver_step(record, deadline, "tools/gpu/train_synthetic.py", ["--device", "cuda", "--work", train_dir],
                         ["--device", "cpu", "--depth", "18", "--iters", "2", "--amp-iters", "1", "--num-train", "4",
                          "--num-val", "1", "--workers", "0", "--work", train_dir], "R18, 2 + 1 iterations on the CPU")

    # ------------------------------------------------------------------------------------------------ all
    def run_all(self):
        self.say(f"GPU session ({'dry run' if self.dry else 'GPU'}), budget {self.budget} s, output {self.out}, "
                 f"work folder {self.work}, python {self.python}")
        self.write_summary()
        plan = [
            # name, function, needs a GPU, minimum s to start, cap s, steps it needs
            ("environment", self.environment, False, 5, 60, ()),
            ("stack", self.stack, False, 10, 90, ()),
            ("build", self.build, False, 40, 200, ()),
            ("cuda_tests", self.cuda_tests, True, 30, 100, ("build",)),
            ("train_step_checks", self.train_step_checks, True, 20, 45, ("build",)),
            ("sanitizer_memcheck", self.sanitizer_memcheck, True, 30, 80, ("build",)),
            ("sanitizer_racecheck", self.sanitizer_racecheck, True, 25, 50, ("build",)),
            ("bench_focal_loss", self.bench_focal_loss, True, 20, 50, ("build",)),
            ("bench_retinanet", self.bench_retinanet, True, 40, 90, ("build",)),
            ("parity", self.parity, True, 20, 50, ("build",)),
            ("train_synthetic", self.train_synthetic, True, 25, 70, ("build",)),
        ]
        for name, fn, needs_gpu, min_s, cap_s, requires in plan:
            self.step(name, fn, needs_gpu, min_s, cap_s, requires)
        self.finish()

    def finish(self):
        steps = self.summary["steps"]
        statuses = {name: s["status"] for name, s in steps.items()}
        bad = [n for n, s in statuses.items() if s in ("failed", "timeout")]
        bad += [n for n, s in steps.items() if s.get("dry_run_check", {}).get("status") == "failed"]
        if bad:
            status = "failed"
        elif self.dry or all(s == "ok" for s in statuses.values()):
            status = "ok"
        else:
            status = "incomplete"  # some steps skipped for time or a missing tool, none failed
        self.summary["status"] = status
        self.summary["failed_steps"] = sorted(set(bad))
        self.write_summary()
        files = sorted(os.listdir(self.out))
        if len(files) > MAX_FILES:
            self.summary["status"] = "failed"
            self.summary["error"] = f"{len(files)} files under {self.out}, more than {MAX_FILES}: {files}"
            self.write_summary()
        self.say("")
        for name, step in steps.items():
            extra = step.get("dry_run_check", {}).get("status")
            self.say(f"  {name:<22} {step['status']:<9}" + (f" dry-run check {extra}" if extra else "")
                     + (f"  {step.get('seconds', 0):6.1f} s" if "seconds" in step else ""))
        self.say(f"status {self.summary['status']}, {self.summary['wall_s']} s; summary in {self.out}/summary.json")
        if not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        return 0 if self.summary["status"] in ("ok", "incomplete") else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="results folder (log.txt, summary.json, benchmark files)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: run what needs none, check the rest's logic")
    parser.add_argument("--budget", type=float,
                        help=f"seconds for the whole session (default {DEFAULT_BUDGET_S}; dry run {DRY_RUN_BUDGET_S})")
    parser.add_argument("--python", help="interpreter for every step (default: this one)")
    parser.add_argument("--steps", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help="comma-separated subset of the steps to run (the others are marked skipped)")
    parser.add_argument("--dry-run-cuda-build", action="store_true",
                        help="dry run: build the CUDA kernels too (FORCE_CUDA=1, --dry-run-arch), slow on 2 cores")
    parser.add_argument("--dry-run-arch", default="9.0", help="TORCH_CUDA_ARCH_LIST of --dry-run-cuda-build")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
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
