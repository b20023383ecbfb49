"""Atomic checkpoints (write, fsync, rename) and a loader that never fails silently.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain containers,
never arbitrary pickled objects.
"""

from __future__ import annotations

import errno
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nepa.io import atomic_open


class CheckpointError(RuntimeError):
    pass


class DiskFullError(CheckpointError):
    """A checkpoint could not be written for lack of space; the run can resume once there is."""


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


CKPT_RE = re.compile(r"step_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_tuples(state["python"]))


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state: about the size of its checkpoint."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(state_bytes(v) for v in state)
    return 0


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int | None) -> Path:
    """Write ``step_XXXXXXXX.pt`` atomically, then prune all but the newest ``keep`` (None: prune
    nothing, for the checkpoint a stop writes). A full disk is a CheckpointError saying how much
    space is needed; the partial file is removed and the older checkpoints stay."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:08d}.pt"
    try:
        with atomic_open(final) as f:  # a reader sees the old file or the whole new one
            torch.save(state, f)
    except (OSError, RuntimeError) as e:
        need = state_bytes(state)
        free = shutil.disk_usage(ckpt_dir).free
        full = getattr(e, "errno", None) == errno.ENOSPC or free < need
        if not full:
            raise
        last = list_checkpoints(ckpt_dir)
        kept = f"the last good checkpoint {last[-1].name} is kept" if last else "no checkpoint yet"
        raise DiskFullError(
            f"no space left on the device of {ckpt_dir} to write step {step}: need about "
            f"{_mb(need)}, {_mb(free)} free; {kept}. Free some space and rerun with --resume"
        ) from None
    if keep is not None:
        for old in list_checkpoints(ckpt_dir)[:-keep]:
            old.unlink()
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if CKPT_RE.search(p.name)]
    return sorted(found, key=lambda p: int(CKPT_RE.search(p.name).group(1)))


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name (``step_00000100.pt`` -> 100)."""
    return int(CKPT_RE.search(path.name).group(1))


def latest_checkpoint(ckpt_dir: Path) -> Path:
    found = list_checkpoints(ckpt_dir)
    if not found:
        raise CheckpointError(
            f"no checkpoint to resume from in {ckpt_dir} (expected files like step_00000100.pt); "
            "refusing to start a fresh run silently: drop --resume to start over"
        )
    return found[-1]


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt zips
        # Only torch's first line: its advice to retry with weights_only=False would unpickle
        # whatever the file holds, which nepa never does.
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a nepa checkpoint ({type(e).__name__}: {why}); "
            "nepa reads checkpoints as plain tensors and never unpickles objects. Older "
            "checkpoints in the same folder are left untouched; delete this file to resume from "
            "the previous one."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not a nepa training checkpoint"
        )
    missing = {"model", "optimizer", "step", "rng", "config"} - set(state)
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {sorted(missing)}: not a nepa training checkpoint"
        )
    return state
