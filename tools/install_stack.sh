#!/usr/bin/env bash
# Installs the pinned stack into the virtual environment whose python is $1 (default .venv/bin/python).
# Detectron2's authors do not publish it on PyPI; sal-detectron2==0.7.2 repackages Detectron2's main branch as a
# cp310-tagged wheel. Its Python code runs on 3.11 (its compiled detectron2._C does not load there, and the plugin
# never needs it), so it is installed with --target into site-packages and its wheel tag is recorded as py3 so that
# `pip check` judges the environment truthfully. Users with access to Detectron2's repository can instead run
# `pip install --no-build-isolation 'git+<detectron2 repository>'`.
set -euo pipefail
PY=${1:-.venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
"$PY" -m pip install --quiet pip==26.3
"$PY" -m pip install --quiet -r "$HERE/stack-requirements.txt"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PY" -m pip install --quiet --upgrade --no-deps --only-binary=:all: --python-version 3.10 \
    --target "$SITE" sal-detectron2==0.7.2
sed -i 's/^Tag: .*/Tag: py3-none-any/' "$SITE"/sal_detectron2-0.7.2.dist-info/WHEEL
"$PY" -m pip check
