#!/usr/bin/env bash
# Builds the wheel folder that tools/gpu_session.sh installs on a lent GPU machine (CPython 3.12, x86-64, no
# network): the packages listed in tools/gpu/wheels.txt, at the versions tools/stack-requirements.txt pins.
#
#   bash tools/bundle_gpu_wheels.sh [DEST]        # DEST defaults to .whl/ (ignored by git, carried by the device tool)
#
# Idempotent: a wheel already in DEST at the listed version is kept, missing ones are fetched or built, and
# wheels of other versions or of packages no longer listed are removed (the offline install refuses two versions
# of one package). Prints the folder's contents and size, and fails above 48 MiB. Needs the package registry;
# PYTHON (default .venv/bin/python, else python3) runs pip and `wheel`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/.whl}
LIST=$ROOT/tools/gpu/wheels.txt
PINS=$ROOT/tools/stack-requirements.txt
LIMIT_MIB=48
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

# pip, without the lines this machine's pip configuration prints for absent local indexes.
pip_quiet() {
    local out status=0
    out=$("$PYTHON" -m pip "$@" 2>&1) || status=$?
    printf '%s\n' "$out" | grep -v -e "is ignored: it is neither a file nor a directory" -e '^$' >&2 || true
    return $status
}

# The version tools/stack-requirements.txt pins for $1 (names compared as pip does: case and -_. folded).
stack_pin() {
    local want
    want=$(printf '%s' "$1" | tr 'A-Z_.' 'a-z--')
    sed -e 's/#.*//' "$PINS" | while IFS='=' read -r name _ version; do
        [ "$(printf '%s' "$name" | tr -d ' ' | tr 'A-Z_.' 'a-z--')" = "$want" ] && { printf '%s' "$version" | tr -d ' '; break; }
    done
}

# The one wheel in folder $1, or an error naming what was found.
only_wheel() {
    local found=("$1"/*.whl)
    if [ ${#found[@]} -ne 1 ] || [ ! -f "${found[0]}" ]; then
        echo "expected one wheel in $1, found: ${found[*]}" >&2
        return 1
    fi
    printf '%s' "${found[0]}"
}

mkdir -p "$DEST"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
KEEP=()
while read -r name version how _; do
    case "$name" in ''|'#'*) continue ;; esac
    if [ "$version" = "-" ]; then
        version=$(stack_pin "$name")
        [ -n "$version" ] || { echo "error: $name has no pin in $PINS; give its version in $LIST" >&2; exit 1; }
    fi
    stem=$(printf '%s' "$name" | tr -- '-.' '__')   # a wheel file name spells the project name this way
    existing=$(find "$DEST" -maxdepth 1 -iname "${stem}-${version}-*.whl" -printf '%f\n' | head -n 1)
    if [ -n "$existing" ]; then
        echo "have   $existing"
        KEEP+=("$existing")
        continue
    fi
    work="$STAGE/$stem"
    mkdir -p "$work"
    case "$how" in
        binary)
            pip_quiet download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                "${PLATFORMS[@]}" -d "$work" "$name==$version"
            wheel=$(only_wheel "$work")
            ;;
        sdist)
            pip_quiet wheel --quiet --no-deps --no-binary "$name" -w "$work" "$name==$version"
            wheel=$(only_wheel "$work")
            case "$(basename "$wheel")" in
                *-py3-none-any.whl|*-py2.py3-none-any.whl) ;;
                *) echo "error: $(basename "$wheel") built from the sdist is not pure Python" >&2; exit 1 ;;
            esac
            ;;
        retag)
            pip_quiet download --quiet --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
                "${PLATFORMS[@]}" -d "$work/download" "$name==$version"
            "$PYTHON" -m wheel unpack -d "$work/tree" "$(only_wheel "$work/download")" >/dev/null
            tree=$(find "$work/tree" -mindepth 1 -maxdepth 1 -type d)
            find "$tree" -name '*.so' -print -delete | sed 's|^.*/tree/[^/]*/|  dropped compiled module |'
            sed -i 's/^Tag: .*/Tag: py3-none-any/' "$tree"/*.dist-info/WHEEL
            mkdir -p "$work/out"
            "$PYTHON" -m wheel pack -d "$work/out" "$tree" >/dev/null   # rewrites RECORD
            wheel=$(only_wheel "$work/out")
            ;;
        *)
            echo "error: unknown kind '$how' for $name in $LIST (binary, sdist or retag)" >&2
            exit 1
            ;;
    esac
    mv "$wheel" "$DEST/"
    echo "added  $(basename "$wheel")"
    KEEP+=("$(basename "$wheel")")
done < "$LIST"

for path in "$DEST"/*.whl; do
    [ -e "$path" ] || continue
    file=$(basename "$path")
    keep=no
    for k in "${KEEP[@]}"; do [ "$k" = "$file" ] && keep=yes; done
    if [ $keep = no ]; then rm -f "$path"; echo "removed $file (not listed at this version)"; fi
done

bytes=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f 1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "$DEST: ${#KEEP[@]} wheels, $mib MiB ($bytes bytes)"
if [ "$bytes" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "error: the wheel folder is over $LIMIT_MIB MiB" >&2
    exit 1
fi
