"""The linear probe: separable data is learned, shuffled labels give chance, the L2 strength
is chosen without looking at test, and ``nepa eval linear`` runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nepa.cli import main
from nepa.eval.linear import linear_probe, standardize, stratified_split


def _blobs(n: int, classes: int = 3, dim: int = 20, sep: float = 6.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * sep
    y = torch.arange(n) % classes
    x = centres[y] + torch.randn(n, dim, generator=g)
    return x * 50 + 7, y  # far from standardised: the probe must standardise


def test_separable_data_is_learned() -> None:
    x, y = _blobs(900)
    xtr, ytr, xte, yte = x[:600], y[:600], x[600:], y[600:]
    r = linear_probe(xtr, ytr, xte, yte, num_classes=3)
    assert r["top1"] >= 0.99 and r["train_top1"] >= 0.99 and r["val_top1"] >= 0.99


def test_shuffled_labels_give_chance() -> None:
    x, y = _blobs(900, classes=4)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]  # no signal left
    r = linear_probe(x[:600], y[:600], x[600:], y[600:], num_classes=4)
    assert abs(r["top1"] - 0.25) < 0.08


def test_l2_is_chosen_without_test_labels() -> None:
    x, y = _blobs(600, classes=3, sep=0.6)  # overlapping: the penalty matters
    a = linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=3)
    b = linear_probe(x[:400], y[:400], x[400:], y[400:].flip(0), num_classes=3)
    assert (a["l2"], a["val_top1_by_l2"]) == (b["l2"], b["val_top1_by_l2"])
    assert a["top1"] != b["top1"]  # only the final score looks at test


def test_stratified_split_and_standardize() -> None:
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    fit, val = stratified_split(y, 0.1, seed=0)
    assert len(set(fit.tolist()) & set(val.tolist())) == 0 and len(fit) + len(val) == 100
    assert torch.bincount(y[val]).tolist() == [5, 3, 2]
    a, b = standardize(torch.randn(50, 4) * 3 + 2, torch.randn(10, 4))
    assert torch.allclose(a.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(a.std(0), torch.ones(4), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("pool", "attn"), [("grid2", "causal"), ("start", "bidirectional")])
def test_eval_linear_cli(tiny_run: Path, tmp_path: Path, pool: str, attn: str) -> None:
    out = tmp_path / "linear.json"
    sets = ["--set", f"eval.pool={pool}", "--set", f"eval.attn={attn}"]
    assert main(["eval", "linear", str(tiny_run), *sets, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["protocol"] == "linear" and (r["pool"], r["attn"]) == (pool, attn)
    assert (r["n_train"], r["n_test"]) == (256, 128) and r["n_fit"] + r["n_val"] == 256
    assert r["l2"] in [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert r["top1"] > 0.3  # 10 digit classes: far above chance even for a 6-step model


@pytest.mark.slow
def test_start_token_under_causal_attention_sees_nothing(tiny_run: Path) -> None:
    # Under the causal mask the start token attends only to itself: its output is the same for
    # every image, so as a feature it carries no information (use bidirectional attention).
    from nepa.eval.features import extract
    from nepa.eval.load import load_run
    from nepa.eval.run import eval_splits

    cfg, objective = load_run(tiny_run)
    _, test = eval_splits(cfg)
    kw = dict(layers=[1, 2], pools=["start"], device=torch.device("cpu"))
    causal = extract(objective, test, attn="causal", **kw)[(2, "start")]
    bidir = extract(objective, test, attn="bidirectional", **kw)[(2, "start")]
    assert torch.allclose(causal, causal[:1].expand_as(causal), atol=1e-5)
    assert bidir.std(0).mean() > 1e-3
