"""Train and evaluate every (cell, seed) of a comparison, resumably.

A run is trained once (resumed from its latest checkpoint if it was interrupted) and each
evaluation is stored in the run's ``compare.json`` as soon as it finishes, so rerunning the same
command redoes nothing that is done. A run whose training config no longer matches the plan is
refused; one whose evaluation settings changed is re-evaluated.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nepa.compare.grid import Cell, cell_config
from nepa.config import ConfigError, RunConfig
from nepa.device import pick_device
from nepa.eval.load import WEIGHTS, load_weights
from nepa.io import atomic_write_text
from nepa.train.build import build_objective, initialized_objective
from nepa.train.checkpoint import list_checkpoints
from nepa.train.resume import NO_EFFECT_ON_TRAINING, flatten
from nepa.train.rundir import read_metrics
from nepa.train.trainer import train

if TYPE_CHECKING:
    from nepa.eval.store import FeatureStore

log = logging.getLogger(__name__)
RUN_STATE = "compare.json"
PLAN = "plan.json"


@dataclass(frozen=True)
class Plan:
    recipe: str  # canonical MODULE_OR_FILE:FUNCTION (the first, when several are compared)
    overrides: tuple[str, ...]  # --set, applied to every cell
    cells: tuple[Cell, ...]
    seeds: tuple[int, ...]
    evals: tuple[str, ...]
    random_init: bool  # also evaluate each run's architecture at its seeded random init
    recipes: tuple[str, ...] = ()  # every recipe compared (the ``recipe`` axis), when several
    equal_flops: bool = False  # each recipe's train.steps set to the first recipe's FLOPs

    @property
    def all_recipes(self) -> list[str]:
        return list(self.recipes) or [self.recipe]

    def runs(self) -> list[tuple[Cell, int]]:
        return [(c, s) for c in self.cells for s in self.seeds]

    def eval_keys(self) -> list[str]:
        inits = [False, True] if self.random_init else [False]
        return [f"{p}@init" if init else p for p in self.evals for init in inits]


def check_plan(out: Path, plan: Plan) -> None:
    """An output directory belongs to one recipe and one set of --set overrides; cells, seeds
    and evaluations may be added later."""
    file = out / PLAN
    if file.is_file():
        old = json.loads(file.read_text())
        old_recipes = old.get("recipes") or [old["recipe"]]
        if old_recipes != plan.all_recipes or old["overrides"] != list(plan.overrides):
            raise ConfigError(
                f"{out} holds a comparison of {', '.join(old_recipes)} with --set "
                f"{old['overrides']}; use another --out for different recipes or --set"
            )
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "recipe": plan.recipe,
        "recipes": plan.all_recipes,
        "equal_flops": plan.equal_flops,
        "overrides": list(plan.overrides),
        "cells": [c.as_dict() for c in plan.cells],
        "seeds": list(plan.seeds),
        "evals": list(plan.evals),
        "random_init": plan.random_init,
    }
    file.write_text(json.dumps(record, indent=2) + "\n")


def train_part(cfg: RunConfig) -> dict:
    """The config without what may change without retraining (evaluation, logging cadence)."""
    d = cfg.model_dump(mode="json")
    d.pop("eval")
    for key in NO_EFFECT_ON_TRAINING:
        section, name = key.split(".")
        d[section].pop(name, None)
    return d


def changed(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ. Keys only one side has are not counted: a field added
    to the config schema later (with its default) must not invalidate finished runs."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() & b.keys() if a[k] != b[k])


class Comparison:
    def __init__(
        self,
        plan: Plan,
        base: RunConfig | dict[str, RunConfig],
        out: Path,
        *,
        progress: bool = False,
    ):
        """``base``: the recipe's config, or each recipe's (by canonical spec) when several."""
        bases = base if isinstance(base, dict) else {plan.recipe: base}
        self.plan, self.bases, self.out, self.progress = plan, bases, out, progress
        self.base = bases[plan.recipe]
        self._splits: dict[str, tuple] = {}
        from nepa.eval.run import PROTOCOLS

        self._protocols = PROTOCOLS.names()
        unknown = [e for e in plan.evals if e not in PROTOCOLS]
        if unknown:
            raise ConfigError(f"unknown --eval {unknown}; valid: {', '.join(self._protocols)}")
        # Every cell's config is built before anything runs: a bad value fails now, not later.
        self.configs = {(c, s): cell_config(bases, c, s) for c, s in plan.runs()}

    def run_dir(self, cell: Cell, seed: int) -> Path:
        return self.out / "runs" / f"{cell.name}-s{seed}"

    def run_all(self, on_done: Callable[[], None] | None = None) -> bool:
        """Every run in plan order; ``on_done`` after each (to rewrite the report). Returns
        False if a run was stopped before it finished (SIGTERM, bad data)."""
        for i, (cell, seed) in enumerate(self.plan.runs(), 1):
            log.info("compare: run %d/%d: %s seed %d", i, len(self.plan.runs()), cell.name, seed)
            if not self.run_one(cell, seed):
                return False
            if on_done:
                on_done()
        return True

    def run_one(self, cell: Cell, seed: int) -> bool:
        cfg, rd = self.configs[(cell, seed)], self.run_dir(cell, seed)
        state = self._state(rd, cfg)
        if not (rd / WEIGHTS).is_file() and not self._train(cfg, rd, state, cell):
            return False
        stores: dict[str, FeatureStore] = {}  # per weights ("" trained, "init"), for this run
        try:
            for key in self.plan.eval_keys():
                if key not in state["evals"]:
                    state["evals"][key] = self._evaluate(cfg, rd, key, stores)
                    self._save(rd, state)
        finally:
            for store in stores.values():
                store.flush()  # the features files written in the background
        return True

    # -- pieces ------------------------------------------------------------------------------
    def _state(self, rd: Path, cfg: RunConfig) -> dict:
        file = rd / RUN_STATE
        state = json.loads(file.read_text()) if file.is_file() else {}
        train_cfg, eval_cfg = train_part(cfg), cfg.eval.model_dump(mode="json")
        diff = changed(state["train_config"], train_cfg) if state else []
        if diff:
            raise ConfigError(
                f"{rd} was trained with another config than this comparison now gives it "
                f"(at {', '.join(diff)}: was the recipe edited?); delete that run directory or "
                "use another --out"
            )
        evals = state.get("evals", {})
        if changed(state.get("eval_config", {}), eval_cfg):
            evals = {}  # the evaluation settings changed: evaluate again
        return {
            "train_config": train_cfg,
            "eval_config": eval_cfg,
            "train_seconds": state.get("train_seconds", 0.0),
            "evals": evals,
        }

    def _save(self, rd: Path, state: dict) -> None:
        atomic_write_text(rd / RUN_STATE, json.dumps(state, indent=2) + "\n")

    def _train(self, cfg: RunConfig, rd: Path, state: dict, cell: Cell) -> bool:
        resume = bool(list_checkpoints(rd / "checkpoints"))
        rd.mkdir(parents=True, exist_ok=True)
        self._save(rd, state)
        t0 = time.perf_counter()
        # Killed before its first checkpoint: start clean (stale metrics would be appended).
        result = train(
            cfg,
            rd,
            recipe=cell.recipe or self.plan.recipe,
            resume=resume,
            progress=self.progress,
            overwrite=not resume,
        )
        state["train_seconds"] += time.perf_counter() - t0
        self._save(rd, state)
        if result.stopped_by != "completed":
            log.warning("compare: %s stopped (%s); rerun to resume", rd, result.stopped_by)
            return False
        return True

    def _evaluate(
        self, cfg: RunConfig, rd: Path, key: str, stores: dict[str, FeatureStore]
    ) -> dict:
        from nepa.eval.run import data_key, eval_splits, evaluate, feature_store, plan
        from nepa.eval.store import FEATURES

        name, _, init = key.partition("@")
        device = pick_device("cpu" if cfg.train.device == "cpu" else "auto")
        if init not in stores:
            # seeded: the random-init baseline is the objective as a fresh run starts it
            objective = initialized_objective(cfg) if init else build_objective(cfg)
            if not init:
                objective.load_state_dict(load_weights(rd))
            stores[init] = feature_store(cfg, objective, device, folder=rd / FEATURES)
            # every protocol of the comparison reads its features from one pass per split
            plan(stores[init], self.plan.evals, cfg)
        store = stores[init]
        splits_key = data_key(cfg)
        if splits_key not in self._splits:
            self._splits = {splits_key: eval_splits(cfg)}  # keep one: splits hold decoded data
        log.info("compare: %s on %s", key, rd.name)
        splits = self._splits[splits_key]
        return evaluate(
            name, cfg, store.objective, device, random_init=bool(init), splits=splits, store=store
        )


def run_summary(rd: Path) -> dict:
    """Training figures of a run from its metrics.jsonl (the last record per step wins)."""
    by_step: dict[int, dict] = {}
    for r in read_metrics(rd):
        by_step.setdefault(r["step"], {}).update(r)
    rows = [by_step[s] for s in sorted(by_step)]
    losses = [r["loss"] for r in rows if "loss" in r]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
    monitor = [r for r in rows if "collapse/eff_rank" in r]
    flops = [r["train_flops"] for r in rows if "train_flops" in r]
    return {
        "final_loss": statistics.fmean(losses[-3:]) if losses else None,
        "samples_per_s": statistics.median(rates) if rates else None,
        "eff_rank": monitor[-1]["collapse/eff_rank"] if monitor else None,
        "std_x_sqrt_d": monitor[-1]["collapse/std_x_sqrt_d"] if monitor else None,
        "train_flops": flops[-1] if flops else None,
        "curve": [(r["step"], r["loss"]) for r in rows if "loss" in r],
    }
