"""Evaluation of damaged or foreign runs (issue 11, points 4 and 5): never run code from a run
directory, find a recipe that moved, say which weights were used, and refuse damaged files in
one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nepa.cli import main

TESTS = Path(__file__).resolve().parents[1]
EMA_PLUGIN = TESTS / "user_plugins" / "ema_views.py"


def _eval_fresh(*args: str) -> subprocess.CompletedProcess:
    """``nepa eval knn ARGS`` in a new process (registrations from this one do not leak in)."""
    return subprocess.run(
        [sys.executable, "-m", "nepa.cli", "eval", "knn", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _copy(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def _set_meta(run: Path, **kw) -> None:
    meta = json.loads((run / "meta.json").read_text())
    meta.update(kw)
    (run / "meta.json").write_text(json.dumps(meta))


def test_a_recipe_inside_the_run_directory_never_runs(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    run = _copy(tiny_run, tmp_path)
    marker = tmp_path / "pwned"
    (run / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef tiny(): pass\n")
    _set_meta(run, recipe=f"{run / 'evil.py'}:tiny", recipe_relative="evil.py:tiny")
    assert main(["eval", "knn", str(run)]) == 2
    assert "refusing to import" in capsys.readouterr().err
    assert not marker.exists()
    # --recipe cannot point inside the run either
    assert main(["eval", "knn", str(run), "--recipe", f"{run / 'evil.py'}:tiny"]) == 2
    assert not marker.exists()


def test_a_module_recipe_is_not_imported_from_inside_the_run(
    tiny_run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy(tiny_run, tmp_path)
    marker = tmp_path / "pwned"
    (run / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    _set_meta(run, recipe="evilmod:tiny", recipe_relative=None)
    monkeypatch.chdir(run)
    assert main(["eval", "knn", str(run)]) == 2
    assert "refusing to import module 'evilmod'" in capsys.readouterr().err
    assert not marker.exists()


def test_a_run_with_built_in_parts_evaluates_without_its_recipe(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    run = _copy(tiny_run, tmp_path)
    _set_meta(run, recipe="/nowhere/recipe.py:tiny", recipe_relative="../nowhere.py:tiny")
    assert main(["eval", "knn", str(run)]) == 0


@pytest.fixture(scope="module")
def ema_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with its own recipe file and a run trained from it."""
    project = tmp_path_factory.mktemp("project")
    (project / "recipes").mkdir()
    recipe = project / "recipes" / "ema.py"
    shutil.copy(EMA_PLUGIN, recipe)
    # In a new process: this one may already hold the plugin's registrations from another path.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nepa.cli",
            "train",
            f"{recipe}:tiny",
            "--set",
            "train.steps=2",
            "--out",
            str(project / "runs" / "r"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return project


def test_a_run_copied_with_its_code_finds_the_recipe_relative_to_it(
    ema_project: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(ema_project, moved)
    meta = json.loads((moved / "runs" / "r" / "meta.json").read_text())
    assert meta["recipe_relative"] == "../../recipes/ema.py:tiny"
    _set_meta(moved / "runs" / "r", recipe="/gone/recipes/ema.py:tiny")  # the old machine's path
    proc = _eval_fresh(str(moved / "runs" / "r"))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_recipe_that_moved_is_named_with_recipe(
    ema_project: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "r"
    shutil.copytree(ema_project / "runs" / "r", run)  # the run alone: its recipe is not beside it
    _set_meta(run, recipe="/gone/recipes/ema.py:tiny")
    proc = _eval_fresh(str(run))
    assert proc.returncode == 2 and "pass --recipe" in proc.stderr, proc.stderr[-2000:]
    shutil.copy(EMA_PLUGIN, tmp_path / "mine.py")
    proc = _eval_fresh(str(run), "--recipe", f"{tmp_path / 'mine.py'}:tiny")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_result_says_which_weights(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(tiny_run, tmp_path)
    out = tmp_path / "knn.json"
    assert main(["eval", "knn", str(run), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["weights"] == {"file": "model.safetensors", "step": None}
    (run / "model.safetensors").unlink()
    capsys.readouterr()
    assert main(["eval", "knn", str(run), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["weights"] == {"file": "checkpoints/step_00000006.pt", "step": 6}
    assert "evaluated checkpoints/step_00000006.pt (step 6)" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["list", "garbage"])
def test_a_damaged_checkpoint_in_one_line(tiny_run: Path, tmp_path: Path, capsys, damage) -> None:
    run = _copy(tiny_run, tmp_path)
    (run / "model.safetensors").unlink()
    ckpt = run / "checkpoints" / "step_00000006.pt"
    if damage == "list":
        torch.save([1, 2, 3], ckpt)
    else:
        ckpt.write_bytes(b"PK\x03\x04 not a zip at all")
    assert main(["eval", "knn", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weights_only=False" not in err
    assert ("holds a list" if damage == "list" else "damaged or not a nepa checkpoint") in err


@pytest.mark.parametrize("name", ["config.json", "meta.json"])
def test_malformed_json_is_named(tiny_run: Path, tmp_path: Path, capsys, name: str) -> None:
    run = _copy(tiny_run, tmp_path)
    (run / name).write_text('{"predictor": ')
    assert main(["eval", "knn", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{name} is not valid JSON" in err and "Traceback" not in err
