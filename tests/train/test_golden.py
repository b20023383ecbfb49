"""The tiny recipe's losses equal the golden ones written by scripts/golden_losses.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "tiny_losses.json"


def _script():
    spec = importlib.util.spec_from_file_location(
        "golden_losses", ROOT / "scripts/golden_losses.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_losses_equal_the_golden_ones() -> None:
    golden = json.loads(GOLDEN.read_text())
    now = _script().golden_losses()
    assert now.keys() == golden.keys()
    for name, losses in golden.items():
        assert now[name] == pytest.approx(losses, abs=1e-5), name
