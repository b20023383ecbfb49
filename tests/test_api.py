"""The Python API: load a run and embed your own data in a few lines (README, "Python API")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_recipe import TINY_RECIPE, tiny_with

import nepa
from nepa.data.base import build_dataset
from nepa.data.paths import resolve_path
from nepa.eval.features import extract
from nepa.train.trainer import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step run whose mean/std were computed from the data (not given in the config)."""
    out = tmp_path_factory.mktemp("api") / "run"
    cache = out.parent / "cache"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("NEPA_CACHE_DIR", str(cache))
        cfg = tiny_with("data.mean=null", "data.std=null", "train.steps=2")
        train(cfg, out, recipe=TINY_RECIPE, progress=False)
    shutil.rmtree(cache)  # the statistics now live only in the run directory
    return out


def test_the_normalisation_is_stored_in_the_run_directory(run_dir: Path) -> None:
    norm = json.loads((run_dir / "meta.json").read_text())["data_normalization"]
    assert norm["field"] == "image" and len(norm["mean"]) == len(norm["std"]) == 1
    assert 0.05 < norm["mean"][0] < 0.3 and 0.2 < norm["std"][0] < 0.45  # MNIST-like pixels


def test_embed_own_images_like_evaluation(run_dir: Path, monkeypatch) -> None:
    run = nepa.load_run(run_dir)
    with np.load(resolve_path("nepa:assets/demo/demo.npz")) as f:
        digits = f["x_test"][:6]  # (6, 28, 28) uint8: "my own" images
    batch = run.collate([run.transform(img) for img in digits])
    assert batch["image"].shape == (6, 1, 28, 28)
    feats = run.embed(batch)  # the run's eval.layer and eval.pool
    assert feats.shape == (6, 4 * 32) and torch.isfinite(feats).all()
    assert run.embed(batch, layer=-1, pool="mean").shape == (6, 32)
    # the same numbers evaluation gets from the dataset (its eval transform and statistics)
    monkeypatch.setenv("NEPA_CACHE_DIR", str(run_dir.parent / "cache2"))
    ds = build_dataset(run.cfg.data, split="test", train=False)
    own = [ds.images[i] for i in range(5)]  # uint8 (1, 28, 28) tensors, as a user holds them
    mine = run.embed(run.collate([run.transform(img) for img in own]))
    expected = extract(
        run.objective,
        torch.utils.data.Subset(ds, range(5)),
        layers=[1],
        pools=["grid2"],
        attn=None,
        device=torch.device("cpu"),
    )[(1, "grid2")]
    torch.testing.assert_close(mine, expected)


def test_random_init_and_bad_input(run_dir: Path) -> None:
    trained, random = nepa.load_run(run_dir), nepa.load_run(run_dir, random_init=True)
    img = np.zeros((28, 28), dtype=np.uint8)
    batch = trained.collate([trained.transform(img)])
    assert not torch.equal(trained.embed(batch), random.embed(batch))
    with pytest.raises(ValueError, match="uint8 image with 1 channel"):
        trained.transform(np.zeros((28, 28, 3), dtype=np.uint8))
