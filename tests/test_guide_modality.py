"""docs/own_modality.md: its code is the example files, and a user following it trains and
evaluates a new modality (raw waveforms) through the unchanged CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from nepa.cli import main
from nepa.config import import_file

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLE = DOCS / "examples" / "waveform.py"
FSDD = Path(os.environ.get("NEPA_DATA_DIR", "/nonexistent")) / "fsdd-recordings.tar.gz"


def test_the_guide_shows_the_files_it_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "own_modality.md").read_text(), re.S)
    assert blocks == [
        (DOCS / "examples" / "make_waves.py").read_text(),
        EXAMPLE.read_text(),
    ]


def _tones(path: Path, samples: int = 8000) -> Path:
    """Four pitches (classes), random phase and loudness: a stand-in for FSDD."""
    rng = np.random.default_rng(0)
    t = np.arange(samples) / 8000
    arrays = {}
    for split, n in (("train", 64), ("test", 32)):
        y = np.arange(n) % 4
        phase, amp = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.1, 1, n)
        x = amp[:, None] * np.sin(2 * np.pi * (220 * 2 ** y[:, None] * t + phase[:, None]))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x.astype(np.float32), y
    np.savez(path, **arrays)
    return path


def test_a_user_trains_and_evaluates_the_new_modality(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    waves = _tones(tmp_path / "waves.npz")
    recipe = f"{EXAMPLE}:tiny"
    common = ["--set", f"data.path={waves}"]
    out = tmp_path / "run"
    argv = ["train", recipe, *common, "--set", "train.steps=12", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert (out / "checkpoints").is_dir() and (out / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", "knn", str(out), "--json", str(tmp_path / "knn.json")]) == 0
    result = json.loads((tmp_path / "knn.json").read_text())
    result = result[0] if isinstance(result, list) else result
    assert result["n_test"] == 32 and 0.0 <= result["top1"] <= 1.0
    # a shape the encoder cannot cut is a one-line config error naming both numbers
    capsys.readouterr()
    bad = ["train", recipe, *common, "--set", "encoder.frame=333", "--out", str(tmp_path / "b")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "8000 samples are not divisible by encoder.frame=333" in err
    assert "Traceback" not in err


@pytest.mark.skipif(not FSDD.is_file(), reason="needs ${NEPA_DATA_DIR}/fsdd-recordings.tar.gz")
def test_make_waves_reads_fsdd_with_its_official_split(tmp_path: Path) -> None:
    make = import_file(DOCS / "examples" / "make_waves.py")
    make.main(str(FSDD), str(tmp_path / "waves.npz"))
    with np.load(tmp_path / "waves.npz") as f:
        assert f["x_train"].shape == (2700, 8000) and f["x_test"].shape == (300, 8000)
        assert sorted(set(f["y_test"].tolist())) == list(range(10))
