"""``nepa bench train``: the trainer's loop and the model step of a tiny recipe, reported
together (structure and consistency, never timings)."""

from __future__ import annotations

import json
import math

from tiny_recipe import TINY_RECIPE

from nepa.cli import main


def test_train_bench_reports_loop_step_and_the_share_between(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "train", TINY_RECIPE, "--steps", "4", "--warmup", "2", "--rounds", "2"]
    assert main([*args, "--set", "train.batch_size=8", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["batch"], r["steps"], r["warmup"]) == (8, 4, 2)
    assert len(r["rounds"]["loop"]) == len(r["rounds"]["model"]) == 2
    for key in ("loop_samples_per_s", "model_samples_per_s"):
        assert math.isfinite(r[key]) and r[key] > 0
    ratios = [1 - l / m for l, m in zip(r["rounds"]["loop"], r["rounds"]["model"], strict=True)]
    assert min(ratios) <= r["outside"] <= max(ratios)
    assert 0 < r["data_wait"] < 1 and len(r["rounds"]["data_wait"]) == 2
    assert "of its time is outside the step" in capsys.readouterr().out


def test_train_bench_refuses_steps_that_are_not_whole_intervals(capsys) -> None:
    assert main(["bench", "train", TINY_RECIPE, "--steps", "5", "--warmup", "2"]) == 2
    assert "must be a multiple of --warmup" in capsys.readouterr().err


def test_optimizer_and_extraction_benches_report_every_variant(tmp_path, capsys) -> None:
    out = tmp_path / "optim.json"
    assert main(["bench", "optim", TINY_RECIPE, "--rounds", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["seconds"]) == {"for_loop", "foreach", "fused"} and r["parameters"] > 0
    assert all(math.isfinite(s) and s > 0 for s in r["seconds"].values())
    out = tmp_path / "extract.json"
    args = ["bench", "extract", TINY_RECIPE, "--images", "40", "--batch", "8,16"]
    assert main([*args, "--rounds", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["items_per_s"]) == {"fp32@8", "fp32@16", "bf16@8", "bf16@16"}
    assert r["items"] == 40 and r["layer"] == 1  # eval.layer=-2 of 2 blocks
    assert main([*args[:-2], "--batch", "x"]) == 2
    assert "--batch must be like 256,1024" in capsys.readouterr().err
