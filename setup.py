"""Build script for retinanet_plugin.

``pip install --no-build-isolation -e .`` builds the ``retinanet_plugin._C`` extension against the
torch already installed in the environment: the C++ CPU kernels always, and the CUDA kernels when a
CUDA toolkit is found (``CUDA_HOME``, else the toolkit of the ``nvcc`` on PATH, else
``/usr/local/cuda*``) or ``FORCE_CUDA=1`` is set. ``TORCH_CUDA_ARCH_LIST`` selects the GPU
architectures; without it, the visible GPUs' architectures are built when torch sees a GPU, else
those of DEFAULT_CUDA_ARCHS that the toolkit supports. The library is built against CPython's
stable ABI (``_C.abi3.so``, wheels tagged ``cp310-abi3``): it depends on the torch it was built
with, not on the Python version.

Sources: ``csrc/`` (the ops' entry points, the shared element math ``loss_elements.h``),
``csrc/cpu/`` (the CPU kernels, compiled once per instruction set), ``csrc/cuda/`` (the CUDA kernels
and their ATen driver).
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("retinanet_plugin", "csrc")
# nvcc's flags for csrc/cuda/*.cu (tests/test_cuda_kernels_compile.py compiles with the same ones);
# --threads compiles the architectures two at a time.
NVCC_FLAGS = ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo", "--threads", "2"]


def _toolkit_of(nvcc):
    """The toolkit folder of an nvcc executable: the folder above the real file's bin/, following
    links."""
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _cuda_home():
    """The CUDA toolkit folder that holds lib64/libcudart.so, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(_toolkit_of(nvcc))
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True) + ["/usr/local/cuda"]
    for path in candidates:
        if path and os.path.exists(os.path.join(path, "lib64", "libcudart.so")):
            return os.path.realpath(path)
    return None


