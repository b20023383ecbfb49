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
from nepa.train.build import build_objective, initialized_objective
from nepa.train.checkpoint import checkpoint_step, list_checkpoints, load_checkpoint
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


def read_json(path: Path) -> dict:
    """A run directory's JSON file, or ConfigError naming the file and what is wrong."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}): the run "
            "directory is damaged"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file: the run directory is damaged") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__}, not an object: damaged")
    return data


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def import_recipe(run_dir: Path, meta: dict, recipe: str | None = None) -> str | None:
    """Import the run's recipe (``recipe`` if given, else the one ``meta.json`` records, by its
    path and then relative to the run directory) so that its registrations exist; return what
    was imported. Code inside the run directory is never imported: a downloaded run cannot
    run its own code. A recorded recipe that is not found here is skipped with a warning."""
    specs = [recipe] if recipe else [meta.get("recipe"), meta.get("recipe_relative")]
    specs = [s for s in specs if s]
    for spec in specs:
        target, _, func = spec.rpartition(":")
        if target.endswith(".py"):
            path = (
                Path(target) if recipe or spec != meta.get("recipe_relative") else run_dir / target
            )
            if not path.is_file():
                if recipe:
                    raise ConfigError(f"--recipe {recipe}: {path} does not exist")
                continue
            if _inside(path, run_dir):
                raise ConfigError(
                    f"refusing to import {path.resolve()}: it lies inside the run directory "
                    f"{run_dir}, and nepa never runs code from a run directory; pass --recipe "
                    "FILE:FUNCTION with your own copy"
                )
            spec = f"{path.resolve()}:{func}"
        elif _inside(Path.cwd(), run_dir):
            raise ConfigError(
                f"refusing to import module {target!r} from inside the run directory {run_dir}: "
                "run nepa from outside it, or pass --recipe FILE:FUNCTION"
            )
        module, _, _ = resolve_recipe(spec)
        log.info("imported recipe %s (%s) for its registrations", spec, module.__file__)
        return spec
    if specs:
        log.warning(
            "%s records the recipe %s, which is not found here; its built-in components load "
            "without it (pass --recipe FILE:FUNCTION for a recipe that registers its own)",
            run_dir,
            " or ".join(specs),
        )
    return None


def load_run_config(run_dir: Path, recipe: str | None = None) -> RunConfig:
    meta = read_meta(run_dir)  # FileNotFoundError: not a run directory
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir} has no {CONFIG}: not a complete nepa run directory")
    imported = import_recipe(run_dir, meta, recipe)
    try:
        cfg = validate(migrate_config(read_json(run_dir / CONFIG), meta))
    except ConfigError as e:
        hint = "" if imported else " (a component its recipe registers? pass --recipe)"
        raise ConfigError(f"{run_dir} cannot be read ({_written_by(meta)}){hint}: {e}") from None
    if meta.get("nepa_version") != nepa.__version__:
        log.warning("%s was %s; its config still validates", run_dir, _written_by(meta))
    return cfg


def weights_file(run_dir: Path) -> tuple[Path, int | None]:
    """(file, step) of the weights evaluation uses: the exported final weights (step None),
    else the latest checkpoint."""
    if (run_dir / WEIGHTS).is_file():
        return run_dir / WEIGHTS, None
    found = list_checkpoints(run_dir / "checkpoints")
    if not found:
        raise FileNotFoundError(
            f"{run_dir} has no {WEIGHTS} and no checkpoints/step_*.pt: the run has not saved any "
            "weights yet (it writes a checkpoint every train.ckpt_every steps)"
        )
    return found[-1], checkpoint_step(found[-1])


def weights_info(run_dir: Path) -> dict:
    """``{"file": ..., "step": ...}`` for results: which weights were evaluated."""
    path, step = weights_file(run_dir)
    return {"file": str(path.relative_to(run_dir)), "step": step}


def load_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The exported final weights, else the latest checkpoint's model (said in the log)."""
    path, step = weights_file(run_dir)
    if step is None:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ConfigError(
                f"{path} is damaged ({e}); delete it to use the latest checkpoint"
            ) from None
    log.warning(
        "%s has no %s (an unfinished run?): using %s, step %d", run_dir, WEIGHTS, path.name, step
    )
    return load_checkpoint(path)["model"]


def load_run(
    run_dir: Path, *, random_init: bool = False, recipe: str | None = None
) -> tuple[RunConfig, Objective]:
    """The run's objective with trained weights (or, for a baseline, its seeded random init);
    ``recipe`` replaces the recipe the run recorded (one that moved)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, recipe)
    # random init: what a fresh run has before its first step (data-fitted parts included)
    objective = initialized_objective(cfg) if random_init else build_objective(cfg)
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
