"""The supported Pythons (3.10 to 3.13): how `make` picks one (tools/find_python.sh), the one pinned
stack that holds for each (tools/stack-requirements.txt and its environment markers), and the
environment the tests run in (pip check clean, sal-detectron2's numpy cap as tools/install_stack.sh
documents it)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO_ROOT
from retinanet_plugin import env

ROOT = Path(REPO_ROOT)
FIND_PYTHON = ROOT / "tools" / "find_python.sh"
STACK = ROOT / "tools" / "stack-requirements.txt"
SUPPORTED = [f"{major}.{minor}" for major, minor in env.SUPPORTED_PYTHONS]


def fake_python(folder: Path, name: str, version: str) -> Path:
    """An executable ``name`` in ``folder`` that answers find_python.sh's question as Python
    ``version`` would."""
    minor = ".".join(version.split(".")[:2])
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{minor} {path} {version}"\n')
    path.chmod(0o755)
    return path


# what tools/find_python.sh runs besides the interpreters (not /usr/bin: it has a python3.11)
TOOLS = ("sh", "sort", "paste", "sed", "tr", "basename", "find", "tail", "dirname")


def find_python(tmp_path, *args, path_dirs=()):
    """Runs tools/find_python.sh with only ``path_dirs`` and links to the basic tools on PATH (no
    pyenv, no interpreter of the machine)."""
    tools = tmp_path / "tools"
    if not tools.exists():
        tools.mkdir()
        for name in TOOLS:
            (tools / name).symlink_to(subprocess.check_output(["which", name], text=True).strip())
    environ = dict(os.environ, PATH=":".join([*map(str, path_dirs), str(tools)]))
    return subprocess.run(
        ["/bin/bash", str(FIND_PYTHON), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def test_the_supported_versions_agree():
    script = re.search(r'^SUPPORTED="([^"]+)"', FIND_PYTHON.read_text(), re.M).group(1).split()
    assert script == sorted(SUPPORTED, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    setup = re.search(r'python_requires=">=(3\.\d+)"', (ROOT / "setup.py").read_text()).group(1)
    assert setup == SUPPORTED[0]


def test_the_newest_found_is_picked(tmp_path):
    fake_python(tmp_path, "python3.10", "3.10.4")
    fake_python(tmp_path, "python3.12", "3.12.9")
    proc = find_python(tmp_path, path_dirs=[tmp_path])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["3.12", str(tmp_path / "python3.12"), "3.12.9"]


def test_python_names_the_interpreter_and_an_unsupported_one_is_one_line(tmp_path):
    fake_python(tmp_path, "python3.12", "3.12.9")
    old = fake_python(tmp_path, "python3.9", "3.9.18")
    proc = find_python(tmp_path, "python3.9", path_dirs=[tmp_path])
    assert proc.returncode == 1
    assert proc.stdout == (
        "error: PYTHON=python3.9 is Python 3.9.18; retinanet_plugin supports Python "
        + ", ".join(SUPPORTED)
        + "\n"
    )
    proc = find_python(tmp_path, str(old.with_name("missing")), path_dirs=[tmp_path])
    assert (
        proc.returncode == 1 and proc.stdout.startswith("error: PYTHON=") and "3.13" in proc.stdout
    )
    proc = find_python(tmp_path, str(tmp_path / "python3.12"), path_dirs=[tmp_path])
    assert proc.returncode == 0 and proc.stdout.split()[0] == "3.12"


def test_no_supported_python_found_is_an_error(tmp_path):
    fake_python(tmp_path, "python3.9", "3.9.18")
    proc = find_python(tmp_path, path_dirs=[tmp_path])
    assert proc.returncode == 1
    assert proc.stdout.startswith("error: none of python3.10, python3.11, python3.12, python3.13")


def test_make_says_which_python_and_gives_each_minor_version_its_own_venv(tmp_path):
    fake_python(tmp_path, "python3.12", "3.12.9")
    environ = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    for name in ("VENV", "PYTHON", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # when run under make
        environ.pop(name, None)
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "setup", f"PYTHON={tmp_path / 'python3.12'}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("Python 3.12.9 (") and first.endswith("-> .venv-3.12"), first
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "setup",
            "PYTHON=" + str(fake_python(tmp_path, "python3.9", "3.9.1")),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "supports Python 3.10, 3.11, 3.12, 3.13" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def stack_pins(minor: str):
    """{name: version} of tools/stack-requirements.txt for Python ``minor``, its markers applied;
    fails on a package pinned twice or without ==."""
    pins = {}
    for line in STACK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"python_version": minor}):
            continue
        (spec,) = req.specifier
        assert spec.operator == "==", line
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name not in pins, f"{name} is pinned twice for Python {minor}"
        pins[name] = spec.version
    return pins


@pytest.mark.parametrize("minor", SUPPORTED)
def test_one_pin_per_package_on_each_version(minor):
    pins = stack_pins(minor)
    assert {"torch", "torchvision", "numpy", "fvcore", "pycocotools", "onnx"} <= set(pins)
    # every version gets the same packages; only versions differ
    assert set(pins) == set(stack_pins("3.11"))
    # numpy 1.26.4 (sal-detectron2's numpy<2) where it has wheels; numpy 2 on 3.13
    assert pins["numpy"].startswith("2." if minor == "3.13" else "1.26.")


def test_this_environment_is_pip_check_clean_and_detectron2s_cap_is_as_documented():
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import importlib.metadata

    import numpy

    requires = importlib.metadata.requires("sal-detectron2")
    numpy_req = [r for r in requires if Requirement(r).name == "numpy"]
    if int(numpy.__version__.split(".")[0]) >= 2:  # tools/install_stack.sh lifted the cap
        assert numpy_req == ["numpy"]
    else:
        assert numpy_req == ["numpy<2"]
    # the stack installed is the one pinned for this Python
    minor = "%d.%d" % sys.version_info[:2]
    installed = {
        name: importlib.metadata.version(name) for name in stack_pins(minor) if name != "pip"
    }
    assert installed == stack_pins(minor)
