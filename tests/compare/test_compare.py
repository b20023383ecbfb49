"""nepa compare: the grid, the runner's resumption, and the files it writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tiny_recipe import TINY_RECIPE, jepa_tiny, tiny, token_tiny
from torchvision.io import decode_png

import nepa.compare.runner as runner
from nepa.cli import main
from nepa.compare.flops import step_flops
from nepa.compare.grid import Vary, cells, check_key, parse_ablation, parse_vary, split_values
from nepa.compare.report import seed_stats, spread_notes
from nepa.config import ConfigError, apply_overrides

GRID = [
    "--vary",
    "encoder.scan=raster,hilbert",
    "--vary",
    "predictor.attn+eval.attn=causal,bidirectional",
    "--seeds",
    "2",
    "--eval",
    "knn",
    "--set",
    "train.steps=2",
]


def test_split_values_keeps_brackets_and_quotes() -> None:
    assert split_values("a,[0.5, 2],b") == ["a", "[0.5, 2]", "b"]
    assert split_values("'x,y',z") == ["'x,y'", "z"]
    assert split_values("raster") == ["raster"]


def test_unknown_key_names_the_nearest_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"nearest valid keys: encoder\.scan"):
        check_key(tiny(), "encoder.scna")
    with pytest.raises(ConfigError, match=r"predictor\.rope"):
        check_key(tiny(), "rope")  # a leaf given without its section
    with pytest.raises(ConfigError, match="--seeds"):
        parse_vary("seed=0,1", tiny())
    with pytest.raises(ConfigError, match="distinct"):
        parse_vary("encoder.scan=raster,raster", tiny())


def test_cells_are_the_product_and_linked_keys_move_together() -> None:
    cfg = tiny()
    grid = cells([parse_vary(GRID[1], cfg), parse_vary(GRID[3], cfg)])
    assert [c.name for c in grid] == [
        "scan=raster_attn=causal",
        "scan=raster_attn=bidirectional",
        "scan=hilbert_attn=causal",
        "scan=hilbert_attn=bidirectional",
    ]
    assert grid[1].overrides() == [
        "encoder.scan=raster",
        "predictor.attn=bidirectional",
        "eval.attn=bidirectional",
    ]


def test_colliding_short_names_fall_back_to_full_keys() -> None:
    grid = cells([Vary(("a.x",), ("1",)), Vary(("b.x",), ("1", "2"))])
    assert [c.name for c in grid] == ["a.x=1_b.x=1", "a.x=1_b.x=2"]


def test_ablations_are_the_recipe_plus_one_change_each() -> None:
    cfg = tiny()
    changes = [
        parse_ablation("objective.shift=false", cfg),
        parse_ablation("predictor.rope=false", cfg),
    ]
    grid = cells([], changes)
    assert [c.name for c in grid] == ["base", "shift=false", "rope=false"]
    assert [c.overrides() for c in grid] == [
        [],
        ["objective.shift=false"],
        ["predictor.rope=false"],
    ]
    with pytest.raises(ConfigError, match="one value"):
        parse_ablation("predictor.rope=true,false", cfg)


def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    assert img.shape[0] in (3, 4) and img.shape[1] > 100 and img.shape[2] > 100


def test_compare_2x2_grid_2_seeds_writes_everything_and_resumes(tmp_path, monkeypatch) -> None:
    out = tmp_path / "cmp"
    calls: list[Path] = []
    real_train = runner.train

    def counting_train(cfg, rd, **kw):
        calls.append(Path(rd))
        return real_train(cfg, rd, **kw)

    monkeypatch.setattr(runner, "train", counting_train)
    assert main(["compare", TINY_RECIPE, *GRID, "--out", str(out)]) == 0
    assert len(calls) == 8
    for name in ("results.csv", "results.json", "results.md", "loss.png", "accuracy.png"):
        assert (out / name).is_file(), name
    _png_ok(out / "loss.png")
    _png_ok(out / "accuracy.png")
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(rows) == 8 and {r["seed"] for r in rows} == {"0", "1"}
    assert all(0 <= float(r["knn_top1"]) <= 1 for r in rows)
    report = json.loads((out / "results.json").read_text())
    assert len(report["cells"]) == 4
    for cell in report["cells"]:
        vals = [float(r["knn_top1"]) for r in rows if r["cell"] == cell["cell"]]
        assert cell["knn_top1"]["n"] == 2
        assert cell["knn_top1"]["mean"] == pytest.approx(sum(vals) / 2)
    md = (out / "results.md").read_text()
    assert md.count("| raster |") == 2 and md.count("| hilbert |") == 2

    # Rerun: nothing is trained or evaluated again, and the results are unchanged.
    before = (out / "results.csv").read_text()
    calls.clear()
    monkeypatch.setattr(runner.Comparison, "_evaluate", lambda *a: pytest.fail("re-evaluated"))
    assert main(["compare", TINY_RECIPE, *GRID, "--out", str(out)]) == 0
    assert calls == [] and (out / "results.csv").read_text() == before


def test_an_unfinished_run_is_resumed_and_a_changed_recipe_refused(tmp_path, monkeypatch) -> None:
    out = tmp_path / "cmp"
    args = ["compare", TINY_RECIPE, "--vary", "encoder.scan=raster,hilbert", "--set"]
    assert main([*args, "train.steps=2", "--out", str(out)]) == 0
    # As if the second run had been killed after its checkpoint, before exporting weights.
    (out / "runs" / "scan=hilbert-s0" / "model.safetensors").unlink()
    calls: list[tuple[str, bool]] = []
    real_train = runner.train

    def counting_train(cfg, rd, **kw):
        calls.append((Path(rd).name, kw["resume"]))
        return real_train(cfg, rd, **kw)

    monkeypatch.setattr(runner, "train", counting_train)
    assert main([*args, "train.steps=2", "--out", str(out)]) == 0
    assert calls == [("scan=hilbert-s0", True)]
    # Another --set is another comparison.
    assert main([*args, "train.steps=3", "--out", str(out)]) == 2


def test_bad_vary_key_and_bad_value_fail_before_any_run(tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", TINY_RECIPE, "--vary", "encoder.scna=raster", "--out", str(out)]) == 2
    assert "nearest valid keys: encoder.scan" in capsys.readouterr().err
    assert (
        main(["compare", TINY_RECIPE, "--vary", "encoder.scan=raster,nope", "--out", str(out)]) == 2
    )
    assert "cell scan=nope" in capsys.readouterr().err
    assert main(["compare", TINY_RECIPE, "--eval", "knn,bogus", "--out", str(out)]) == 2
    assert not (out / "runs").exists()


def test_eval_changes_re_evaluate_but_new_schema_fields_do_not(tmp_path, monkeypatch) -> None:
    out = tmp_path / "cmp"
    args = ["compare", TINY_RECIPE, "--set", "train.steps=2", "--out", str(out)]
    assert main(args) == 0
    state_file = out / "runs" / "base-s0" / "compare.json"
    state = json.loads(state_file.read_text())
    # As if written by a version whose config had no eval.finetune section and no predictor.rope.
    del state["eval_config"]["finetune"]
    del state["train_config"]["predictor"]["rope"]
    state_file.write_text(json.dumps(state))
    evaluated: list[str] = []
    real = runner.Comparison._evaluate
    monkeypatch.setattr(
        runner.Comparison,
        "_evaluate",
        lambda self, cfg, rd, key, stores: (
            evaluated.append(key) or real(self, cfg, rd, key, stores)
        ),
    )
    assert main(args) == 0 and evaluated == []
    assert main([*args[:-2], "--set", "eval.k=5", "--out", str(out)]) == 2  # another --set
    state = json.loads(state_file.read_text())
    state["eval_config"]["k"] = 7  # a changed evaluation setting
    state_file.write_text(json.dumps(state))
    assert main(args) == 0 and evaluated == ["knn"]


def _cell(name: str, *top1: float) -> dict:
    return {"cell": name, "knn_top1": seed_stats(list(top1))}


def test_spread_notes_compare_each_cell_with_the_first():
    cells = [
        _cell("base", 0.30, 0.32),  # std 1.41 points
        _cell("far", 0.40, 0.41),  # +9.50: beyond twice the pooled std, sqrt((2 + 0.5) / 2)
        _cell("near", 0.31, 0.33),  # +1.00: within
        _cell("once", 0.50),  # one seed: no verdict
    ]
    notes = spread_notes(cells, ["knn"])
    assert notes[0].startswith("- knn: cell means span 19.00 points")
    assert "exceeds twice" in notes[0]
    against = notes[1]
    assert against.startswith("  - against base: ")
    assert "far +9.50 (beyond 2 x 1.12)" in against
    assert "near +1.00 (within 2 x 1.41)" in against
    assert "once +19.00 (no spread)" in against


def test_a_finished_run_is_reused_only_across_keys_without_effect_on_training() -> None:
    from tiny_recipe import tiny_with

    base = runner.train_part(tiny())
    for same in ("train.log_every=3", "train.num_workers=1", "eval.k=5"):
        assert runner.train_part(tiny_with(same)) == base, same
    # keys a resume may change after a stop still change what is learned
    for other in ("optim.lr=1e-4", "optim.clip_grad=0.5", "data.path=/elsewhere.npz"):
        assert runner.changed(base, runner.train_part(tiny_with(other))), other


def test_several_recipes_at_equal_training_flops(tmp_path) -> None:
    """NEPA, JEPA and the token baseline on one grid; --equal-flops gives each the steps that
    make its training FLOPs the first recipe's (within a step), and the table says so."""
    recipes = [
        TINY_RECIPE,
        TINY_RECIPE.replace(":tiny", ":jepa_tiny"),
        TINY_RECIPE.replace(":tiny", ":token_tiny"),
    ]
    out = tmp_path / "cmp"
    argv = ["compare", *recipes, "--equal-flops", "--set", "train.steps=4", "--out", str(out)]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [r["cell"] for r in rows] == ["recipe=tiny", "recipe=jepa_tiny", "recipe=token_tiny"]
    per_step = {
        name: step_flops(apply_overrides(fn(), ["train.steps=4"]))
        for name, fn in (("tiny", tiny), ("jepa_tiny", jepa_tiny), ("token_tiny", token_tiny))
    }
    budget = 4 * per_step["tiny"]
    for r in rows:
        name = r["cell"].split("=")[1]
        steps = int(r["steps"])
        assert abs(steps * per_step[name] - budget) <= per_step[name]  # equal, to one step
        assert float(r["train_flops"]) > 0
    assert int(rows[1]["steps"]) < 4  # JEPA's step costs more than NEPA's
    md = (out / "results.md").read_text()
    assert "vs" in md and "equal training FLOPs" in md and "| tests/" not in md.split("|---")[0]
    # the same command resumes; another set of recipes in that --out is refused
    assert main(argv) == 0
    assert main(["compare", *recipes[:2], "--out", str(out)]) == 2


def test_equal_flops_refuses_vary_and_same_named_recipes_stay_apart(tmp_path, capsys) -> None:
    recipes = [TINY_RECIPE, TINY_RECIPE.replace(":tiny", ":jepa_tiny")]
    argv = ["compare", *recipes, "--equal-flops", "--vary", "predictor.depth=1,2"]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert "--vary and --ablate would change the compute" in capsys.readouterr().err
    names = [c.name for c in cells([], None, ["/a/recipes/cifar10.py:tiny", "/b/fsdd.py:tiny"])]
    assert names == ["recipe=cifar10.tiny", "recipe=fsdd.tiny"]
