"""The plan of a comparison: cells (one value per varied key) times seeds.

``--vary encoder.scan=raster,hilbert`` varies one key; ``--vary predictor.attn+eval.attn=causal,
bidirectional`` varies keys joined by ``+`` together (each value goes to every key).
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass

from nepa.config import ConfigError, RunConfig, apply_overrides


@dataclass(frozen=True)
class Vary:
    keys: tuple[str, ...]  # varied together
    values: tuple[str, ...]

    @property
    def label(self) -> str:
        return "+".join(self.keys)


@dataclass(frozen=True)
class Cell:
    """One point of the grid: ``(label, value)`` per varied axis, in --vary order."""

    choices: tuple[tuple[str, str], ...]
    short: bool = True  # name axes by their last key component (False when that collides)

    def overrides(self) -> list[str]:
        pairs = [_split_change(v) if label == CHANGE else (label, v) for label, v in self.choices]
        return [
            f"{k}={v}" for label, v in pairs if label and label != RECIPE for k in label.split("+")
        ]

    @property
    def recipe(self) -> str | None:
        """The cell's recipe when the comparison has several (the ``recipe`` axis)."""
        return dict(self.choices).get(RECIPE)

    @property
    def name(self) -> str:
        """A readable, filesystem-safe directory name, e.g. ``scan=hilbert_attn=causal``."""
        parts = []
        for label, v in self.choices:
            if label == CHANGE:
                label, v = _split_change(v)
                if not label:
                    continue
            if label == RECIPE:  # the recipe's function name (its file too, if names collide)
                v = v.rpartition(":")[2] if self.short else _recipe_name(v)
            short = label.split("+")[0].rsplit(".", 1)[-1] if self.short else label
            parts.append(f"{short}={v}")
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", "_".join(parts)) or "base"

    def as_dict(self) -> dict[str, str]:
        return dict(self.choices)


CHANGE = "change"  # the axis of --ablate: "none" (the recipe as is) or one "KEY=VALUE" change
RECIPE = "recipe"  # the axis of several recipes compared: values are canonical recipe specs


def _recipe_name(spec: str) -> str:
    """``path/to/cifar10.py:tiny`` -> ``cifar10.tiny`` (``module.path:tiny`` -> ``path.tiny``)."""
    where, _, func = spec.rpartition(":")
    stem = where.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".py").rsplit(".", 1)[-1]
    return f"{stem}.{func}"


def _split_change(value: str) -> tuple[str, str]:
    if value == "none":
        return "", ""
    label, _, v = value.partition("=")
    return label, v


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: ``a,[0.5, 2],b`` -> ``a``, ``[0.5, 2]``, ``b``."""
    out, depth, cur, quote = [], 0, [], ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def config_keys(cfg: RunConfig) -> list[str]:
    """Every dotted key of the config, sections and leaves."""
    keys: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            keys.append(prefix + k)
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(cfg.model_dump(mode="python"), "")
    return keys


def check_key(cfg: RunConfig, key: str) -> None:
    """Raise ConfigError naming the nearest valid keys if ``key`` is not in the config."""
    keys = config_keys(cfg)
    if key in keys:
        return
    leaf = key.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(key, keys, n=4, cutoff=0.6)
    near += [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k not in near]
    near += [k for k in difflib.get_close_matches(leaf, keys, n=3, cutoff=0.6) if k not in near]
    hint = f"; nearest valid keys: {', '.join(near[:5])}" if near else ""
    raise ConfigError(f"--vary key {key!r} is not in the config{hint}")


def parse_vary(text: str, cfg: RunConfig) -> Vary:
    label, sep, values = text.partition("=")
    if not sep or not label.strip() or not values.strip():
        raise ConfigError(
            f"--vary {text!r} must look like KEY=V1,V2 (or KEY1+KEY2=V1,V2 to vary keys together)"
        )
    keys = tuple(k.strip() for k in label.split("+"))
    for key in keys:
        if key == "seed":
            raise ConfigError("vary seeds with --seeds N, not --vary seed=...")
        check_key(cfg, key)
    vals = tuple(split_values(values))
    if len(set(vals)) != len(vals) or "" in vals:
        raise ConfigError(f"--vary {label}: values must be distinct and non-empty, got {vals}")
    return Vary(keys, vals)


def parse_ablation(text: str, cfg: RunConfig) -> str:
    """``--ablate KEY=VALUE`` (or ``KEY1+KEY2=VALUE``): one change from the recipe."""
    vary = parse_vary(text, cfg)
    if len(vary.values) != 1:
        raise ConfigError(f"--ablate {text!r} takes one value (use --vary for several)")
    return f"{vary.label}={vary.values[0]}"


def cells(
    varies: list[Vary], ablations: list[str] | None = None, recipes: list[str] | None = None
) -> list[Cell]:
    """The product of the recipes (when several), the --vary axes, and (the recipe as is + each
    --ablate change)."""
    if recipes and len(recipes) > 1:
        varies = [Vary((RECIPE,), tuple(recipes)), *varies]
    if ablations:
        varies = [*varies, Vary((CHANGE,), ("none", *ablations))]
    labels = [v.label for v in varies]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"a key is varied twice: {labels}")
    combos = list(itertools.product(*(v.values for v in varies)))
    grid = [Cell(tuple(zip(labels, c, strict=True))) for c in combos]
    shorts = {label.split("+")[0].rsplit(".", 1)[-1] for label in labels}
    if len(shorts) < len(labels) or len({c.name for c in grid}) < len(grid):
        grid = [Cell(c.choices, short=False) for c in grid]
    if len({c.name for c in grid}) < len(grid):
        raise ConfigError(
            f"two cells would share a run directory ({', '.join(c.name for c in grid)}): "
            "compare recipes whose file or function names differ"
        )
    return grid


def cell_config(bases: dict[str, RunConfig], cell: Cell, seed: int) -> RunConfig:
    """The cell's validated config at ``seed`` (from its recipe's base config, or the only one);
    errors name the cell."""
    base = bases[cell.recipe] if cell.recipe else next(iter(bases.values()))
    try:
        return apply_overrides(base, [*cell.overrides(), f"seed={seed}"])
    except ConfigError as e:
        raise ConfigError(f"cell {cell.name}: {e}") from None
