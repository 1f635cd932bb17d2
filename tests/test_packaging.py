"""The built wheel carries the compiled op and every shipped config (model-zoo style use after a
plain install), and an installed copy of it, outside the source tree, reports itself ready with
``python -m retinanet_plugin.env`` (what the README tells users who bring their own environment)."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT


@pytest.mark.slow
def test_wheel_ships_configs_and_the_op(tmp_path):
    # Under `make test` (CUDA_HOME, TORCH_CUDA_ARCH_LIST set as for `make build`) the wheel reuses
    # make build's objects in build/temp.* (setup.py): a link, not a compilation. Run otherwise
    # without a GPU, it builds the CPU kernels only rather than CUDA's default architectures.
    env = dict(os.environ)
    if "TORCH_CUDA_ARCH_LIST" not in env and not torch.cuda.is_available():
        env["FORCE_CUDA"] = "0"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-w",
            str(tmp_path),
            REPO_ROOT,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("retinanet_plugin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = Path(REPO_ROOT, "configs")
    expected = {
        f"retinanet_plugin/model_zoo_configs/{p.relative_to(configs)}"
        for p in configs.rglob("*.yaml")
    }
    assert expected and expected <= names, sorted(expected - names)
    # one build for every Python >= 3.10 with this torch: CPython's stable ABI
    assert "-cp310-abi3-" in wheel.name, wheel.name
    assert "retinanet_plugin/_C.abi3.so" in names, sorted(n for n in names if "_C" in n)
    from retinanet_plugin import model_zoo

    # where an installed copy looks first
    assert model_zoo._CONFIG_DIRS[0].name == "model_zoo_configs"

    # A plain (non-editable) install of that wheel, away from the sources: the copy imported is the
    # installed one, its op loads, and the environment report finds nothing missing.
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "retinanet_plugin.env", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the source tree, which `python -m` would put first on sys.path
        env=dict(os.environ, PYTHONPATH=str(site)),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["problems"] == []
    assert result["report"]["op"].startswith(f"loaded ({site / 'retinanet_plugin' / '_C.'}")


def test_the_op_library_needs_no_particular_python():
    """The built ``_C`` is the stable-ABI one and links neither libpython nor torch's Python
    bindings (libtorch_python), so it loads in any Python >= 3.10 that has the same torch."""
    from retinanet_plugin.layers import compiled_ops

    if not compiled_ops.op_available():
        pytest.skip("retinanet_plugin._C is not built")
    path = compiled_ops.library_path()
    assert os.path.basename(path) == "_C.abi3.so", path
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed")
    dynamic = subprocess.run([readelf, "-d", path], capture_output=True, text=True, check=True)
    needed = [
        line.split("[", 1)[1].rstrip("]")
        for line in dynamic.stdout.splitlines()
        if "(NEEDED)" in line
    ]
    assert "libtorch_cpu.so" in needed, needed  # the parse found the entries
    assert not [n for n in needed if n.startswith(("libpython", "libtorch_python"))], needed


def _wheel_with_prebuilt_op(tmp_path, library):
    """``pip wheel`` of the source tree with RETINANET_PLUGIN_OP_LIBRARY=library: the process. Its
    build folder is under tmp_path (setuptools' DIST_EXTRA_CONFIG), so that the source tree's
    build/lib never holds the test's library for a later wheel to pick up as up to date."""
    config = tmp_path / "build.cfg"
    config.write_text(f"[build]\nbuild_base = {tmp_path / 'build'}\n")
    env = dict(
        os.environ,
        RETINANET_PLUGIN_OP_LIBRARY=str(library),
        FORCE_CUDA="0",
        DIST_EXTRA_CONFIG=str(config),
    )
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps"]
    return subprocess.run(
        [*cmd, "-w", str(tmp_path / "wheel"), REPO_ROOT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_a_prebuilt_op_library_is_installed_instead_of_compiling(tmp_path):
    """What .ci/run's other Pythons do: the default's ``_C.abi3.so`` goes into the package as it is
    (a marked copy here, so that a fresh compilation could not pass for it), and a file that is not
    a stable-ABI build is refused with an error naming the variable."""
    from retinanet_plugin.layers import compiled_ops

    if not compiled_ops.op_available():
        pytest.skip("retinanet_plugin._C is not built")
    library = tmp_path / "_C.abi3.so"
    library.write_bytes(Path(compiled_ops.library_path()).read_bytes() + b"prebuilt by the test")
    proc = _wheel_with_prebuilt_op(tmp_path, library)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("retinanet_plugin-*.whl")
    assert zipfile.ZipFile(wheel).read("retinanet_plugin/_C.abi3.so") == library.read_bytes()
    assert (tmp_path / "build").is_dir()  # the build folder was the test's
    source_tree_builds = Path(REPO_ROOT, "build").glob("lib*/retinanet_plugin/_C.abi3.so")
    assert not [p for p in source_tree_builds if p.read_bytes() == library.read_bytes()]

    wrong = tmp_path / "_C.cpython-313-x86_64-linux-gnu.so"
    shutil.copyfile(library, wrong)
    proc = _wheel_with_prebuilt_op(tmp_path, wrong)
    assert proc.returncode != 0
    assert "RETINANET_PLUGIN_OP_LIBRARY=" in proc.stdout + proc.stderr
    assert "not a file named _C.abi3.so" in proc.stdout + proc.stderr


def test_the_op_library_knows_its_torch_and_another_torch_refuses_it(monkeypatch):
    """The library records the torch it was compiled against; under another torch version it is
    reported as not loaded, with both versions named, instead of running on a foreign C++ ABI."""
    from retinanet_plugin.layers import compiled_ops

    if not compiled_ops.op_available():
        pytest.skip("retinanet_plugin._C is not built")
    from retinanet_plugin import _C

    assert _C.TORCH_VERSION == torch.__version__.split("+")[0]
    monkeypatch.setattr(torch, "__version__", "9.8.7+cpu")
    library, error = compiled_ops.load_library()
    assert library is None
    assert f"built against torch {_C.TORCH_VERSION}, this is 9.8.7" in str(error)
    # a nightly or local build of the same release is that release
    monkeypatch.setattr(torch, "__version__", f"{_C.TORCH_VERSION}.dev20261204+cpu")
    assert compiled_ops.load_library() == (_C, None)
