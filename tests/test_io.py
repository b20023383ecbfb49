"""Atomic writes: the whole new file or the old one, and never a temp file left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nepa.io import (
    atomic_dir,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    temp_path,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and _names(tmp_path) == ["a.json"]
    assert temp_path(target) == tmp_path / ".a.json.tmp"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_error_keeps_the_old_file_and_removes_the_temp(tmp_path: Path, error: type) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    with pytest.raises(error), atomic_open(target) as f:
        torch.save({"w": torch.zeros(3)}, f)
        raise error("interrupted mid-write")
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["ckpt.pt"]


def test_failed_rename_removes_the_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(tmp_path / "m.json", "x")
    assert _names(tmp_path) == []


def test_atomic_path_for_writers_that_take_a_name(tmp_path: Path) -> None:
    target = tmp_path / "w.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and not target.exists()
        tmp.write_bytes(b"weights")
    assert target.read_bytes() == b"weights" and _names(tmp_path) == ["w.bin"]
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("writer failed")
    assert target.read_bytes() == b"weights" and _names(tmp_path) == ["w.bin"]


def test_atomic_open_refuses_append(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole new file"), atomic_open(tmp_path / "x", "ab"):
        pass


def test_atomic_dir_replaces_a_stale_folder_and_cleans_up(tmp_path: Path) -> None:
    entry = tmp_path / "cache" / "entry"
    entry.mkdir(parents=True)
    (entry / "stale.npy").write_bytes(b"partial")
    with atomic_dir(entry) as tmp:
        (tmp / "a.npy").write_bytes(b"a")
    assert _names(entry) == ["a.npy"] and _names(entry.parent) == ["entry"]
    with pytest.raises(RuntimeError), atomic_dir(entry) as tmp:
        (tmp / "b.npy").write_bytes(b"b")
        raise RuntimeError("build failed")
    assert _names(entry) == ["a.npy"] and _names(entry.parent) == ["entry"]


def test_files_get_the_users_usual_mode(tmp_path) -> None:
    """safetensors creates 0600 files; every file a run writes is 0644 under umask 022."""
    import stat

    import torch
    from safetensors.torch import save_file

    from nepa.io import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "model.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o644
