"""A run directory that cannot be evaluated says why: not a run, no weights yet, damaged
weights, or a run from another nepa version this one cannot read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nepa.cli import main
from nepa.config import ConfigError
from nepa.eval.load import load_run


def _copy(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_not_a_run_directory(tmp_path: Path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match="not a nepa run directory"):
        load_run(tmp_path)
    assert main(["eval", "knn", str(tmp_path)]) == 2
    assert "not a nepa run directory" in capsys.readouterr().err


def test_a_run_without_weights_or_checkpoints(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(tiny_run, tmp_path)
    (run / "model.safetensors").unlink()
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(FileNotFoundError, match="has not saved any weights"):
        load_run(run)
    assert main(["eval", "linear", str(run)]) == 2
    assert "has not saved any weights" in capsys.readouterr().err
    load_run(run, random_init=True)  # the random-init baseline needs no weights


def test_a_run_from_another_version_with_an_unknown_config_key(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    run = _copy(tiny_run, tmp_path)
    _edit_json(run / "meta.json", lambda m: m.update(nepa_version="9.9.0"))
    _edit_json(run / "config.json", lambda c: c["predictor"].update(new_knob=1))
    with pytest.raises(ConfigError, match=r"(?s)written by nepa 9\.9\.0.*predictor\.new_knob"):
        load_run(run)
    assert main(["eval", "knn", str(run)]) == 2
    assert "written by nepa 9.9.0" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_config(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy(tiny_run, tmp_path)
    _edit_json(run / "config.json", lambda c: c["predictor"].update(depth=3))
    with pytest.raises(ConfigError, match="do not fit the model"):
        load_run(run)


def test_damaged_exported_weights(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy(tiny_run, tmp_path)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="damaged"):
        load_run(run)


def test_damaged_checkpoint_of_an_unfinished_run(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(tiny_run, tmp_path)
    (run / "model.safetensors").unlink()
    for ckpt in (run / "checkpoints").glob("step_*.pt"):
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    assert main(["eval", "knn", str(run)]) == 2
    assert "damaged" in capsys.readouterr().err


def test_a_run_written_by_nepa_0_1_0_still_loads(tiny_run: Path, tmp_path: Path) -> None:
    """0.1.0 called the attention mode ``predictor.mask``, had no ``encoder.field`` and read
    features causally by default: such a run directory loads and evaluates as written."""
    run = _copy(tiny_run, tmp_path)

    def to_0_1_0(cfg: dict) -> None:
        cfg["predictor"]["mask"] = cfg["predictor"].pop("attn")
        del cfg["predictor"]["start_token"], cfg["encoder"]["field"]
        cfg["eval"]["attn"] = "causal"

    _edit_json(run / "config.json", to_0_1_0)
    _edit_json(run / "meta.json", lambda m: m.update(nepa_version="0.1.0"))
    cfg, objective = load_run(run)
    assert cfg.predictor.attn == "causal" and cfg.eval.attn == "causal"
    _, fresh = load_run(tiny_run)
    assert all(
        torch.equal(a, b)
        for a, b in zip(objective.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
    assert main(["eval", "knn", str(run)]) == 0


def test_an_unmigrated_key_names_both_versions(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy(tiny_run, tmp_path)
    _edit_json(run / "config.json", lambda c: c["predictor"].update(mask="causal"))
    with pytest.raises(ConfigError, match=r"(?s)written by nepa 0\.2\.0.*predictor\.mask") as e:
        load_run(run)
    assert "unknown key" in str(e.value)
