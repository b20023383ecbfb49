#!/usr/bin/env bash
# Set up ./.venv: nepa installed editable from this clone, on top of the pinned stack of
# requirements-lock.txt. The heavy stack (~7 GB) lives outside the clone, keyed by the lock
# file's hash, and is shared by every clone (and CI run) with the same lock:
# NEPA_VENV_ROOT (default ~/.cache/nepa/venvs). ./.venv itself is a small venv of this clone
# that sees the shared packages through a .pth file, so clones never step on each other.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"nepa needs Python 3.11, found {sys.version.split()[0]}"'
hash=$(sha256sum < requirements-lock.txt | cut -c1-16)
root="${NEPA_VENV_ROOT:-$HOME/.cache/nepa/venvs}"
shared="$root/$hash"
if [ ! -f "$shared/.complete" ]; then
    echo "setup: installing the pinned stack into $shared (first time for this lock: ~7 GB, a few minutes)" >&2
    rm -rf "$shared"
    mkdir -p "$root"
    "$PY" -m venv "$shared"
    "$shared/bin/python" -m pip install -q --upgrade pip
    "$shared/bin/python" -m pip install -q -r requirements-lock.txt
    touch "$shared/.complete"
else
    echo "setup: reusing the pinned stack in $shared" >&2
fi
# The shared stack must not hold a nepa of its own (older setups installed one there).
if "$shared/bin/python" -m pip show -q nepa >/dev/null 2>&1; then
    "$shared/bin/python" -m pip uninstall -q -y nepa >&2
fi
if [ -L .venv ] || [ "$(cat .venv/.nepa-shared 2>/dev/null)" != "$shared" ]; then
    rm -rf .venv
    "$shared/bin/python" -m venv --without-pip .venv
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    shared_site=$("$shared/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "import site; site.addsitedir('$shared_site')" > "$site/_nepa_shared_stack.pth"
    echo "$shared" > .venv/.nepa-shared
fi
# editable_mode=compat puts this clone's root on sys.path through a .pth file. The default
# (a meta-path finder) loses to the clone's own folder: Python started in the folder holding a
# clone named nepa/ (git clone's default) would import that folder as an empty namespace package.
log=$(mktemp)
if ! "$shared/bin/python" -m pip --python .venv/bin/python install -q --no-deps --no-build-isolation \
    --config-settings editable_mode=compat -e . >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
rm -f "$log"
# torchrun lives in the shared stack's bin/; put a launcher for it beside nepa in .venv/bin, so
# `source .venv/bin/activate` makes the README's torchrun commands work.
printf '#!/bin/sh\nexec "$(dirname "$0")/python" -m torch.distributed.run "$@"\n' > .venv/bin/torchrun
chmod +x .venv/bin/torchrun
.venv/bin/python -c "import nepa, torch; print('setup: nepa', nepa.__version__, 'with torch', torch.__version__, 'ready in .venv')" >&2
