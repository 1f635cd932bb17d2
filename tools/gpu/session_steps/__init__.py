"""The steps of the GPU session (``tools/gpu/session.py`` is the driver that runs them in order).

Each step is a function ``step(session, record, deadline)``: it runs its commands through
``session.run`` (output streamed to the console and ``log.txt``, stopped at the time limit), fills
``record`` (``status``: ok / failed / timeout / skipped, ``figures``, ``error``, ``note``; in a dry
run a ``dry_run_check`` of the step's own logic on the CPU) and must finish by ``deadline``
(``time.monotonic()``). Modules: ``process`` (running a command), ``summary`` (``summary.json``),
``environment`` (steps 1-2: the machine and the carried wheels), ``build`` (3), ``tests`` (4),
``sanitizer`` (5), ``benchmarks`` (6), ``drivers`` (7: parity and training).
"""

import os

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(os.path.dirname(TOOLS))
WHEEL_DIR = os.path.join(REPO_ROOT, ".whl")
WHEEL_LIST = os.path.join(TOOLS, "wheels.txt")


def bundled_distributions(wheel_list: str = WHEEL_LIST):
    """The distribution names listed in ``tools/gpu/wheels.txt`` (one per line, ``#`` comments)."""
    names = []
    with open(wheel_list) as f:
        for line in f:
            fields = line.split("#", 1)[0].split()
            if fields:
                names.append(fields[0])
    return names


def gpu_check(record, ok: bool, what: str, error=None, **extra) -> None:
    """A dry run's record of a GPU step: skipped (it needs a GPU), after a check of its logic on the
    CPU that passed or failed (``what`` it checked, its figures in ``extra``, ``error`` if it
    failed)."""
    record.update(status="skipped", note="needs a GPU")
    record["dry_run_check"] = dict({"status": "ok" if ok else "failed", "what": what}, **extra)
    if not ok and error:
        record["dry_run_check"]["error"] = error


def read_json(path):
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
