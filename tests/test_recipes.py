"""Every recipe shipped in recipes/ builds a valid config; the named shapes are what they say."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from nepa.config import RunConfig, import_file, validate

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _recipes() -> list[tuple[str, str]]:
    found = []
    for path in sorted(RECIPES.glob("*.py")):
        module = import_file(path)
        for name, fn in vars(module).items():
            if (
                inspect.isfunction(fn)
                and fn.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found.append((path.name, name))
    return found


@pytest.mark.parametrize(("file", "func"), _recipes())
def test_recipe_builds_a_valid_config(file: str, func: str) -> None:
    cfg = getattr(import_file(RECIPES / file), func)()
    assert isinstance(cfg, RunConfig)
    assert validate(cfg.model_dump(mode="json")) == cfg  # survives the run directory's JSON


def test_gpu_recipe_is_vit_s2_for_hundreds_of_epochs() -> None:
    cfg = import_file(RECIPES / "cifar10.py").vit_s2()
    p = cfg.predictor
    assert (p.dim, p.depth, p.heads, cfg.encoder.patch_size) == (384, 12, 6, 2)
    assert (32 // cfg.encoder.patch_size) ** 2 == 256
    epochs = cfg.train.steps * cfg.train.batch_size / 50_000
    assert 250 <= epochs <= 400
