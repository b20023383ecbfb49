"""A user's own file (tests/user_plugins/signal_1d.py) registers a 1-D dataset, an encoder and a
recipe, and runs through the unchanged CLI: train, checkpoints, and kNN evaluation in a fresh
process that learns the user's components only from the run's meta.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nepa.cli import main
from nepa.config import import_file
from nepa.data.base import build_dataset
from nepa.predictor.transformer import Predictor
from nepa.train.checkpoint import list_checkpoints
from nepa.train.rundir import read_metrics

PLUGIN = Path(__file__).resolve().parent / "user_plugins" / "signal_1d.py"
RECIPE = f"{PLUGIN}:tiny"
HAPT = Path(os.environ.get("NEPA_DATA_DIR", "/nonexistent")) / "hapt.npz"
pytestmark = pytest.mark.skipif(
    not HAPT.is_file(), reason="needs ${NEPA_DATA_DIR}/hapt.npz (real sensor data)"
)


@pytest.fixture(scope="module")
def plugin():
    return import_file(PLUGIN)  # the same module object the CLI gets for this path


def test_windows_follow_the_protocol(plugin) -> None:
    cfg = plugin.tiny().data
    assert {k: v.shape for k, v in cfg.fields.items()} == {"signal": (6, 128), "label": ()}
    train, test = (build_dataset(cfg, split=s, train=False) for s in ("train", "test"))
    assert len(train) == 512 and len(test) == 256
    assert set(test.subjects.tolist()) <= plugin.TEST_SUBJECTS
    assert not set(train.subjects.tolist()) & plugin.TEST_SUBJECTS
    for ds in (train, test):
        assert ds.labels.dtype == torch.int64 and ds.labels.min() >= 0 and ds.labels.max() <= 5
    # every window lies inside one recording session and has the majority label it claims
    with np.load(HAPT) as f:
        session, label = f["session"], f["label"]
    for ds in (train, test):
        for i in range(0, len(ds), 37):
            s = ds.starts[i]
            assert session[s] == session[s + 127] == ds.sessions[i]
            values, counts = np.unique(label[s : s + 128], return_counts=True)
            assert values[counts.argmax()] == ds.labels[i] + 1
    item = train[0]
    x, y = item["signal"], item["label"]
    assert x.shape == (6, 128) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert int(y) == int(train.labels[0])


def test_train_augmentation_is_seeded(plugin) -> None:
    ds = build_dataset(plugin.tiny().data, split="train", train=True)
    x = lambda key: ds[key]["signal"]  # noqa: E731
    torch.testing.assert_close(x((3, 7)), x((3, 7)), rtol=0, atol=0)
    assert not torch.equal(x((3, 7)), x((3, 8)))
    assert not torch.equal(x((3, 7)), x(3))


def test_encoder_emits_one_axis(plugin) -> None:
    from nepa.encoders.base import build_encoder

    cfg = plugin.Conv1dPatchConfig(patch_size=16, scan="random")
    fields = plugin.tiny().data.fields
    enc = build_encoder(cfg, dim=8, fields=fields)
    tok = enc({"signal": torch.randn(2, 6, 128)})
    assert enc.n_axes == 1 and tok.grid == (8,) and tok.coords.shape == (8, 1)
    assert sorted(tok.coords[:, 0].tolist()) == list(range(8))
    raster = build_encoder(plugin.Conv1dPatchConfig(patch_size=16), dim=8, fields=fields)
    raster.load_state_dict(enc.state_dict())
    x = {"signal": torch.randn(2, 6, 128)}
    # same per-token embeddings, read in the scan's order
    torch.testing.assert_close(enc(x).emb, raster(x).emb[:, enc.coords[:, 0]], rtol=0, atol=0)
    assert not torch.equal(enc.coords[:, 0], torch.arange(8))
    with pytest.raises(ValueError, match="not divisible by encoder.patch_size=24"):
        plugin.Conv1dPatchConfig(patch_size=24).check_fields(fields)


@pytest.mark.slow
def test_train_and_eval_through_the_cli(
    plugin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    assert main(["train", RECIPE, "--out", str(run), "--no-progress"]) == 0
    meta = json.loads((run / "meta.json").read_text())
    assert meta["recipe"] == RECIPE
    assert json.loads((run / "config.json").read_text())["encoder"]["kind"] == "conv1d_patch"
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "step_00000005.pt",
        "step_00000010.pt",
    ]
    assert (run / "model.safetensors").is_file()

    # The predictor really received 1-axis coordinates.
    from nepa.eval.load import load_run

    seen = []
    original = Predictor.forward

    def spy(self, emb, coords, grid, *args, **kwargs):
        seen.append((tuple(coords.shape), tuple(grid)))
        return original(self, emb, coords, grid, *args, **kwargs)

    monkeypatch.setattr(Predictor, "forward", spy)
    _, obj = load_run(run)
    assert obj.predictor.rope.n_axes == 1
    obj.features({"signal": torch.randn(2, 6, 128)}, layers=[2])
    assert seen == [((8, 1), (8,))]
    monkeypatch.undo()

    # Evaluation in a fresh process: only meta.json's recipe path can register the plugin.
    out = tmp_path / "knn.json"
    proc = subprocess.run(
        [sys.executable, "-m", "nepa.cli", "eval", "knn", str(run), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["n_train"] == 512 and res["n_test"] == 256
    # defaults: the penultimate of 2 blocks, grid2 (two halves of the 1-D grid), causal
    assert res["layer"] == 1 and res["pool"] == "grid2" and res["attn"] == "causal"
    assert 1 / 6 < res["top1"] <= 1.0  # six activities; kNN on such windows is far above chance


@pytest.mark.slow
def test_user_scan_and_objective_through_the_cli(plugin, tmp_path: Path) -> None:
    run = tmp_path / "custom"
    assert main(["train", f"{PLUGIN}:tiny_custom", "--out", str(run), "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["encoder"]["scan"] == "user_reverse"
    assert cfg["objective"] == {**cfg["objective"], "kind": "user_nepa_mse", "scale": 0.5}
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    # 0.5 * (2 - 2 cos) lies in [0, 2]; NEPA's own loss would be negative here.
    assert len(losses) == 4 and all(0.0 <= v <= 2.0 for v in losses)
    from nepa.eval.load import load_run

    _, obj = load_run(run)
    assert type(obj).__name__ == "UserNepaMse" and obj.cfg.scale == 0.5
    assert obj.encoder.coords[:, 0].tolist() == list(range(7, -1, -1))  # reversed scan
    out = tmp_path / "knn.json"
    assert main(["eval", "knn", str(run), "--json", str(out)]) == 0
    assert 0.0 < json.loads(out.read_text())["top1"] <= 1.0
