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
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from nepa.data.base import DATASETS, DataConfig
from nepa.encoders.base import ENCODERS, EncoderConfig
from nepa.eval.attentive import AttentiveConfig
from nepa.eval.finetune import FinetuneConfig
from nepa.objectives.base import OBJECTIVES, ObjectiveConfig
from nepa.predictor.config import PredictorConfig
from nepa.schema import Config, describe_error, registered


class ConfigError(ValueError):
    """A config that cannot be built; the message names the key and what is valid."""


class OptimConfig(Config):
    """AdamW with a cosine schedule. ``lr`` is the peak rate (the reference scales 3e-4 by
    batch/256); norms, biases and the start token get no weight decay."""

    lr: float = Field(1.5e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup: float = Field(
        0.025, ge=0, description="warm-up length: a fraction of steps (<1) or a step count (>=1)"
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    clip_grad: float | None = Field(1.0, description="max global grad norm; null disables")


class TrainConfig(Config):
    steps: int = Field(1000, gt=0, description="optimizer steps")
    batch_size: int = Field(128, gt=0, description="global batch per optimizer step")
    accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPUs (most lack fast bf16 matmul)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)
    log_every: int = Field(10, gt=0)
    ckpt_every: int = Field(500, gt=0)
    keep_ckpts: int = Field(2, gt=0)
    deterministic: bool = False


class EvalConfig(Config):
    """Evaluation of frozen features: kNN (DINO protocol: cosine, temperature-weighted votes),
    the linear probe (standardised features, L2 chosen on a validation split of train) and the
    attentive probe (``attentive``: learned queries over the tokens of ``layer`` under
    ``attn``); and full fine-tuning (``finetune``: bidirectional, layer-wise lr decay).

    Defaults (README, "Evaluate"): causal attention, the penultimate block, grid2 pooling. In
    sweeps they beat bidirectional attention, the last block and mean pooling.
    """

    k: int = Field(20, gt=0)
    temperature: float = Field(0.07, gt=0)
    layer: int = Field(-2, description="block index (1-based); negative counts from the last")
    pool: Literal["mean", "last", "start", "grid2", "grid4"] = "grid2"
    attn: Literal["causal", "bidirectional"] = "causal"
    max_train: int | None = None
    max_test: int | None = None
    batch_size: int = 256
    # Linear probe: L2 strengths tried, chosen on this fraction of train held out (never test).
    linear_l2: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    attentive: AttentiveConfig = AttentiveConfig()
    finetune: FinetuneConfig = FinetuneConfig()


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
        self.encoder.check_input(self.data.sample_shape)
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
    except BaseException:
        sys.modules.pop(name, None)  # a half-run module must not be found by the next import
        raise
    return module


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
