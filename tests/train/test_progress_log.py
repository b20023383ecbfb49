"""Without a progress bar the trainer logs a line every ``train.log_every`` steps, with the
loss and every metric the objective returned."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from tiny_recipe import tiny_with

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
