"""A run directory: resolved config, metadata, metrics.jsonl, TensorBoard events, checkpoints."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

import nepa
from nepa.io import atomic_path, atomic_write_text

CONFIG = "config.json"
META = "meta.json"
METRICS = "metrics.jsonl"
WEIGHTS = "model.safetensors"
LOCK = ".lock"
#: what a training run writes; any of it present means the directory holds a run
OWNED = (CONFIG, META, METRICS, WEIGHTS, "checkpoints", "tb")


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (in use, already holding a run, not
    writable); the message says what to do."""


class RunDir:
    """A run's directory, written by rank 0 only, which holds an exclusive lock on it for the
    whole run (an OS file lock: a killed process releases it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ckpt_dir = path / "checkpoints"
        self._tb = None
        self._lock = None
        self._purge_step: int | None = None

    # -- ownership -----------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the directory for this process, creating it; RunDirError if another process
        holds it (naming its PID and host) or it cannot be created."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} is a file, not a directory; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(
                f"cannot create the run directory {self.path}: {e.strerror}; choose another --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1024).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(
                f"{self.path} is in use by another nepa run ({holder}); wait for it to end, or "
                "choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"pid {os.getpid()} on host {platform.node()}, since "
            f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode(),
        )
        self._lock = fd

    def unlock(self) -> None:
        if self._lock is not None:
            os.ftruncate(self._lock, 0)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    def holds_a_run(self) -> list[str]:
        """The names of a training run's files already in the directory."""
        return [n for n in OWNED if (self.path / n).exists()]

    def clear(self) -> None:
        """Remove a previous run's files (``--overwrite``); other files stay."""
        for name in OWNED:
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def truncate_metrics(self, step: int) -> None:
        """Keep only the records up to ``step`` (a resume from that step's checkpoint logs the
        later steps again), and have TensorBoard purge its events after ``step``."""
        file = self.path / METRICS
        if file.exists():
            kept = [
                line
                for line in file.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step
            ]
            atomic_write_text(file, "".join(f"{line}\n" for line in kept))
        self._purge_step = step + 1

    def write_start(self, config: dict[str, Any], meta: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / CONFIG, json.dumps(config, indent=2) + "\n")
        meta = {
            "nepa_version": nepa.__version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "host": platform.node(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **meta,
        }
        atomic_write_text(self.path / META, json.dumps(meta, indent=2) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        tb = self.tensorboard()
        step = record["step"]
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                tb.add_scalar(f"train/{k}", v, step)

    def tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"), purge_step=self._purge_step)
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        self.unlock()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    file = path / METRICS
    return (
        [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        if file.exists()
        else []
    )


def read_meta(path: Path) -> dict[str, Any]:
    file = path / META
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a nepa run directory (no {META})")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{file} is not valid JSON ({e}): the run directory is damaged") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{file} holds a {type(meta).__name__}, not an object: damaged")
    return meta


def export_weights(model: torch.nn.Module, run_dir: Path, name: str = WEIGHTS) -> Path:
    """The final weights as safetensors (atomic), for evaluation and for users' own code."""
    from safetensors.torch import save_file

    final = run_dir / name
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(final) as tmp:
        save_file(weights, str(tmp))
    return final


def relative_recipe(recipe: str | None, run_dir: Path) -> str | None:
    """``FILE:FUNC`` with FILE relative to the run directory, for recipe files; else None."""
    if not recipe:
        return None
    target, _, func = recipe.rpartition(":")
    if not target.endswith(".py"):
        return None
    return f"{os.path.relpath(Path(target).resolve(), run_dir.resolve())}:{func}"
