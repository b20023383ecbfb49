"""A user's objective with an EMA target (tests/user_plugins/ema_views.py) reads a batch with two
fields, is trained, resumed exactly and evaluated through the unchanged CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sigterm import sigterm_during_step

from nepa.cli import main
from nepa.config import ConfigError, apply_overrides, import_file
from nepa.train.build import build_objective
from nepa.train.rundir import read_metrics
from nepa.train.trainer import train

PLUGIN = Path(__file__).resolve().parent / "user_plugins" / "ema_views.py"


@pytest.fixture(scope="module")
def plugin():
    return import_file(PLUGIN)


def test_the_target_is_never_seen_by_the_optimizer_and_moves_by_ema(plugin) -> None:
    cfg = plugin.tiny()
    obj = build_objective(cfg)
    groups = obj.param_groups(cfg.optim)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert not in_groups & {id(p) for p in obj.target.parameters()}
    assert in_groups == {id(p) for p in obj.parameters() if p.requires_grad}
    before = [p.clone() for p in obj.target.parameters()]
    with torch.no_grad():  # move the online weights, then one EMA update
        for p in obj.backbone().parameters():
            p.add_(1.0)
    obj.on_step_end(1)
    m = cfg.objective.momentum
    for b, t, o in zip(before, obj.target.parameters(), obj.backbone().parameters(), strict=True):
        torch.testing.assert_close(t, m * b + (1 - m) * o)


def test_a_missing_field_names_the_objective_and_the_field(plugin) -> None:
    with pytest.raises(ConfigError, match="objective 'user_ema_views'.*reads field 'other'"):
        apply_overrides(plugin.tiny(), ["objective.view_field=other"])


@pytest.mark.slow
def test_train_resume_exactly_and_evaluate(
    plugin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = plugin.tiny()
    full = train(cfg, tmp_path / "full", recipe=f"{PLUGIN}:tiny", progress=False)
    with monkeypatch.context() as m:
        sigterm_during_step(m, 3)
        first = train(cfg, tmp_path / "split", recipe=f"{PLUGIN}:tiny", progress=False)
    assert first.stopped_by == "signal" and first.step == 3
    second = train(cfg, tmp_path / "split", recipe=f"{PLUGIN}:tiny", resume=True, progress=False)
    assert first.losses + second.losses == full.losses  # identical, EMA target included
    # every metric the objective returns is logged
    assert all("target_std" in r for r in read_metrics(tmp_path / "full") if "loss" in r)
    out = tmp_path / "knn.json"
    assert main(["eval", "knn", str(tmp_path / "split"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["protocol"] == "knn" and res["random_init"] is False
    assert res["attn"] == "causal" and 0.1 < res["top1"] <= 1.0
