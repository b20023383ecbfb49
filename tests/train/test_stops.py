"""Resume after any stop, with the changes a stop asks for (issue 11, point 2): a NaN stop
resumed with a lower lr (the change recorded), Ctrl-C treated like SIGTERM, a distinct exit code
for "stopped, resumable", stops that never rotate out checkpoints, a full disk that keeps the
last good checkpoint, and a collective timeout from the config."""

from __future__ import annotations

import json
import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from tiny_recipe import TINY_RECIPE, tiny_with

import nepa.train.checkpoint as ckpt
import nepa.train.trainer as trainer_mod
from nepa.cli import main
from nepa.objectives.nepa import Nepa
from nepa.train.checkpoint import CheckpointError, list_checkpoints
from nepa.train.resume import EXIT_RESUMABLE
from nepa.train.rundir import read_metrics
from nepa.train.trainer import train


def _nan_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """The loss of optimizer step ``step`` (1-based) is NaN."""
    original = Nepa.forward
    calls = {"n": 0}

    def forward(self, batch):
        calls["n"] += 1
        loss, metrics = original(self, batch)
        return (loss * float("nan") if calls["n"] == step else loss), metrics

    monkeypatch.setattr(Nepa, "forward", forward)


def test_a_nan_stop_resumes_with_a_lower_lr_and_records_it(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    args = ["train", TINY_RECIPE, "--out", str(run), "--no-progress", "--set", "train.ckpt_every=3"]
    with monkeypatch.context() as m:
        _nan_at(m, 5)
        assert main(args) == EXIT_RESUMABLE
    err = capsys.readouterr().err
    assert "step_00000003.pt, is intact" in err and "--set optim.lr=" in err
    assert main([*args, "--resume", "--set", "optim.lr=1e-3"]) == 0
    records = read_metrics(run)
    resume = [r["resume"] for r in records if "resume" in r]
    assert resume == [
        {"step": 3, "checkpoint": "step_00000003.pt", "changes": {"optim.lr": [0.003, 0.001]}}
    ]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "meta.json").read_text())["resumes"] == resume
    # a key a resume may not change is still refused, naming it
    assert main([*args, "--resume", "--set", "predictor.depth=3"]) == 1
    assert "predictor.depth" in capsys.readouterr().err


def test_a_nan_before_any_checkpoint_says_so(tmp_path: Path, capsys, monkeypatch) -> None:
    _nan_at(monkeypatch, 2)
    assert main(["train", TINY_RECIPE, "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "No checkpoint was written yet" in err and "intact" not in err


def _signal_during_step(monkeypatch, step: int, signum: int, times: int = 1) -> None:
    original = trainer_mod.Trainer._accumulate

    def accumulate(self, batches):
        out = original(self, batches)
        if self.step == step - 1:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "_accumulate", accumulate)


def test_ctrl_c_saves_and_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_with("train.ckpt_every=100")
    full = train(cfg, tmp_path / "full", progress=False)
    handler = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as m:
        _signal_during_step(m, 2, signal.SIGINT)
        first = train(cfg, tmp_path / "run", progress=False)
    assert signal.getsignal(signal.SIGINT) is handler
    assert first.stopped_by == "signal" and first.step == 2
    second = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert first.losses + second.losses == full.losses


def test_ctrl_c_twice_aborts_at_once(tmp_path: Path, monkeypatch) -> None:
    _signal_during_step(monkeypatch, 2, signal.SIGINT, times=2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_with("train.ckpt_every=100"), tmp_path / "run", progress=False)
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")


def test_a_signal_stop_exits_resumable_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    _signal_during_step(monkeypatch, 3, signal.SIGTERM)
    out = tmp_path / "run"
    assert main(["train", TINY_RECIPE, "--out", str(out), "--no-progress"]) == EXIT_RESUMABLE
    monkeypatch.undo()
    assert main(["train", TINY_RECIPE, "--out", str(out), "--no-progress", "--resume"]) == 0


def test_a_stop_never_rotates_out_older_checkpoints(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_with("train.ckpt_every=2", "train.keep_ckpts=1")
    with monkeypatch.context() as m:
        _signal_during_step(m, 3, signal.SIGTERM)
        train(cfg, tmp_path / "run", progress=False)
    names = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert names == ["step_00000002.pt", "step_00000003.pt"]


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_with("train.ckpt_every=2", "train.keep_ckpts=5")
    run = tmp_path / "run"
    real_save = torch.save

    def full_disk(state, f):
        if state["step"] == 4:
            f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64")
        real_save(state, f)

    with monkeypatch.context() as m:
        m.setattr(ckpt.torch, "save", full_disk)
        m.setattr(ckpt.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
        with pytest.raises(
            CheckpointError,
            match=r"no space left .* need about [\d.]+ MB.*step_00000002\.pt is kept",
        ):
            train(cfg, run, progress=False)
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["step_00000002.pt"]  # no partial .tmp left behind
    done = train(cfg, run, resume=True, progress=False)  # space freed: the resume works
    assert done.step == 6


def test_the_collective_timeout_is_a_setting(monkeypatch) -> None:
    import nepa.train.distributed as distributed

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(distributed.torch, "set_num_threads", lambda n: None)
    cfg = tiny_with("train.dist_timeout_s=7")
    distributed.init_distributed("cpu", cfg.train.dist_timeout_s)
    assert seen["timeout"] == timedelta(seconds=7)
    assert tiny_with().train.dist_timeout_s == 300
