"""The attentive probe: it finds the one token that carries the class (a mean pool does not),
shuffled labels give chance, the lr is chosen without looking at test, it is deterministic,
and ``nepa eval attentive`` runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nepa.cli import main
from nepa.eval.attentive import AttentiveConfig, AttentiveHead, attentive_probe
from nepa.eval.linear import linear_probe


def _marked_tokens(n: int, T: int = 16, D: int = 16, C: int = 4, seed: int = 0):
    """(N, T, D) float16 tokens: every token shows a random class one-hot (distractors); one
    token at a random position shows the true class and a marker in channel 0."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    x = torch.randn(n, T, D, generator=g) * 0.5
    x[:, :, 1 : C + 1] += F.one_hot(torch.randint(0, C, (n, T), generator=g), C).float()
    pos, rows = torch.randint(0, T, (n,), generator=g), torch.arange(n)
    x[rows, pos, 1 : C + 1] = F.one_hot(y, C).float()
    x[rows, pos, 0] += 3.0
    return x.half(), y


CFG = AttentiveConfig(epochs=30, batch_size=64, lr_grid=(3e-3,))


def _probe(x, y, n_train: int, cfg: AttentiveConfig = CFG, C: int = 4) -> dict:
    train, test = (x[:n_train], None), (x[n_train:], None)
    return attentive_probe(train, y[:n_train], test, y[n_train:], num_classes=C, cfg=cfg, heads=1)


def test_finds_the_marked_token_where_a_mean_pool_fails() -> None:
    x, y = _marked_tokens(1200)
    r = _probe(x, y, 800)
    assert r["top1"] >= 0.95 and r["val_top1"] >= 0.9
    mean = x.float().mean(1)
    assert linear_probe(mean[:800], y[:800], mean[800:], y[800:], num_classes=4)["top1"] < 0.5


def test_shuffled_labels_give_chance() -> None:
    x, y = _marked_tokens(1200)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]  # no signal left
    assert abs(_probe(x, y, 800)["top1"] - 0.25) < 0.08


def test_lr_is_chosen_without_test_labels_and_runs_are_deterministic() -> None:
    x, y = _marked_tokens(400)
    cfg = AttentiveConfig(epochs=3, batch_size=64, lr_grid=(1e-4, 3e-3))
    a = _probe(x, y, 300, cfg)
    b = _probe(x, y, 300, cfg)
    flipped = _probe(x, torch.cat([y[:300], (y[300:] + 1) % 4]), 300, cfg)
    assert a == b
    assert (a["lr"], a["val_top1_by_lr"]) == (flipped["lr"], flipped["val_top1_by_lr"])
    assert a["top1"] != flipped["top1"]  # only the final score looks at test
    assert set(a["val_top1_by_lr"]) == {"0.0001", "0.003"} and a["n_fit"] + a["n_val"] == 300


def test_padding_keys_are_ignored() -> None:
    head = AttentiveHead(8, 3, queries=2, heads=2).eval()
    x = torch.randn(2, 5, 8)
    keep = torch.tensor([[True] * 3 + [False] * 2] * 2)
    changed = x.clone()
    changed[:, 3:] = 100.0  # only padded positions change
    assert torch.allclose(head(x, keep), head(changed, keep), atol=1e-6)
    assert not torch.allclose(head(x), head(changed))


@pytest.mark.slow
def test_eval_attentive_cli(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "attentive.json"
    sets = ["--set", "eval.attentive.epochs=5", "--set", "eval.attentive.lr_grid=[1e-3, 1e-2]"]
    assert main(["eval", "attentive", str(tiny_run), *sets, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["protocol"] == "attentive" and 0.0 <= r["top1"] <= 1.0
    assert (r["n_train"], r["n_test"], r["tokens"]) == (256, 128, 16)
    assert (r["layer"], r["attn"], r["epochs"], r["queries"], r["heads"]) == (1, "causal", 5, 1, 2)
    assert r["lr"] in (1e-3, 1e-2) and r["lr_grid"] == [1e-3, 1e-2]


@pytest.mark.slow
def test_bad_attentive_override_exits_2(tiny_run: Path) -> None:
    assert main(["eval", "attentive", str(tiny_run), "--set", "eval.attentive.epoch=3"]) == 2
    assert main(["eval", "attentive", str(tiny_run), "--set", "eval.attentive.queries=0"]) == 2
