"""The run config: one validated pydantic model for a whole run, built by a recipe.

A recipe is a plain Python function returning :class:`RunConfig`. ``--set key=value``
overrides rebuild and re-validate the whole config.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from pydantic import ValidationError, model_validator

from nepa.data.base import DATASETS, DataConfig
from nepa.encoders.base import ENCODERS, EncoderConfig
from nepa.eval.config import EvalConfig
from nepa.objectives.base import OBJECTIVES, ObjectiveConfig
from nepa.predictor.config import PredictorConfig
from nepa.schema import Config, describe_error, registered
from nepa.train.config import TrainConfig
from nepa.train.optim import OptimConfig

# Each component's config lives beside its code; these names are re-exported for recipes.
__all__ = [
    "ConfigError",
    "EvalConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "load_recipe",
    "validate",
]


class ConfigError(ValueError):
    """A config that cannot be built; the message names the key and what is valid."""


class RunConfig(Config):
    name: str = "nepa"
    seed: int = 0
    data: registered(DATASETS, DataConfig)
    encoder: registered(ENCODERS, EncoderConfig)
    predictor: PredictorConfig = PredictorConfig()
    objective: registered(OBJECTIVES, ObjectiveConfig)
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _compatible(self) -> RunConfig:
        fields = self.data.fields
        for part in (self.encoder, self.objective):
            try:
                part.check_fields(fields)
            except ValueError as e:
                what = "encoder" if part is self.encoder else "objective"
                raise ValueError(
                    f"{what} {part.kind!r} cannot read data {self.data.kind!r}: {e}"
                ) from None
        grid = self.encoder.grid(fields)
        if grid is not None:
            try:
                self.objective.check_grid(tuple(grid))
            except ValueError as e:
                raise ValueError(
                    f"objective {self.objective.kind!r} cannot work on the encoder's {tuple(grid)} "
                    f"token grid: {e}"
                ) from None
        if self.train.batch_size % self.train.accum:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} must be divisible by train.accum={self.train.accum}"
            )
        return self

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def validate(data: dict[str, Any]) -> RunConfig:
    """dict -> RunConfig, raising ConfigError with dotted keys and valid choices."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("invalid config:\n" + describe_error(e, RunConfig)) from None


def parse_value(text: str) -> Any:
    """'3e-4' -> 0.0003, 'true' -> True, 'null'/'none' -> None, '[0.5, 2]' -> list, else str."""
    if text.lower() in ("none", "null"):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return text


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    data = cfg.model_dump(mode="python")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:depth]) or "the top level"
                valid = ", ".join(node) if isinstance(node, dict) else "(not a section)"
                raise ConfigError(
                    f"unknown config key {key!r}: {part!r} is not in {where}; valid keys: {valid}"
                )
            if depth == len(parts) - 1:
                node[part] = parse_value(raw.strip())
            else:
                node = node[part]
    return validate(data)


def import_file(path: str | Path) -> Any:
    """Import a user's Python file as a module (its decorators register components)."""
    path = Path(path).resolve()
    if not path.exists():
        raise ConfigError(f"recipe file not found: {path}")
    name = "nepa_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:
        sys.modules.pop(name, None)  # a half-run module must not be found by the next import
        where = _user_frame(e, path)
        raise ConfigError(
            f"{path}{where} raised {type(e).__name__} on import: {e} (--debug shows the traceback)"
        ) from e
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _user_frame(e: BaseException, path: Path) -> str:
    """``:LINE`` of the deepest traceback frame in ``path`` (or of a SyntaxError), else ''."""
    if isinstance(e, SyntaxError) and e.lineno:
        return f":{e.lineno}"
    lines = [
        lineno
        for frame, lineno in traceback.walk_tb(e.__traceback__)
        if frame.f_code.co_filename == str(path)
    ]
    return f":{lines[-1]}" if lines else ""


def _import_module(target: str) -> tuple[Any, bool]:
    """Import ``target``; like ``python -m``, also look in the working directory (a console
    script's sys.path does not hold it). Returns (module, found only via the working dir)."""
    try:
        return importlib.import_module(target), False
    except ModuleNotFoundError as e:
        if e.name is None or not target.startswith(e.name) or os.getcwd() in sys.path:
            raise ConfigError(f"cannot import recipe module {target!r}: {e}") from None
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target), True
    except ModuleNotFoundError as e:
        raise ConfigError(f"cannot import recipe module {target!r}: {e}") from None


def resolve_recipe(spec: str) -> tuple[Any, str, str]:
    """'recipes/cifar10.py:small' or 'recipes.cifar10:small' -> (module, function name, canonical spec)."""
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func:
        raise ConfigError(
            f"recipe {spec!r} must be MODULE_OR_FILE:FUNCTION, e.g. recipes/cifar10.py:small"
        )
    if target.endswith(".py") or Path(target).exists():
        module = import_file(target)
        canonical = f"{Path(target).resolve()}:{func}"
    else:
        module, local = _import_module(target)
        # A module found only through the working directory is recorded by path, so that
        # `nepa eval` finds it again from any directory.
        canonical = f"{Path(module.__file__).resolve()}:{func}" if local else spec
    if not callable(getattr(module, func, None)):
        public = [
            n
            for n, v in vars(module).items()
            if callable(v)
            and not n.startswith("_")
            and getattr(v, "__module__", None) == module.__name__
        ]
        raise ConfigError(
            f"{target} has no recipe function {func!r}; functions there: {', '.join(public)}"
        )
    return module, func, canonical


def load_recipe(spec: str, overrides: list[str] | None = None) -> tuple[RunConfig, str]:
    module, func, canonical = resolve_recipe(spec)
    cfg = getattr(module, func)()
    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"recipe {spec} returned {type(cfg).__name__}, expected nepa.RunConfig")
    return apply_overrides(cfg, overrides or []), canonical
