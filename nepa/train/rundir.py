"""A run directory: resolved config, metadata, metrics.jsonl, TensorBoard events, checkpoints."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import nepa
from nepa.io import atomic_path, atomic_write_text

CONFIG = "config.json"
META = "meta.json"
METRICS = "metrics.jsonl"


class RunDir:
    """Written by rank 0 only; other ranks get ``None`` from :func:`open_run_dir`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ckpt_dir = path / "checkpoints"
        self._tb = None

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

            self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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
    return json.loads(file.read_text())


def export_weights(model: torch.nn.Module, run_dir: Path, name: str = "model.safetensors") -> Path:
    """The final weights as safetensors (atomic), for evaluation and for users' own code."""
    from safetensors.torch import save_file

    final = run_dir / name
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(final) as tmp:
        save_file(weights, str(tmp))
    return final
