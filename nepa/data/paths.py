"""Where data lives: user path strings and the on-disk cache.

A path string in a config may hold environment variables (``${NEPA_DATA_DIR}/mnist.npz``), a
leading ``~``, or the prefix ``nepa:`` for a file shipped inside the package
(``nepa:assets/demo/demo.npz``).
"""

from __future__ import annotations

import hashlib
import os
import re
from importlib import resources
from pathlib import Path

PACKAGE_PREFIX = "nepa:"
_ENV_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def resolve_path(spec: str, *, must_exist: bool = True) -> Path:
    """Turn a config path string into an absolute path.

    Raises FileNotFoundError (when ``must_exist``) naming the resolved path and, if the string
    uses environment variables that are unset, which ones to set.
    """
    if spec.startswith(PACKAGE_PREFIX):
        path = Path(str(resources.files("nepa").joinpath(spec[len(PACKAGE_PREFIX) :])))
    else:
        path = Path(os.path.expanduser(os.path.expandvars(spec)))
    path = path.absolute()
    if must_exist and not path.exists():
        raise FileNotFoundError(_missing_message(spec, path))
    return path


def _missing_message(spec: str, path: Path) -> str:
    msg = f"data path {spec!r} resolves to {path}, which does not exist"
    unset = [a or b for a, b in _ENV_VAR.findall(spec) if (a or b) not in os.environ]
    if unset:
        names = ", ".join(dict.fromkeys(unset))
        msg += f"; the environment variable(s) {names} are unset: set them, e.g. export {unset[0]}=/path/to/data"
    elif spec.startswith(PACKAGE_PREFIX):
        msg += "; `nepa:` paths name files inside the installed nepa package (nepa/assets/...)"
    return msg


def cache_root() -> Path:
    """Folder for decoded-data caches: ``$NEPA_CACHE_DIR/data`` (default ``~/.cache/nepa/data``)."""
    base = os.environ.get("NEPA_CACHE_DIR") or "~/.cache/nepa"
    return Path(base).expanduser() / "data"


def file_fingerprint(path: Path, *extra: str) -> str:
    """A short key that changes when the file (absolute path, size, mtime) or ``extra`` changes."""
    st = path.stat()
    return stable_hash(str(path.absolute()), str(st.st_size), str(st.st_mtime_ns), *extra)


def stable_hash(*parts: str) -> str:
    """16 hex digits of sha256 over ``parts``; identical in every process."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
