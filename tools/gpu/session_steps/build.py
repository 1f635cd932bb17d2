"""Step 3 of the GPU session: ``retinanet_plugin._C`` built in place (``setup.py build_ext
--inplace``, no network), on the GPU machine with ``FORCE_CUDA=1`` and ``TORCH_CUDA_ARCH_LIST`` =
this GPU only, checked with ``cuobjdump`` and by importing it. A dry run builds in a copy of the
sources (CPU kernels only unless ``--dry-run-cuda-build``), so the checkout's ``_C`` stays as it
is."""

import glob
import json
import os
import re
import shutil

from . import REPO_ROOT, process

SM = r"sm_\d+[a-z]?"
BUILD_ARGS = ("setup.py", "build_ext", "--inplace")
IMPORT_PROBE = (
    "import json, retinanet_plugin, retinanet_plugin._C as C; "
    "print('@@' + json.dumps({'with_cuda': bool(C.WITH_CUDA), 'file': C.__file__, "
    "'package': retinanet_plugin.__file__}))"
)


def source_copy(work):
    """The build's sources copied into ``work`` (the dry run must not replace the checkout's _C)."""
    src = os.path.join(work, "src")
    ignore = shutil.ignore_patterns(
        "*.so", "__pycache__", "build", "*.egg-info", "model_zoo_configs"
    )
    os.makedirs(src)
    shutil.copy2(os.path.join(REPO_ROOT, "setup.py"), src)
    for folder in ("retinanet_plugin", "configs"):
        shutil.copytree(os.path.join(REPO_ROOT, folder), os.path.join(src, folder), ignore=ignore)
    return src


def build_env(session, cuda_build, arch):
    """(environment of the build, the variables set for it)."""
    extra = {"FORCE_CUDA": "1" if cuda_build else "0", "MAX_JOBS": str(os.cpu_count() or 4)}
    if cuda_build:
        extra["TORCH_CUDA_ARCH_LIST"] = arch
        if session.facts.get("cuda_home"):
            extra["CUDA_HOME"] = session.facts["cuda_home"]
    if session.site:  # setuptools from the wheels (the version tested here)
        extra["PYTHONPATH"] = session.site
    env = dict(session.env, **extra)
    if "PYTHONPATH" not in extra:
        env.pop("PYTHONPATH", None)
    return env, extra


def check_cuda_code(session, record, deadline, so, arch, env, problems):
    """cuobjdump must list this GPU's sm_XY code in the built library."""
    cuobjdump = session.facts["cuobjdump"]
    listing = session.run([cuobjdump, "--list-elf", so], session.time_left(deadline), env=env)
    elfs = sorted({m for line in listing["tail"] for m in re.findall(SM, line)})
    ptx = session.run([cuobjdump, "--list-ptx", so], session.time_left(deadline), env=env)
    record["figures"].update(
        cubin_archs=elfs, ptx=sorted({m for line in ptx["tail"] for m in re.findall(SM, line)})
    )
    wanted = "sm_" + arch.replace(".", "")
    if wanted not in elfs:
        problems.append(
            f"cuobjdump --list-elf shows no {wanted} code in {os.path.basename(so)}: {elfs}"
        )


def check_import(session, record, deadline, src, cuda_build, problems):
    """The built ``_C`` is the one imported from ``src``, with CUDA as asked."""
    env = dict(session.env, PYTHONPATH=os.pathsep.join(p for p in (session.site, src) if p))
    result = session.run(
        [session.python, "-c", IMPORT_PROBE], session.time_left(deadline), env=env, cwd=session.work
    )
    loaded = next((json.loads(line[2:]) for line in result["tail"] if line.startswith("@@")), None)
    if loaded is None:
        problems.append(process.error_text(result, "importing the built _C"))
        return
    record["figures"].update(loaded)
    if not os.path.realpath(loaded["file"]).startswith(os.path.realpath(src)):
        problems.append(f"the built _C is not the one imported: {loaded['file']}")
    if loaded["with_cuda"] != cuda_build:
        problems.append(
            f"_C.WITH_CUDA is {loaded['with_cuda']}, the build asked for CUDA={cuda_build}"
        )


def built_library(session, record, deadline, src, env):
    """Runs the build in ``src``; the path of the one ``_C*.so`` it made, or None (recorded)."""
    command = [session.python, *BUILD_ARGS]
    for stale in glob.glob(os.path.join(src, "retinanet_plugin", "_C*.so")):
        os.remove(stale)
    result = session.run(command, session.time_left(deadline, reserve=20), env=env, cwd=src)
    if result["rc"] != 0:
        record.update(
            status=process.result_status(result, False),
            error=process.error_text(result, "the build"),
        )
        return None
    built = glob.glob(os.path.join(src, "retinanet_plugin", "_C*.so"))
    if len(built) != 1:
        record.update(
            status="failed",
            error=f"expected one retinanet_plugin/_C*.so after the build, found {built}",
        )
        return None
    return built[0]


def build(session, record, deadline):
    cuda_build = not session.dry or session.args.dry_run_cuda_build
    src = source_copy(session.work) if session.dry else REPO_ROOT
    arch = session.facts.get("arch_list") if not session.dry else session.args.dry_run_arch
    if cuda_build and not arch:
        record.update(
            status="failed", error="no TORCH_CUDA_ARCH_LIST for this GPU (see step environment)"
        )
        return
    env, extra = build_env(session, cuda_build, arch)
    record["figures"] = {
        "command": " ".join([session.python, *BUILD_ARGS]),
        "cwd": src,
        "env": {k: v for k, v in extra.items() if k != "PYTHONPATH"},
    }
    if session.dry:
        record["note"] = "dry run: built in a temporary copy of the sources, " + (
            "CUDA forced" if cuda_build else "CPU kernels only (FORCE_CUDA=0)"
        )
    so = built_library(session, record, deadline, src, env)
    if so is None:
        return
    record["figures"].update(library=os.path.basename(so), library_bytes=os.path.getsize(so))
    problems = []
    if cuda_build and session.facts.get("cuobjdump"):
        check_cuda_code(session, record, deadline, so, arch, env, problems)
    elif cuda_build:
        note = "cuobjdump not found: CUDA code not checked"
        record["note"] = f"{record['note']}; {note}" if record.get("note") else note
        if not session.dry:
            problems.append(note)
    check_import(session, record, deadline, src, cuda_build, problems)
    if problems:
        record.update(status="failed", error="; ".join(problems))
        return
    session.plugin_root = src
    record["status"] = "ok"
