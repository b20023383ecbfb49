"""The discrete next-token baseline: k-means codebook, tokenizer files, the loss by hand, and a
run that fits its codebook once, trains, resumes and evaluates."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from tiny_recipe import token_tiny

from nepa.batch import collate
from nepa.cli import main
from nepa.config import apply_overrides
from nepa.data.base import build_dataset, sample_batches
from nepa.objectives.token import TokenObjective
from nepa.objectives.tokenizer import Tokenizer, fit_codebook, nearest
from nepa.train.build import build_objective
from nepa.train.checkpoint import list_checkpoints, load_checkpoint
from nepa.train.trainer import train


def test_kmeans_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centers])
    codes = fit_codebook(x, 4, iters=10, seed=0)
    found = codes[nearest(centers, codes)]
    torch.testing.assert_close(found, centers, atol=0.05, rtol=0)
    assert len(set(nearest(x, codes).tolist())) == 4


def test_tokenizer_file_round_trip_and_mismatch(tmp_path) -> None:
    meta = {"codes": 8, "patch_dim": 3, "encoder": "ImageEncoder", "grid": [4, 4]}
    tok = Tokenizer(torch.randn(8, 3), meta)
    tok.save(tmp_path / "t.safetensors")
    again = Tokenizer.load(tmp_path / "t.safetensors", meta)
    x = torch.randn(5, 7, 3)
    assert torch.equal(tok.encode(x), again.encode(x))
    with pytest.raises(ValueError, match=r"does not match this run \(codes: file 8, run 16\)"):
        Tokenizer.load(tmp_path / "t.safetensors", {**meta, "codes": 16})
    with pytest.raises(FileNotFoundError, match="nepa tokenizer fit"):
        Tokenizer.load(tmp_path / "missing.safetensors", meta)


def _fitted() -> tuple[TokenObjective, dict]:
    cfg = token_tiny()
    objective = build_objective(cfg)
    objective.fit(partial(sample_batches, cfg.data))
    ds = build_dataset(cfg.data, split="train", train=True)
    return objective, collate([ds[(i, i)] for i in range(6)])


def test_loss_is_next_code_cross_entropy_by_hand() -> None:
    objective, batch = _fitted()
    objective.eval()
    loss, metrics = objective(batch)
    raw = objective.encoder.patcher.patches(batch)
    codebook = objective.encoder.codebook
    ids = ((raw.emb[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)  # (B, T) by brute force
    h = objective.predictor(objective.encoder.embed(ids), raw.coords, raw.grid, None)
    logits = objective.head(h[:, :-1])  # start token: s, t_1..t_{T-1} predict t_1..t_T
    want = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert metrics["tokens"] == ids.numel() and 0 <= float(metrics["accuracy"]) <= 1


def test_cli_fit_then_train_with_the_file_uses_the_same_codes(tmp_path, capsys) -> None:
    recipe = "tests/tiny_recipe.py:token_tiny"
    out = tmp_path / "tok.safetensors"
    assert main(["tokenizer", "fit", recipe, "--out", str(out)]) == 0
    objective, _ = _fitted()
    loaded = build_objective(apply_overrides(token_tiny(), [f"objective.tokenizer={out}"]))
    assert torch.equal(loaded.encoder.codebook, objective.encoder.codebook)
    assert bool(loaded.encoder.fitted)
    capsys.readouterr()
    bad = ["tokenizer", "fit", recipe, "--set", "objective.codes=16", "--out", str(out)]
    assert main(bad) == 0  # a new file for 16 codes...
    wrong = ["train", recipe, "--set", f"objective.tokenizer={out}", "--out", str(tmp_path / "r")]
    assert main(wrong) == 2  # ...which a 32-code run refuses in one line
    assert "does not match this run (codes: file 16, run 32)" in capsys.readouterr().err


def test_run_fits_once_resumes_exactly_and_evaluates(tmp_path, monkeypatch) -> None:
    from sigterm import sigterm_during_step

    cfg = apply_overrides(token_tiny(), ["train.ckpt_every=100"])
    full = train(cfg, tmp_path / "full", progress=False)
    with monkeypatch.context() as m:
        sigterm_during_step(m, 3)
        first = train(cfg, tmp_path / "split", progress=False)
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "split" / "checkpoints")[-1])
    assert bool(ckpt["model"]["encoder.fitted"])  # the codebook is in the checkpoint
    second = train(cfg, tmp_path / "split", resume=True, progress=False)
    assert first.losses + second.losses == full.losses
    assert full.losses[-1] < full.losses[0]
    assert main(["eval", "knn", str(tmp_path / "full")]) == 0
