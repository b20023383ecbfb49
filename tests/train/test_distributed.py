"""Distribution: helpers in one process, and 2 processes (gloo, CPU) == 1 process end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import tiny_recipe
import torch
from safetensors.torch import load_file
from tiny_recipe import TINY_RECIPE

from nepa.config import apply_overrides
from nepa.device import pick_device
from nepa.train.distributed import all_reduce, init_distributed, no_sync, wrap_model
from nepa.train.rundir import read_metrics
from nepa.train.trainer import train

# torchrun's own module: works in any environment with torch, with or without the script.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = init_distributed("cpu")
    assert (env.rank, env.world, env.local_rank) == (0, 1, 0)
    assert env.is_main and not env.active and env.device == torch.device("cpu")
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, env) is model
    assert isinstance(no_sync(model, True), nullcontext)
    t = torch.tensor([1.0, 3.0])
    assert torch.equal(all_reduce(t), t) and torch.equal(all_reduce(t, "max"), t)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_request_without_cuda_says_so() -> None:
    with pytest.raises(ValueError, match="no CUDA device is visible; use 'cpu' or 'auto'"):
        pick_device("cuda", 0)
    assert pick_device("auto", 0) == torch.device("cpu")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["tiny", "jepa_tiny"])
def test_two_processes_equal_one_at_the_same_global_batch(tmp_path: Path, recipe: str) -> None:
    """torchrun 2 x (8 samples) vs 1 x (16 samples): same losses and final weights, for NEPA
    and for JEPA (whose masks are drawn per global sample)."""
    steps = ["--set", "train.steps=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = tmp_path / "ddp"
    cmd = [
        *TORCHRUN,
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "nepa.cli",
        "train",
        TINY_RECIPE.replace(":tiny", f":{recipe}"),
        "--out",
        str(ddp),
        "--no-progress",
        *steps,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = apply_overrides(getattr(tiny_recipe, recipe)(), ["train.steps=4"])
    single = train(cfg, tmp_path / "single", progress=False)

    meta = json.loads((ddp / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["attention_backend"] == "sdpa"
    ddp_losses = [r["loss"] for r in read_metrics(ddp) if "loss" in r]
    assert len(ddp_losses) == 4  # rank 0 alone writes the metrics
    assert ddp_losses == pytest.approx(single.losses, rel=1e-5, abs=1e-6)
    a, b = (
        load_file(str(ddp / "model.safetensors")),
        load_file(str(tmp_path / "single" / "model.safetensors")),
    )
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