def _visible_gpu_gencode_flags():
    """-gencode flags for the architectures of the GPUs torch sees (SASS for each, PTX of the
    newest), or []."""
    import torch

    if not torch.cuda.is_available():
        return []
    archs = sorted(
        {"%d%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    )
    # sm_90a and later "a" variants are not needed: the kernels use no architecture-specific
    # instructions.
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return flags + [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


# RETINANET_PLUGIN_OP_LIBRARY=PATH: install that _C.abi3.so, built by this setup.py for the same
# torch (under any Python), instead of compiling the op again: .ci/run's other Pythons take the
# default's. The library records its torch (_C.TORCH_VERSION); under another torch it does not load
# (retinanet_plugin/layers/compiled_ops.py).
PREBUILT_OP_ENV = "RETINANET_PLUGIN_OP_LIBRARY"

# Data-centre and desktop GPU generations built by default when no GPU is visible (Turing, Ampere
# A100 / RTX 30, Ada, Hopper, Blackwell B200 / RTX 50): binary code for each that nvcc supports,
# plus PTX of the newest, which the driver compiles for any later GPU. Other targets (Jetson sm_87,
# Thor sm_110, GB300 sm_103, ...) run that PTX, or get their own binary code from
# TORCH_CUDA_ARCH_LIST.
DEFAULT_CUDA_ARCHS = (75, 80, 86, 89, 90, 100, 120)


def _default_gencode_flags(nvcc):
    """nvcc -gencode flags for DEFAULT_CUDA_ARCHS that this nvcc can target, plus PTX of the newest
    of them. Given to nvcc directly rather than through TORCH_CUDA_ARCH_LIST, whose parser in
    torch.utils.cpp_extension rejects architectures it does not list."""
    out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True).stdout.split()
    supported = {
        int(a.split("_")[1]) for a in out if a.startswith("sm_") and a.split("_")[1].isdigit()
    }
    archs = sorted(supported.intersection(DEFAULT_CUDA_ARCHS))
    if not archs:
        return []
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return flags + [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


def write_isa_prelude(
    torch_include_dirs,
    # one folder per interpreter: the prelude holds paths into that environment's torch headers
    out_dir=os.path.join(HERE, "build", "generated-" + sys.implementation.cache_tag),
):
    """Writes retinanet_plugin_isa_prelude.h into out_dir and returns out_dir.

    The CPU kernels' AVX2/AVX-512 translation units switch the instruction set on with `#pragma GCC
    target` before they include ATen's SIMD headers. Every header those include from outside their
    cpu/vec/ folders must already have been included before that point, or its inline functions are
    compiled for AVX in one translation unit and for the baseline in the others, and the linker may
    keep the AVX copy. The list is read from the compiler (`-H`) for the torch being built against,
    so it holds for any torch version.
    """
    cxx = os.environ.get("CXX", "c++")
    probe = (  # the AVX-512 preamble (csrc/cpu/focal_loss_cpu_isa.h)
        '#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")\n'
        "#define CPU_CAPABILITY AVX512\n#define CPU_CAPABILITY_AVX512\n"
        "#include <ATen/cpu/vec/functional.h>\n#include <ATen/cpu/vec/vec.h>\n"
    )
    cmd = [
        cxx,
        "-std=c++20",
        *[f"-I{d}" for d in torch_include_dirs],
        "-H",
        "-E",
        "-x",
        "c++",
        "-",
        "-o",
        os.devnull,
    ]
    run = subprocess.run(cmd, input=probe, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(
            f"probing ATen's SIMD headers failed ({' '.join(cmd)}):\n{run.stderr[-2000:]}"
        )
    headers, stack = [], []
    for line in run.stderr.splitlines():
        dots, _, path = line.partition(" ")
        if not dots or set(dots) != {"."}:
            continue  # the include tree ends where the "multiple include guards" notes begin
        depth = len(dots)
        del stack[depth - 1 :]
        parent = stack[-1] if stack else ""
        stack.append(path)
        vec = "/cpu/vec/"  # ATen/cpu/vec/ and torch/headeronly/cpu/vec/
        if (
            vec in parent
            and vec not in path
            and os.path.basename(path) != "sleef.h"
            and path not in headers
        ):
            headers.append(path)
    os.makedirs(out_dir, exist_ok=True)
    text = (
        "// Generated by setup.py (write_isa_prelude): the headers ATen's SIMD headers include.\n"
        "#pragma once\n"
    )
    text += "".join(f'#include "{os.path.realpath(h)}"\n' for h in headers)
    target = os.path.join(out_dir, "retinanet_plugin_isa_prelude.h")
    # unchanged: keep the timestamp for rebuilds
    if not os.path.exists(target) or open(target).read() != text:
        with open(target + ".tmp", "w") as f:
            f.write(text)
        os.replace(target + ".tmp", target)
    return out_dir


def get_extensions():
    from torch.utils import cpp_extension

    sources = sorted(
        glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "*", "*.cpp"))
    )
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    if not sources:
        return []
    cuda_home = _cuda_home()
    use_cuda = bool(cuda_sources) and (
        os.environ.get("FORCE_CUDA", "0") == "1"
        or (cuda_home is not None and os.environ.get("FORCE_CUDA") != "0")
    )
    # torch >= 2.10 headers need C++20 (std::strong_ordering, requires-clauses). -g0 drops the
    # debug information Python's own CFLAGS ask for: a quarter of the compile time of a translation
    # unit that includes ATen's SIMD headers, and 9 of the 10 MB of its object file.
    extra_compile_args = {"cxx": ["-O3", "-std=c++20", "-g0"]}
    define_macros = []
    extension = cpp_extension.CppExtension
    if use_cuda:
        if cuda_home is None:
            raise RuntimeError(
                "FORCE_CUDA=1 but no CUDA toolkit with lib64/libcudart.so was found; set CUDA_HOME"
            )
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        extension = cpp_extension.CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = list(NVCC_FLAGS)
        # else torch turns TORCH_CUDA_ARCH_LIST into flags
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            extra_compile_args["nvcc"] += _visible_gpu_gencode_flags() or _default_gencode_flags(
                os.path.join(cuda_home, "bin", "nvcc")
            )
    print(f"retinanet_plugin: building _C with {'CPU+CUDA' if use_cuda else 'CPU only'} kernels")
    return [
        extension(
            "retinanet_plugin._C",
            sources,
            include_dirs=[os.path.abspath(CSRC), write_isa_prelude(cpp_extension.include_paths())],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            # CPython's stable ABI (torch defines Py_LIMITED_API and links no libtorch_python):
            # one _C.abi3.so for every Python >= 3.10 with this torch (csrc/ops.cpp)
            py_limited_api=True,
        )
    ]


class BuildPyWithConfigs(build_py):
    """Ships the top-level ``configs/`` folder inside the package as
    ``retinanet_plugin/model_zoo_configs``."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "retinanet_plugin", "model_zoo_configs")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, "configs"), target)


def _build_ext_in_build_folder(build_extension):
    """torch's ``BuildExtension``, compiling into ``build/temp.<platform>-<cache tag>`` whatever the
    command: pip's editable install would compile into a temporary folder and delete it, so that
    every ``make build`` and every wheel after it compiled everything again. With one folder, ninja
    recompiles only what changed (sources, flags) between editable installs, wheels and rebuilds."""

    class BuildExtInBuildFolder(build_extension):
        def finalize_options(self):
            super().finalize_options()
            # the name setuptools' build command gives build_temp
            tag = f"{self.plat_name}-{sys.implementation.cache_tag}"
            if sysconfig.get_config_var("Py_GIL_DISABLED"):
                tag += "t"
            if hasattr(sys, "gettotalrefcount"):
                tag += "-pydebug"
            self.build_temp = os.path.join(HERE, "build", f"temp.{tag}")

        def build_extension(self, ext):
            prebuilt = os.environ.get(PREBUILT_OP_ENV)
            if not prebuilt:
                return super().build_extension(ext)
            target = self.get_ext_fullpath(ext.name)
            name = os.path.basename(target)  # _C.abi3.so
            if not os.path.isfile(prebuilt) or os.path.basename(prebuilt) != name:
                raise RuntimeError(
                    f"{PREBUILT_OP_ENV}={prebuilt}: not a file named {name} "
                    "(a stable-ABI build of this setup.py)"
                )
            print(f"retinanet_plugin: installing {prebuilt} ({PREBUILT_OP_ENV}), not compiling")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(prebuilt, target)

        def run(self):
            super().run()
            if self.inplace or getattr(self, "editable_mode", False):
                for ext in self.extensions:
                    _remove_stale_builds(ext.name, self.get_ext_filename(ext.name))

    return BuildExtInBuildFolder.with_options(no_python_abi_suffix=False)


def _remove_stale_builds(ext_name, built_filename):
    """Deletes the source tree's other builds of ``ext_name`` (``_C.cpython-313-...so`` from before
    the stable-ABI build, or another variant's): Python would import a version-tagged file before
    ``_C.abi3.so``, and so run an old build of the op."""
    folder = os.path.join(HERE, *ext_name.split(".")[:-1])
    stem = ext_name.split(".")[-1]
    keep = os.path.basename(built_filename)
    for path in glob.glob(os.path.join(folder, stem + ".*so")):
        if os.path.basename(path) != keep:
            print(f"retinanet_plugin: removing the stale build {os.path.relpath(path, HERE)}")
            os.remove(path)


def _cmdclass():
    cmdclass = {"build_py": BuildPyWithConfigs}
    try:
        from torch.utils.cpp_extension import BuildExtension

        cmdclass["build_ext"] = _build_ext_in_build_folder(BuildExtension)
    except ImportError:  # metadata-only commands without torch
        pass
    return cmdclass


def _ext_modules():
    try:
        return get_extensions()
    except ImportError:
        return []


setup(
    name="retinanet_plugin",
    version="0.1.0",
    description="RetinaNet (Focal Loss for Dense Object Detection) as a Detectron2 plugin",
    packages=find_packages(include=["retinanet_plugin", "retinanet_plugin.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "fvcore", "pycocotools"],
    ext_modules=_ext_modules(),
    cmdclass=_cmdclass(),
    # the wheel's tag: cp310-abi3 (one wheel per torch and platform, not per Python)
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    zip_safe=False,
)
