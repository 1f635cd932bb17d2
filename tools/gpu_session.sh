#!/usr/bin/env bash
# The whole GPU check of the project in one call (issue 11), or its dry run on a machine without a GPU.
#
#   bash tools/gpu_session.sh --out DIR              # on a lent GPU machine, with .whl/ carried (README)
#   bash tools/gpu_session.sh --dry-run --out DIR    # here: what needs no GPU, and the logic of the rest
#
# Steps, time gating and the files written are described in tools/gpu/session.py (`--help` lists the options).
# Everything printed also goes to DIR/log.txt; DIR/summary.json holds each step's status and figures.
# Interpreter: $GPU_SESSION_PYTHON, else (dry run) .venv/bin/python when it exists, else python3.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${GPU_SESSION_PYTHON:-}
if [ -z "$PY" ]; then
    PY=python3
    for arg in "$@"; do
        if [ "$arg" = "--dry-run" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; fi
    done
fi
exec "$PY" "$ROOT/tools/gpu/session.py" --python "$PY" "$@"
