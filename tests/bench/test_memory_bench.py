"""The memory benchmark's code path on the CPU at tiny sizes: rows, out-of-memory handling and
CLI errors; never timings."""

from __future__ import annotations

import json

import pytest
import torch

from nepa.bench import memory
from nepa.bench.memory import MemoryBenchConfig, bench_memory
from nepa.cli import main

TINY = MemoryBenchConfig(dim=32, depth=1, heads=2, lengths=(16, 9), variants=("full", "matched"))


def test_a_row_per_variant_and_length_in_order() -> None:
    result = bench_memory(TINY, torch.device("cpu"), log=lambda s: None)
    rows = [(r["model"], r["tokens"]) for r in result["runs"]]
    assert rows == [("full", 9), ("full", 16), ("matched", 9), ("matched", 16)]
    for r in result["runs"]:
        assert r["step_s"] > 0 and r["peak_bytes"] is None  # no allocator statistics on a CPU
    assert result["config"]["lengths"] == (16, 9)


def test_out_of_memory_is_reported_and_longer_lengths_are_not_tried(monkeypatch) -> None:
    real = memory.make_step

    def make_step(model, emb, *args):
        if emb.shape[1] >= 16:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, emb, *args)

    monkeypatch.setattr(memory, "make_step", make_step)
    cfg = MemoryBenchConfig(dim=32, depth=1, heads=2, lengths=(9, 16, 25), variants=("full",))
    rows = bench_memory(cfg, torch.device("cpu"), log=lambda s: None)["runs"]
    assert [(r["tokens"], r.get("out_of_memory", False)) for r in rows] == [(9, False), (16, True)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "full-xformers", "--device", "cpu"], "needs CUDA"),
        (["--variants", "nope"], "unknown --variants"),
        (["--lengths", "0"], "must be positive"),
        (["--dim", "65"], "validation error"),
    ],
)
def test_bad_flags_are_one_line_errors(args, message, capsys) -> None:
    assert main(["bench", "memory", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_writes_json(tmp_path) -> None:
    out = tmp_path / "m.json"
    args = ["bench", "memory", "--dim", "32", "--depth", "1", "--heads", "2", "--lengths", "9"]
    assert main([*args, "--variants", "full", "--device", "cpu", "--json", str(out)]) == 0
    assert [r["tokens"] for r in json.loads(out.read_text())["runs"]] == [9]
