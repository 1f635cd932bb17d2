"""Build script for retinanet_plugin.

``pip install --no-build-isolation -e .`` builds the ``retinanet_plugin._C`` extension against the
torch already installed in the environment: the C++ CPU kernels always, and the CUDA kernels when a
CUDA toolkit is found (``CUDA_HOME``) or ``FORCE_CUDA=1`` is set. ``TORCH_CUDA_ARCH_LIST`` selects the
GPU architectures; without it, every architecture the toolkit supports from sm_75 up is built.
"""
import glob
import os
import shutil
import subprocess

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("retinanet_plugin", "csrc")


def _cuda_home():
    """The CUDA toolkit folder that holds lib64/libcudart.so, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        # `nvcc` may be a wrapper script: ask the compiler where it really lives.
        try:
            out = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True)
            for line in (out.stdout + out.stderr).splitlines():
                if "TOP=" in line:
                    candidates.append(line.split("TOP=", 1)[1].strip())
        except OSError:
            pass
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True) + ["/usr/local/cuda"]
    for path in candidates:
        if path and os.path.exists(os.path.join(path, "lib64", "libcudart.so")):
            return os.path.realpath(path)
    return None


def _default_gencode_flags(nvcc):
    """nvcc -gencode flags for every real architecture from sm_75 up that this nvcc can target, plus PTX of the
    newest (so later GPUs can JIT it). Given to nvcc directly rather than through TORCH_CUDA_ARCH_LIST, whose
    parser in torch.utils.cpp_extension rejects architectures it does not list (e.g. CUDA 13's sm_88)."""
    out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True).stdout.split()
    archs = sorted({int(a.split("_")[1]) for a in out if a.startswith("sm_") and a.split("_")[1].isdigit()})
    archs = [a for a in archs if a >= 75]
    if not archs:
        return []
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return flags + [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


def get_extensions():
    from torch.utils import cpp_extension

    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "*.cu")))
    if not sources:
        return []
    cuda_home = _cuda_home()
    use_cuda = bool(cuda_sources) and (
        os.environ.get("FORCE_CUDA", "0") == "1" or (cuda_home is not None and os.environ.get("FORCE_CUDA") != "0")
    )
    # torch >= 2.10 headers need C++20 (std::strong_ordering, requires-clauses).
    extra_compile_args = {"cxx": ["-O3", "-std=c++20"]}
    define_macros = []
    extension = cpp_extension.CppExtension
    if use_cuda:
        if cuda_home is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit with lib64/libcudart.so was found; set CUDA_HOME")
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        extension = cpp_extension.CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):  # else torch turns TORCH_CUDA_ARCH_LIST into flags
            extra_compile_args["nvcc"] += _default_gencode_flags(os.path.join(cuda_home, "bin", "nvcc"))
    print(f"retinanet_plugin: building _C with {'CPU+CUDA' if use_cuda else 'CPU only'} kernels")
    return [
        extension(
            "retinanet_plugin._C",
            sources,
            include_dirs=[os.path.abspath(CSRC)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
        )
    ]


class BuildPyWithConfigs(build_py):
    """Ships the top-level ``configs/`` folder inside the package as ``retinanet_plugin/model_zoo_configs``."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "retinanet_plugin", "model_zoo_configs")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, "configs"), target)


def _cmdclass():
    cmdclass = {"build_py": BuildPyWithConfigs}
    try:
        from torch.utils.cpp_extension import BuildExtension

        cmdclass["build_ext"] = BuildExtension.with_options(no_python_abi_suffix=False)
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
    zip_safe=False,
)
