"""The ``nepa`` command line: version, train options, ``eval knn`` and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_recipe import TESTS, TINY_RECIPE, tiny

import nepa
from nepa.cli import main
from nepa.config import validate


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == nepa.__version__ == "0.2.0"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "usage: nepa" in out and "train" in out and "eval" in out


@pytest.mark.parametrize("module", ["nepa.cli", "nepa"])
def test_python_dash_m(module: str) -> None:
    """``python -m nepa.cli`` (used under torchrun) and ``python -m nepa`` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == nepa.__version__


def test_console_script_imports_a_recipe_module_from_the_working_dir() -> None:
    script = Path(sys.executable).parent / "nepa"
    if not script.exists():
        pytest.skip(f"no `nepa` console script beside {sys.executable}")
    proc = subprocess.run(
        [str(script), "train", "tiny_recipe:tiny", "--print-config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert validate(json.loads(proc.stdout)) == tiny()


def test_print_config_is_the_validated_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", TINY_RECIPE, "--print-config", "--set", "optim.lr=1e-4"]) == 0
    cfg = validate(json.loads(capsys.readouterr().out))
    assert cfg == tiny().model_copy(update={"optim": tiny().optim.model_copy(update={"lr": 1e-4})})


def test_train_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", TINY_RECIPE, "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    assert main(["train", "no_such_module_xyz:tiny"]) == 2
    assert "cannot import recipe module 'no_such_module_xyz'" in capsys.readouterr().err
    assert main(["train", TINY_RECIPE, "--set", "predictor.attn=foo"]) == 2
    assert "'causal', 'bidirectional' or 'prefix'" in capsys.readouterr().err


def _eval(run: Path, out: Path, *extra: str) -> dict | list:
    assert main(["eval", "knn", str(run), "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_eval_knn_json(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _eval(tiny_run, tmp_path / "knn.json")
    assert {"top1", "n_train", "n_test", "layer", "pool"} <= set(res)
    assert res["protocol"] == "knn" and res["random_init"] is False
    assert (
        res["n_train"] == 256
        and res["n_test"] == 128
        and res["layer"] == 1  # default eval.layer=-2: the penultimate of 2 blocks
        and res["pool"] == "grid2"
        and res["attn"] == "causal"  # eval.attn null: the run's own training mode
    )
    assert 0.2 < res["top1"] <= 1.0  # 10 classes
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == res  # also printed
    pooled = _eval(
        tiny_run, tmp_path / "mean.json", "--set", "eval.pool=mean", "--set", "eval.layer=2"
    )
    assert pooled["pool"] == "mean" and pooled["layer"] == 2


@pytest.mark.slow
def test_eval_knn_random_init(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nepa.eval.load as load_mod

    loaded = []
    original = load_mod.load_weights
    monkeypatch.setattr(load_mod, "load_weights", lambda run: loaded.append(run) or original(run))
    res = _eval(tiny_run, tmp_path / "rand.json", "--random-init")
    assert loaded == []  # the trained weights were not loaded
    assert res["n_train"] == 256 and res["n_test"] == 128 and 0.0 <= res["top1"] <= 1.0
    assert res["protocol"] == "knn" and res["random_init"] is True
    _eval(tiny_run, tmp_path / "trained.json")
    assert loaded == [tiny_run]


def test_eval_knn_raw_pixels(tiny_run: Path, tmp_path: Path) -> None:
    from nepa.eval.load import load_run_config
    from nepa.eval.run import raw_input_knn

    res = _eval(tiny_run, tmp_path / "raw.json", "--raw-pixels")
    assert res["pool"] == "raw_pixels" and res["n_train"] == 256 and res["n_test"] == 128
    assert res["protocol"] == "knn" and res["random_init"] is False
    assert res["top1"] == raw_input_knn(load_run_config(tiny_run))["top1"] > 0.5  # digits


@pytest.mark.slow
def test_eval_knn_sweep(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _eval(tiny_run, tmp_path / "sweep.json", "--sweep")
    assert isinstance(res, list)
    pools = {r["pool"] for r in res}
    assert pools == {"mean", "last", "start", "grid2", "grid4"}
    assert all(r["protocol"] == "knn" and r["random_init"] is False for r in res)
    # every layer x pool x attention mode, once each
    combos = [(r["layer"], r["pool"], r["attn"]) for r in res]
    assert len(combos) == len(set(combos)) == 2 * len(pools) * 2
    assert set(combos) == {
        (layer, pool, attn)
        for layer in (1, 2)
        for pool in pools
        for attn in ("causal", "bidirectional")
    }
    assert all(r["n_train"] == 256 and 0.0 <= r["top1"] <= 1.0 for r in res)
    # printed: a Markdown table (one row per attn x pool, one column per block), then the JSON
    out = capsys.readouterr().out.strip().splitlines()
    table, lines = out[: 2 + 2 * len(pools)], out[2 + 2 * len(pools) :]
    assert table[0] == "| kNN top-1 % | block 1 | block 2 |" and table[1] == "|---|---|---|"
    first = res[0]
    row = f"| {first['attn']}, {first['pool']} | "
    assert any(line.startswith(row) and f"{100 * first['top1']:.2f}" in line for line in table)
    assert [json.loads(line) for line in lines] == res


def test_eval_knn_errors(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "knn", str(tmp_path / "nowhere")]) == 2
    assert "is not a nepa run directory" in capsys.readouterr().err
    assert main(["eval", "knn", str(tiny_run), "--set", "optim.lr=1"]) == 2
    assert "only eval.* and data.* keys" in capsys.readouterr().err
    assert main(["eval", "knn", str(tiny_run), "--set", "eval.pool=max"]) == 2
    assert "'mean', 'last', 'start', 'grid2' or 'grid4'" in capsys.readouterr().err
