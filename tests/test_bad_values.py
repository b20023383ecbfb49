"""Every bad value is an error that names the key, before anything is written (issue 11,
point 3): numeric bounds on every config field, cross-field checks, and one-line CLI errors with
the traceback behind --debug."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_recipe import TINY_RECIPE, tiny_with

from nepa.cli import main
from nepa.config import ConfigError


@pytest.mark.parametrize(
    "override",
    [
        "predictor.heads=0",
        "predictor.dim=0",
        "predictor.depth=-1",
        "predictor.depth=0",
        "predictor.mlp_ratio=0",
        "predictor.layerscale=0",
        "predictor.rope_theta=-1",
        "predictor.prefix_len=-1",
        "optim.eps=-1",
        "optim.clip_grad=0",
        "optim.betas=[0.9, 1.5]",
        "eval.batch_size=0",
        "eval.layer=0",
        "eval.max_train=0",
        "eval.linear_l2=[0.1, -1]",
        "eval.attentive.lr_grid=[0]",
        "encoder.patch_size=0",
        "objective.collapse_std=-1",
    ],
)
def test_a_bad_value_names_its_key(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_with(override)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "predictor.heads=0"], "predictor.heads"),
        (["--set", "train.batch_size=4096"], "fewer than one global batch"),
        (["--set", "data.path=${NEPA_UNSET_DIR_FOR_TEST}/x.npz"], "NEPA_UNSET_DIR_FOR_TEST"),
    ],
)
def test_the_cli_says_it_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    assert main(["train", TINY_RECIPE, "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert not (out / "config.json").exists()


def test_a_recipe_that_raises_on_import(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "broken.py"
    recipe.write_text("import math\n\nx = undefined_name\n")
    assert main(["train", f"{recipe}:tiny", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:3 raised NameError on import" in err and "Traceback" not in err
    with pytest.raises(ConfigError) as e:  # --debug: the traceback, from the user's line
        main(["--debug", "train", f"{recipe}:tiny"])
    assert isinstance(e.value.__cause__, NameError)


def test_an_unexpected_error_is_one_line_unless_debug(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nepa.train.trainer as trainer

    def boom(*a, **kw):
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr(trainer, "train", boom)
    assert main(["train", TINY_RECIPE, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: something unforeseen (rerun with --debug" in err
    with pytest.raises(RuntimeError, match="unforeseen"):
        main(["train", TINY_RECIPE, "--out", str(tmp_path / "run"), "--debug"])


def test_a_batch_not_divisible_by_the_world_size_is_refused_before_writing(tmp_path: Path) -> None:
    import torch

    from nepa.train.distributed import DistEnv
    from nepa.train.trainer import Trainer

    env = DistEnv(rank=0, world=3, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="train.batch_size: global_batch 16 is not divisible"):
        Trainer(tiny_with(), tmp_path / "run", env, None)
    assert not (tmp_path / "run").exists()
