"""A rank stopped with SIGSTOP ends a torchrun job within train.dist_timeout_s, with a message,
instead of holding rank 0 for torch's 30-minute default (issue 11, point 2)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from tiny_recipe import TINY_RECIPE

from nepa.train.rundir import read_metrics


def _pids_with(tag: str, rank: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"NEPA_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            found.append(int(d.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_stopped_rank_ends_the_job_after_the_timeout(tmp_path: Path) -> None:
    tag, out = uuid.uuid4().hex, tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd += ["-m", "nepa.cli", "train", TINY_RECIPE, "--out", str(out), "--no-progress"]
    cmd += ["--set", "train.steps=100000", "--set", "train.dist_timeout_s=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEPA_TEST_TAG": tag}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(read_metrics(out)) < 3:
            time.sleep(0.2)
        assert len(read_metrics(out)) >= 3, "training did not start"
        stopped = _pids_with(tag, "1")
        assert stopped
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        t0 = time.time()
        _, err = proc.communicate(timeout=180)
        took = time.time() - t0
    finally:
        for pid in stopped:  # let the stopped rank be killed
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert took < 120, f"the job held for {took:.0f} s"
    assert "timeout" in err.lower() or "timed out" in err.lower(), err[-3000:]
