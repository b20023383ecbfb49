"""Shared fixtures: quiet logging, one CPU thread, the tiny demo recipe and a trained tiny run."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # tiny_recipe.py lives beside this file
    sys.path.insert(0, str(TESTS))

from tiny_recipe import TINY_RECIPE, tiny_with  # noqa: E402

# The models here are tiny: one thread is ~10x faster than two on a shared 2-core machine,
# and it makes every in-process run use the same reduction order.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    """INFO from nepa would flood the output of failing tests; WARNING and up stay visible."""
    logging.getLogger("nepa").setLevel(logging.WARNING)
    caplog.set_level(logging.WARNING)


@pytest.fixture
def tiny_cfg():
    """Factory: ``tiny_cfg("train.steps=3", ...)`` -> a validated RunConfig."""
    return tiny_with


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 6-step run of the tiny recipe, trained through the CLI (read-only for tests)."""
    from nepa.cli import main

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    assert main(["train", TINY_RECIPE, "--out", str(out), "--no-progress"]) == 0
    return out
