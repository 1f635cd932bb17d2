"""Steps 1 and 2 of the GPU session: the machine (``env_report.py``) and the carried wheels
installed and imported (``check_stack.py``)."""

import collections
import glob
import os
import re
import shutil
import subprocess
import tempfile

from . import REPO_ROOT, TOOLS, WHEEL_DIR, bundled_distributions, process, read_json

# where the wheels go on the GPU machine
TARGET_SITE = os.path.join(tempfile.gettempdir(), "retinanet_gpu_site")
PY312_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
ENV_FIGURES = (
    "python",
    "torch",
    "torch_cuda",
    "cuda_available",
    "gpu",
    "smi",
    "arch_list",
    "nvcc_release",
    "cuda_home",
    "compute_sanitizer",
    "compute_sanitizer_version",
    "cuobjdump",
    "ninja",
    "cpu_count",
)


# ---------------------------------------------------------------------------------- 1 environment
def environment(session, record, deadline):
    path = os.path.join(session.work, "env.json")
    command = session.python_command("tools/gpu/env_report.py", "--json", path)
    result = session.run(command, session.time_left(deadline), env=session.env)
    report = read_json(path) or {}
    session.facts.update(report)
    record["figures"] = {k: report.get(k) for k in ENV_FIGURES}
    if result["rc"] != 0 or not report:
        record.update(
            status=process.result_status(result, False),
            error=process.error_text(result, "env_report.py"),
        )
        return
    if not session.dry:
        name = (report.get("gpu") or {}).get("name") or (report.get("smi") or {}).get("name")
        if name:
            session.gpu_slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"
        if not report.get("cuda_available"):
            record.update(
                status="failed",
                error="torch sees no GPU: " + str(report.get("nvidia_smi_query"))[:300],
            )
            return
        if not report.get("arch_list"):
            record.update(status="failed", error="could not tell the GPU's compute capability")
            return
    record["status"] = "ok"


# ---------------------------------------------------------------------------------------- 2 stack
def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def bundled_names():
    """The distributions listed in ``tools/gpu/wheels.txt`` (normalised names)."""
    return [normalized(name) for name in bundled_distributions()]


def wheel_inventory():
    """The wheels in ``.whl/``, and what is missing, unlisted or there in several versions."""
    wheels = sorted(glob.glob(os.path.join(WHEEL_DIR, "*.whl")))
    found = collections.defaultdict(list)
    for wheel in wheels:
        found[normalized(os.path.basename(wheel).split("-")[0])].append(os.path.basename(wheel))
    expected = bundled_names()
    return wheels, {
        "wheels": [os.path.basename(w) for w in wheels],
        "bytes": sum(os.path.getsize(w) for w in wheels),
        "missing": [n for n in expected if n not in found],
        "unlisted": sorted(n for n in found if n not in expected),
        "several_versions": sorted(n for n, files in found.items() if len(files) > 1),
    }


def find_py312():
    """A Python 3.12 for the dry run's install check: GPU_SESSION_PY312, else python3.12 on PATH;
    and whether it has torch."""
    for candidate in (os.environ.get("GPU_SESSION_PY312"), shutil.which("python3.12")):
        if not candidate:
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys, pip; print(sys.version_info[:2] == (3, 12))"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            has_torch = subprocess.run(
                [candidate, "-c", "import torch"], capture_output=True, timeout=120
            )
            return candidate, has_torch.returncode == 0
    return None, False


def installer(session):
    """(site folder, interpreter that installs, interpreter that checks the imports or None, how,
    extra pip arguments): on the GPU machine this interpreter into TARGET_SITE; in a dry run a
    Python 3.12 if there is one, else this interpreter's pip resolving the wheels as Python 3.12
    would."""
    if not session.dry:
        return TARGET_SITE, session.python, session.python, "the exact command", []
    site = os.path.join(session.work, "site312")
    py312, has_torch = find_py312()
    if py312:
        return site, py312, py312 if has_torch else None, "the exact command", []
    extra = [
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--abi",
        "cp312",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ] + [a for p in PY312_PLATFORMS for a in ("--platform", p)]
    how = "this interpreter's pip with --python-version 3.12 (no Python 3.12 here)"
    return site, session.python, None, how, extra + ["--platform", "any"]


def check_imports(session, record, deadline, site, check_python, problems):
    """``check_stack.py`` under ``check_python`` with the wheels' folder first on the path."""
    report_path = os.path.join(session.work, "stack.json")
    env = dict(session.env, PYTHONPATH=os.pathsep.join([site, REPO_ROOT]))
    command = [
        check_python,
        os.path.join(TOOLS, "check_stack.py"),
        "--site",
        site,
        "--json",
        report_path,
    ]
    result = session.run(command, session.time_left(deadline), env=env)
    report = read_json(report_path) or {}
    record["figures"].update(
        imports_checked_with=report.get("python"),
        versions=report.get("versions"),
        import_failures=report.get("failed"),
    )
    if not session.dry:
        session.site = site
    if result["rc"] != 0:
        problems.append(
            process.error_text(result, "check_stack.py")
            if not report
            else f"imports: {report.get('failed')}"
        )


def stack(session, record, deadline):
    if not os.path.isdir(WHEEL_DIR) or not glob.glob(os.path.join(WHEEL_DIR, "*.whl")):
        note = "no wheels in .whl/: run `bash tools/bundle_gpu_wheels.sh` and carry .whl"
        if session.dry:
            record.update(
                status="skipped", note=note + " (wheel install not checked in this dry run)"
            )
        else:
            record.update(status="failed", error=note)
        return
    wheels, inventory = wheel_inventory()
    record["figures"] = {"inventory": inventory}
    problems = [
        f"{k}: {inventory[k]}" for k in ("missing", "unlisted", "several_versions") if inventory[k]
    ]
    site, install_python, check_python, how, extra = installer(session)
    shutil.rmtree(site, ignore_errors=True)
    command = (
        [
            install_python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            site,
        ]
        + extra
        + wheels
    )
    result = session.run(command, session.time_left(deadline), env=session.env)
    record["figures"].update(install_with=how, target=site)
    if result["rc"] != 0:
        record.update(
            status=process.result_status(result, False),
            error=process.error_text(result, "pip install"),
        )
        return
    if check_python is None:
        note = (
            "installed; imports not checked (no Python 3.12 with torch here; set GPU_SESSION_PY312)"
        )
        record.update(status="failed" if problems else "ok", note=note)
    else:
        check_imports(session, record, deadline, site, check_python, problems)
        record["status"] = "failed" if problems else "ok"
    if problems:
        record["error"] = "; ".join(problems)
