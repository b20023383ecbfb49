"""The CIFAR-10 shards recipe end to end on synthetic 32x32 shards: one process, resume, bad
data over the limit, two processes under torchrun, and a ``pipe:`` URL from a local server."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from shard_synth import make_shards
from sigterm import sigterm_during_step

from nepa.config import load_recipe
from nepa.data.shards.health import BadDataError
from nepa.train.checkpoint import list_checkpoints, load_checkpoint
from nepa.train.rundir import read_metrics
from nepa.train.trainer import train

RECIPE = f"{Path(__file__).resolve().parents[2] / 'recipes' / 'cifar10.py'}:shards"
SMALL = [
    "train.batch_size=16",
    "train.steps=6",
    "train.log_every=1",
    "train.ckpt_every=100",
    "train.precision=fp32",
    "train.device=cpu",
    "predictor.dim=32",
    "predictor.depth=2",
    "predictor.heads=2",
    "data.shuffle_buffer=32",
]


def recipe(source: str | Path, *extra: str):
    return load_recipe(RECIPE, [f"data.source={source}", *SMALL, *extra])[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar-like")
    make_shards(root, [20, 30, 25, 21], size=32, channels=3)  # 96 = 6 steps of 16
    return make_shards(root, [40], split="test", size=32, channels=3)


@pytest.fixture(scope="module")
def baseline(source: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("baseline") / "run"
    return out, train(recipe(source), out, progress=False)


def test_trains_one_epoch_and_logs_data_health(baseline) -> None:
    out, result = baseline
    assert result.step == 6 and all(torch.isfinite(torch.tensor(result.losses)))
    records = read_metrics(out)
    health = [r for r in records if "data/good" in r]
    assert health[-1]["data/good"] == 96 and health[-1]["data/bad"] == 0
    epochs = [r for r in records if "data/epoch" in r]
    assert [r["data/epoch"] for r in epochs] == [0] and epochs[0]["data/epoch_bad"] == {}
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert state["data"]["kind"] == "shards" and state["data"]["streams"] == 1


def test_sigterm_mid_epoch_then_resume_equals_no_interruption(
    source: Path, baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, result = baseline
    with monkeypatch.context() as m:
        sigterm_during_step(m, 3)
        first = train(recipe(source), tmp_path / "run", progress=False)
    assert first.stopped_by == "signal" and first.step == 3
    second = train(recipe(source), tmp_path / "run", resume=True, progress=False)
    assert first.losses + second.losses == result.losses


def test_resampled_resume_equals_no_interruption(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = recipe(source, "data.epochs=resampled", "data.epoch_steps=4", "train.steps=7")
    full = train(cfg, tmp_path / "full", progress=False)
    with monkeypatch.context() as m:
        sigterm_during_step(m, 5)  # in the second nominal epoch
        first = train(cfg, tmp_path / "run", progress=False)
    second = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert first.step == 5 and first.losses + second.losses == full.losses


def test_resume_refuses_another_worker_count(baseline, source: Path, tmp_path: Path) -> None:
    out, _ = baseline
    shutil.copytree(out, tmp_path / "run")
    with pytest.raises(Exception, match="same number of processes and train.num_workers"):
        train(recipe(source, "train.num_workers=2", "train.steps=6"), tmp_path / "run", resume=True)


def test_bad_data_over_the_limit_stops_with_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = {i: "decode" for i in range(0, 96, 4)}  # 25% undecodable
    src = make_shards(tmp_path / "bad", [48, 48], size=32, channels=3, bad=bad)
    run = tmp_path / "run"
    with pytest.raises(BadDataError, match=r"24 of 96 samples .* over data.max_bad_fraction=0.1"):
        train(recipe(src, "data.max_bad_fraction=0.1", "train.steps=12"), run, progress=False)
    [ckpt] = list_checkpoints(run / "checkpoints")  # saved at the end of the first epoch
    assert load_checkpoint(ckpt)["step"] == 6
    # What the stop asks for, on resume: a higher limit; then (after a pre-emption) repaired
    # shards with the same layout at another source. Each change is recorded.
    with monkeypatch.context() as m:
        sigterm_during_step(m, 8)
        more = train(
            recipe(src, "data.max_bad_fraction=0.3", "train.steps=12"),
            run,
            resume=True,
            progress=False,
        )
    assert more.step == 8
    names = [p.name for p in list_checkpoints(run / "checkpoints")]
    assert names == ["step_00000006.pt", "step_00000008.pt"]  # the stop rotated nothing out
    fixed = make_shards(tmp_path / "fixed", [48, 48], size=32, channels=3)
    done = train(
        recipe(fixed, "data.max_bad_fraction=0.3", "train.steps=12"),
        run,
        resume=True,
        progress=False,
    )
    assert done.step == 12
    changes = [r["resume"]["changes"] for r in read_metrics(run) if "resume" in r]
    assert changes[0] == {"data.max_bad_fraction": [0.1, 0.3]}
    assert changes[1]["data.source"] == [str(src), str(fixed)]


def test_bad_data_under_the_limit_is_reported_and_survives_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = {i: "decode" for i in range(0, 96, 4)}
    src = make_shards(tmp_path / "bad", [48, 48], size=32, channels=3, bad=bad)
    cfg = recipe(src, "data.max_bad_fraction=0.3")
    train(cfg, tmp_path / "full", progress=False)
    records = read_metrics(tmp_path / "full")
    last = [r for r in records if "data/bad" in r][-1]
    assert (last["data/good"], last["data/bad"], last["data/bad_decode"]) == (72, 24, 24)
    assert [r["data/epoch_bad"] for r in records if "data/epoch" in r] == [{"decode": 24}]
    with monkeypatch.context() as m:
        sigterm_during_step(m, 3)
        train(cfg, tmp_path / "split", progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    resumed = [r for r in read_metrics(tmp_path / "split") if "data/bad" in r][-1]
    assert (resumed["data/good"], resumed["data/bad"]) == (72, 24)  # counted once, not twice


@pytest.mark.slow
def test_a_loader_failing_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    # One shard is all grey (1 channel, the recipe wants 3): whichever rank reads it finds no
    # decodable sample. Both ranks must save and stop, not wait for each other forever.
    src = make_shards(
        tmp_path / "half", [48, 48], size=32, channels=3, bad={i: "shape" for i in range(48)}
    )
    out = tmp_path / "ddp"
    proc = _torchrun(src, out, "data.max_bad_fraction=1.0", "train.steps=12")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no decodable sample" in proc.stderr or "failed on another rank" in proc.stderr
    assert list_checkpoints(out / "checkpoints")  # saved before stopping


def _torchrun(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    sets = [a for s in [f"data.source={source}", *SMALL, *extra] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd += ["-m", "nepa.cli", "train", RECIPE, "--out", str(out), "--no-progress", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_under_torchrun(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = _torchrun(source, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "meta.json").read_text())["world_size"] == 2
    health = [r for r in read_metrics(out) if "data/good" in r]
    assert health[-1]["data/good"] == 96  # both ranks together read the epoch once


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_pipe_url_from_a_local_http_server(source: Path, baseline, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(source))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"pipe:curl -sf http://127.0.0.1:{server.server_address[1]}/{{name}}"
        result = train(recipe(url), tmp_path / "run", progress=False)
    finally:
        server.shutdown()
    assert result.losses == baseline[1].losses  # the same bytes, the same run


def test_knn_eval_of_a_shard_run(baseline, tmp_path: Path) -> None:
    from nepa.cli import main

    out, _ = baseline
    report = tmp_path / "knn.json"
    assert main(["eval", "knn", str(out), "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    # Test image i (label i) is pixel-identical to train image i, so a kNN that reads images and
    # labels from the shards right finds most of them; with labels misread it would score ~0.
    assert r["n_test"] == 40 and r["n_train"] == 96 and r["top1"] > 0.5
