"""Write the golden losses of the tiny test recipe: ``python scripts/golden_losses.py``.

The per-step losses of ``tests/tiny_recipe.py:tiny`` (6 steps, fp32, CPU, one thread) with and
without gradient accumulation, written to ``tests/golden/tiny_losses.json``.
``tests/train/test_golden.py`` trains the same runs and compares. Regenerate only with this
script, and only when a change is meant to alter the numbers; say why in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny_recipe import tiny_with  # noqa: E402

from nepa.train.trainer import train  # noqa: E402

GOLDEN = ROOT / "tests" / "golden" / "tiny_losses.json"
RUNS = {"tiny": [], "tiny_accum2": ["train.accum=2"]}


def golden_losses() -> dict[str, list[float]]:
    torch.set_num_threads(1)  # the reduction order of the tests (tests/conftest.py)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in RUNS.items():
            cfg = tiny_with(*sets)
            out[name] = train(cfg, Path(tmp) / name, progress=False).losses
    return out


if __name__ == "__main__":
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(golden_losses(), indent=2) + "\n")
    print(f"wrote {GOLDEN}")
