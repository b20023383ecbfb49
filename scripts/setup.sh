#!/usr/bin/env bash
# Set up ./.venv with the pinned stack (requirements-lock.txt) and nepa installed editable.
# The environment itself lives outside the clone, keyed by the lock file's hash, so a second
# clone (or CI) with the same lock reuses it: NEPA_VENV_ROOT (default ~/.cache/nepa/venvs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"nepa needs Python 3.11, found {sys.version.split()[0]}"'
hash=$(cat requirements-lock.txt | sha256sum | cut -c1-16)
root="${NEPA_VENV_ROOT:-$HOME/.cache/nepa/venvs}"
venv="$root/$hash"
if [ ! -f "$venv/.complete" ]; then
    echo "setup: creating $venv (first time for this lock file: ~7 GB, a few minutes)" >&2
    rm -rf "$venv"
    mkdir -p "$root"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r requirements-lock.txt
    touch "$venv/.complete"
else
    echo "setup: reusing $venv" >&2
fi
log=$(mktemp)
if ! "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e . >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
rm -f "$log"
ln -sfn "$venv" .venv
"$venv/bin/python" -c "import nepa; print('setup: nepa', nepa.__version__, 'ready in .venv')" >&2
