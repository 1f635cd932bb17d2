#!/usr/bin/env bash
# Picks the interpreter `make` builds its virtual environment with, and prints one line: "MINOR PATH VERSION"
# (e.g. "3.13 /root/.pyenv/versions/3.13.0/bin/python3.13 3.13.0"), or "error: ..." and exits 1.
#
#   bash tools/find_python.sh [PYTHON]
#
# PYTHON (a command or a path) is used when given; else the newest of python3.13, python3.12, python3.11 and
# python3.10 that runs. A pyenv shim whose version is installed but not selected ("pyenv: python3.13: command not
# found") does not run: then pyenv's own copy of that version is used ($(pyenv root)/versions/3.13.*, the newest
# patch release), so every version pyenv holds counts as found. SUPPORTED below is the list setup.py's
# python_requires and retinanet_plugin/env.py's SUPPORTED_PYTHONS agree with, and tools/stack-requirements.txt pins.
set -uo pipefail
SUPPORTED="3.13 3.12 3.11 3.10"   # newest first: the order of the automatic choice

# "MINOR PATH VERSION" of the interpreter $1 when it runs, else nothing.
describe() {
    "$1" -c 'import sys, platform; print("%d.%d" % sys.version_info[:2], sys.executable, platform.python_version())' \
        2>/dev/null
}

# pyenv's copy of version $1 (e.g. 3.13), the newest patch release installed, or nothing.
pyenv_copy() {
    command -v pyenv >/dev/null 2>&1 || return 0
    local root
    root=$(pyenv root 2>/dev/null) || return 0
    find "$root/versions" -mindepth 1 -maxdepth 1 -name "$1.*" 2>/dev/null | sort -V | while read -r dir; do
        [ -x "$dir/bin/python$1" ] && printf '%s\n' "$dir/bin/python$1"
    done | tail -n 1
}

# "MINOR PATH VERSION" for the command or path $1 (a not-selected pyenv shim resolved to pyenv's copy).
resolve() {
    local found
    found=$(describe "$1")
    if [ -z "$found" ] && [[ "$(basename "$1")" =~ ^python(3\.[0-9]+)$ ]]; then
        local copy
        copy=$(pyenv_copy "${BASH_REMATCH[1]}")
        [ -n "$copy" ] && found=$(describe "$copy")
    fi
    printf '%s' "$found"
}

supported_list() { printf '%s' "$SUPPORTED" | tr ' ' '\n' | sort -V | paste -sd, | sed 's/,/, /g'; }

if [ -n "${1:-}" ]; then
    found=$(resolve "$1")
    if [ -z "$found" ]; then
        echo "error: PYTHON=$1 does not run; retinanet_plugin supports Python $(supported_list)"
        exit 1
    fi
    minor=${found%% *}
    if [[ " $SUPPORTED " != *" $minor "* ]]; then
        echo "error: PYTHON=$1 is Python ${found##* }; retinanet_plugin supports Python $(supported_list)"
        exit 1
    fi
    echo "$found"
    exit 0
fi
for minor in $SUPPORTED; do
    found=$(resolve "python$minor")
    if [ -n "$found" ]; then
        echo "$found"
        exit 0
    fi
done
echo "error: none of python$(supported_list | sed 's/, /, python/g') was found; install one or name it with PYTHON="
exit 1
