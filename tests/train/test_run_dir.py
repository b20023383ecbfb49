"""A run directory is owned and never overwritten or mixed (issue 11, point 1): an existing run
is refused without --resume or --overwrite, a second writer is refused while the first holds
the directory's lock, and a resume after a hard kill logs every step once."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_recipe import TINY_RECIPE, tiny_with

from nepa.cli import main
from nepa.train.rundir import RunDir, RunDirError, read_metrics
from nepa.train.trainer import train


def _digest(run: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.iterdir())
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def finished(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def test_a_finished_run_without_checkpoints_is_not_overwritten(finished: Path, capsys) -> None:
    shutil.rmtree(finished / "checkpoints")
    before = _digest(finished)
    assert main(["train", TINY_RECIPE, "--out", str(finished), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert _digest(finished) == before  # config, weights and metrics untouched


def test_overwrite_replaces_the_run(finished: Path) -> None:
    (finished / "notes.txt").write_text("mine")
    assert main(["train", TINY_RECIPE, "--out", str(finished), "--overwrite", "--no-progress"]) == 0
    steps = [r["step"] for r in read_metrics(finished) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # one run's metrics, not two appended
    assert (finished / "notes.txt").read_text() == "mine"  # only a run's own files go
    assert main(["train", TINY_RECIPE, "--out", str(finished), "--resume", "--overwrite"]) == 2


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = RunDir(tmp_path / "run")
    holder.lock()
    try:
        with pytest.raises(
            RunDirError,
            match=rf"in use by another nepa run \(pid {os.getpid()} on host {platform.node()}",
        ):
            train(tiny_with(), tmp_path / "run", progress=False)
        assert not (tmp_path / "run" / "config.json").exists()  # nothing written
    finally:
        holder.unlock()
    train(tiny_with("train.steps=1"), tmp_path / "run", progress=False)  # free again


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from nepa.train.rundir import RunDir; "
        f"RunDir(Path({str(tmp_path / 'run')!r})).lock(); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {proc.pid}"):
            RunDir(tmp_path / "run").lock()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    other = RunDir(tmp_path / "run")
    other.lock()  # kill -9 released it
    other.unlock()


def test_a_resume_after_a_hard_kill_logs_each_step_once(tmp_path: Path) -> None:
    cfg = tiny_with("train.ckpt_every=3", "train.keep_ckpts=5")
    run = tmp_path / "run"
    full = train(cfg, run, progress=False)
    # As if killed (-9) after logging step 5, before the step-6 checkpoint and export:
    (run / "checkpoints" / "step_00000006.pt").unlink()
    (run / "model.safetensors").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(f"{l}\n" for l in lines if '"step": 6' not in l))
    time.sleep(0.01)
    resumed = train(cfg, run, resume=True, progress=False)
    assert resumed.losses == full.losses[3:]
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    # each step once; event files are read in name order, which for two runs in one process
    # within one second need not be the order they ran in
    assert sorted(e.step for e in acc.Scalars("train/loss")) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("where", ["file", "read_only"])
def test_an_out_that_cannot_be_a_run_directory(tmp_path: Path, capsys, where: str) -> None:
    if where == "file":
        out = tmp_path / "afile"
        out.write_text("x")
        expected = "is a file, not a directory"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        out, expected = ro / "run", "cannot create the run directory"
    assert main(["train", TINY_RECIPE, "--out", str(out), "--no-progress"]) == 1
    assert expected in capsys.readouterr().err
