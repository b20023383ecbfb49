"""Load a finished (or running) run directory: its config, its recipe's registrations, weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from nepa.config import RunConfig, resolve_recipe, validate
from nepa.objectives.base import Objective
from nepa.train.build import build_objective
from nepa.train.checkpoint import latest_checkpoint, load_checkpoint
from nepa.train.rundir import CONFIG, read_meta

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"


def load_run_config(run_dir: Path) -> RunConfig:
    meta = read_meta(run_dir)
    if meta.get("recipe"):
        # Importing the recipe's module registers any user-defined encoder / objective / data.
        resolve_recipe(meta["recipe"])
    return validate(json.loads((run_dir / CONFIG).read_text()))


def load_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    if (run_dir / WEIGHTS).is_file():
        return load_file(str(run_dir / WEIGHTS))
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["model"]


def load_run(run_dir: Path, *, random_init: bool = False) -> tuple[RunConfig, Objective]:
    """The run's objective with trained weights (or, for a baseline, its seeded random init)."""
    cfg = load_run_config(run_dir)
    objective = build_objective(cfg)
    if not random_init:
        objective.load_state_dict(load_weights(run_dir))
    return cfg, objective
