"""Load a finished (or running) run directory: its config, its recipe's registrations, weights.

Every way a run directory can fail to load ends in a message that says what is wrong with it:
not a run directory, no weights yet, a damaged checkpoint, or a run written by another nepa
version whose config or weights this version cannot read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import nepa
from nepa.config import ConfigError, RunConfig, resolve_recipe, validate
from nepa.objectives.base import Objective
from nepa.train.build import build_objective
from nepa.train.checkpoint import list_checkpoints, load_checkpoint
from nepa.train.rundir import CONFIG, read_meta

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"


def _written_by(meta: dict) -> str:
    theirs = meta.get("nepa_version", "an unknown version")
    return f"written by nepa {theirs}; this is nepa {nepa.__version__}"


def migrate_config(config: dict, meta: dict) -> dict:
    """A config written by an older nepa, in this version's keys. 0.1.0 named the attention
    mode ``predictor.mask`` (now ``predictor.attn``) and read it causally at evaluation by
    default (``eval.attn: causal``, kept as written)."""
    if meta.get("nepa_version") == "0.1.0":
        predictor = config.get("predictor")
        if isinstance(predictor, dict) and "mask" in predictor:
            predictor = dict(predictor)
            predictor["attn"] = predictor.pop("mask")
            config = {**config, "predictor": predictor}
    return config


def load_run_config(run_dir: Path) -> RunConfig:
    meta = read_meta(run_dir)  # FileNotFoundError: not a run directory
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir} has no {CONFIG}: not a complete nepa run directory")
    if meta.get("recipe"):
        # Importing the recipe's module registers any user-defined encoder / objective / data.
        resolve_recipe(meta["recipe"])
    try:
        cfg = validate(migrate_config(json.loads((run_dir / CONFIG).read_text()), meta))
    except ConfigError as e:
        raise ConfigError(f"{run_dir} cannot be read ({_written_by(meta)}): {e}") from None
    if meta.get("nepa_version") != nepa.__version__:
        log.warning("%s was %s; its config still validates", run_dir, _written_by(meta))
    return cfg


def load_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The exported final weights, else the latest checkpoint's model."""
    if (run_dir / WEIGHTS).is_file():
        try:
            return load_file(str(run_dir / WEIGHTS))
        except (SafetensorError, OSError) as e:
            raise ConfigError(
                f"{run_dir / WEIGHTS} is damaged ({e}); delete it to use the latest checkpoint"
            ) from None
    found = list_checkpoints(run_dir / "checkpoints")
    if not found:
        raise FileNotFoundError(
            f"{run_dir} has no {WEIGHTS} and no checkpoints/step_*.pt: the run has not saved any "
            "weights yet (it writes a checkpoint every train.ckpt_every steps)"
        )
    return load_checkpoint(found[-1])["model"]


def load_run(run_dir: Path, *, random_init: bool = False) -> tuple[RunConfig, Objective]:
    """The run's objective with trained weights (or, for a baseline, its seeded random init)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    objective = build_objective(cfg)
    if not random_init:
        state = load_weights(run_dir)
        try:
            objective.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(
                f"the weights in {run_dir} do not fit the model its config.json describes "
                f"({_written_by(read_meta(run_dir))}): {str(e).splitlines()[0]} ..."
            ) from None
    return cfg, objective
