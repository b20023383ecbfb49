"""Checkpoints: atomic writes, pruning, ordering, RNG round trip, loud failures."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nepa.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state(step: int) -> dict:
    return {
        "model": {"w": torch.full((2, 2), float(step))},
        "optimizer": {},
        "step": step,
        "rng": rng_state(),
        "config": {"seed": 0},
    }


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpts", 7, _state(7), keep=2)
    assert path.name == "step_00000007.pt"
    state = load_checkpoint(path)
    assert state["step"] == 7 and torch.equal(state["model"]["w"], torch.full((2, 2), 7.0))
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_keep_prunes_oldest_and_orders_numerically(tmp_path: Path) -> None:
    d = tmp_path / "ckpts"
    for step in (1, 2, 10, 9, 100):
        save_checkpoint(d, step, _state(step), keep=3)
    assert [p.name for p in list_checkpoints(d)] == [
        "step_00000009.pt",
        "step_00000010.pt",
        "step_00000100.pt",
    ]
    # numbers, not strings, decide the order (a hand-named file without padding)
    (d / "step_99.pt").write_bytes((d / "step_00000009.pt").read_bytes())
    assert latest_checkpoint(d).name == "step_00000100.pt"
    assert [p.name for p in list_checkpoints(d)][-2:] == ["step_99.pt", "step_00000100.pt"]
    (d / "notes.txt").write_text("not a checkpoint")
    (d / ".step_00000200.pt.tmp").write_bytes(b"partial")  # an interrupted write is ignored
    assert latest_checkpoint(d).name == "step_00000100.pt"


def test_interrupted_write_leaves_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "ckpts"
    save_checkpoint(d, 1, _state(1), keep=2)

    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(d, 2, _state(2), keep=2)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(d)] == ["step_00000001.pt"]
    assert load_checkpoint(latest_checkpoint(d))["step"] == 1


def test_no_checkpoint_is_an_error(tmp_path: Path) -> None:
    for d in (tmp_path / "missing", tmp_path):
        with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
            latest_checkpoint(d)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "step_00000001.pt")


def test_damaged_or_foreign_files_raise(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 3, _state(3), keep=1)
    data = path.read_bytes()
    path.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="damaged or not a nepa checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)
    torch.save({"step": 1}, path)
    with pytest.raises(CheckpointError, match=r"lacks \['config', 'model', 'optimizer', 'rng'\]"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint holding an arbitrary object is not executed."""
    path = tmp_path / "step_00000001.pt"
    torch.save({**_state(1), "extra": _Evil()}, path)
    with pytest.raises(CheckpointError, match="damaged or not a nepa checkpoint"):
        load_checkpoint(path)


def test_rng_state_round_trip_through_a_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.rand(5)
    np.random.rand(5)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    path = save_checkpoint(tmp_path, 1, _state(1), keep=1)
    expected = (torch.rand(4), np.random.rand(4), np.random.randn(), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(4), np.random.rand(4), np.random.randn(), random.random())
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]
