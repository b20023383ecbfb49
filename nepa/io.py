"""Atomic writes: a temp file (or folder) beside the target, then ``os.replace``.

A reader sees the old file or the whole new one, never half of one. The temp file is named
``.<name>.tmp`` in the target's folder (same file system, so the rename is atomic); it is
flushed and fsynced before the rename, and removed if anything fails (an exception or an
interrupt), so an error leaves the previous file as it was and no partial file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

PathLike = str | os.PathLike[str]


def temp_path(path: PathLike) -> Path:
    """Where :func:`atomic_path` writes ``path`` before the rename: ``.<name>.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _renamed_on_success(path: PathLike) -> Iterator[Path]:
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        # Some writers (safetensors) create files 0600; every file of a run is 0644 under the
        # usual umask, like any file the user writes.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)  # atomic on POSIX: the old file or the whole new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp path for writers that need a file name (``safetensors.save_file``); on
    success it is fsynced and renamed to ``path``, on any error removed."""
    with _renamed_on_success(path) as tmp:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temp file for writing (``torch.save(state, f)``, ``f.write(...)``); on success
    it is flushed, fsynced and renamed to ``path``, on any error removed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole new file: mode 'w' or 'wb', not {mode!r}")
    with _renamed_on_success(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


@contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a new private folder beside ``path`` (unique, so several processes may build the
    same folder at once); on success an existing ``path`` is deleted and the folder renamed to
    ``path``. The temp folder is removed in every case. If another process renames its folder
    into place between the deletion and the rename, ``os.replace`` raises OSError and ``path``
    holds the other process's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():  # a stale or partial folder, or another process won the race
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
