"""Without a progress bar the trainer logs a line every ``train.log_every`` steps, with the
loss and every metric the objective returned."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from tiny_recipe import jepa_tiny, tiny_with

from nepa.config import apply_overrides
from nepa.train.build import build_objective
from nepa.train.rundir import read_metrics
from nepa.train.trainer import train


@pytest.mark.parametrize("log_every", [1, 4])
def test_no_progress_logs_a_line_every_log_every_steps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, log_every: int
) -> None:
    caplog.set_level(logging.INFO, logger="nepa.train.trainer")
    cfg = tiny_with(f"train.log_every={log_every}", "train.steps=6")
    result = train(cfg, tmp_path / "run", progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    expected = [s for s in range(1, 7) if s % log_every == 0 or s == 6]
    assert [int(re.match(r"step (\d+)/6:", m)[1]) for m in lines] == expected
    for step, line in zip(expected, lines, strict=True):
        loss = float(re.search(r"loss=(\S+)", line)[1])
        assert loss == pytest.approx(result.losses[step - 1], abs=1e-4)
        assert "tokens=" in line and "lr=" in line


def test_training_flops_are_counted_and_logged(tmp_path) -> None:
    """train_flops grows by the first step's count; it is near 6 x parameters x tokens (the
    usual estimate of a transformer's forward and backward), and JEPA's step, which also runs
    the EMA target and a predictor, costs more than NEPA's at the same size."""
    cfg = tiny_with("train.steps=3")
    train(cfg, tmp_path / "nepa", progress=False)
    flops = [r["train_flops"] for r in read_metrics(tmp_path / "nepa") if "train_flops" in r]
    assert flops == [flops[0], 2 * flops[0], 3 * flops[0]] and flops[0] > 0
    params = sum(p.numel() for p in build_objective(cfg).predictor.blocks.parameters())
    tokens = cfg.train.batch_size * (16 + 1)  # 4 x 4 patches and the start token
    estimate = 6 * params * tokens
    assert 0.5 * estimate < flops[0] < 3 * estimate
    jepa = apply_overrides(jepa_tiny(), ["train.steps=1"])
    train(jepa, tmp_path / "jepa", progress=False)
    (jepa_flops,) = [
        r["train_flops"] for r in read_metrics(tmp_path / "jepa") if "train_flops" in r
    ]
    assert jepa_flops > flops[0]
