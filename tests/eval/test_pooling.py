"""Pooling honours the padding mask: a padded sample pools exactly like the same sample without
padding, for every pooling, directly and through a backbone whose encoder pads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nepa.eval.features import pool_features, pool_tokens
from nepa.objectives.backbone import Features, TokenBackbone
from nepa.predictor.config import PredictorConfig
from nepa.predictor.transformer import Predictor
from nepa.tokens import Tokens

POOLS = ["mean", "last", "grid2", "grid4"]


def _coords(T: int) -> torch.Tensor:
    return torch.stack([torch.arange(T) // 4, torch.arange(T) % 4], -1)  # (T, 2) on a grid


@pytest.mark.parametrize("pool", POOLS)
def test_padded_tokens_pool_like_the_unpadded_sample(pool: str) -> None:
    g = torch.Generator().manual_seed(0)
    T, P, D = 12, 5, 8
    h = torch.randn(1, T, D, generator=g)
    junk = 100 * torch.randn(1, P, D, generator=g)  # padding that must not count
    coords_pad = torch.cat([_coords(T), torch.zeros(P, 2, dtype=torch.long)])
    keep = torch.tensor([[True] * T + [False] * P])
    plain = pool_tokens(h, Features([h], None, _coords(T), (4, 4)), pool)
    padded = pool_tokens(torch.cat([h, junk], 1), Features([h], keep, coords_pad, (4, 4)), pool)
    torch.testing.assert_close(padded, plain)


class PaddingEncoder(nn.Module):
    """A 1-D variable-length encoder: ``{"signal": (B, L, C), "length": (B,)}`` -> one token per
    step, the steps at or past ``length`` marked as padding."""

    n_axes = 1

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3, dim)

    def forward(self, batch):
        x, length = batch["signal"], batch["length"]
        T = x.shape[1]
        keep = torch.arange(T)[None] < length[:, None]
        return Tokens(self.proj(x), torch.arange(T)[:, None], (T,), keep)


@pytest.mark.parametrize("start_token", [True, False])
@pytest.mark.parametrize("attn", ["causal", "bidirectional"])
def test_a_padded_sample_embeds_like_the_unpadded_one(start_token: bool, attn: str) -> None:
    torch.manual_seed(0)
    cfg = PredictorConfig(dim=16, depth=2, heads=2, attn=attn, start_token=start_token)
    backbone = TokenBackbone(PaddingEncoder(16), Predictor(cfg, n_axes=1)).eval()
    x = torch.randn(1, 7, 3)
    padded = {"signal": torch.cat([x, 50 * torch.randn(1, 4, 3)], 1), "length": torch.tensor([7])}
    plain = {"signal": x, "length": torch.tensor([7])}
    with torch.no_grad():
        a, b = backbone(plain, layers=[2]), backbone(padded, layers=[2])
    for pool in POOLS + (["start"] if start_token else []):
        # plain has its own grid of 7 cells; grid pooling bins by each sample's own grid
        if pool.startswith("grid"):
            b = Features(b.layers, b.keep, b.coords, (7,), b.summary)
        torch.testing.assert_close(pool_features(b, 0, pool), pool_features(a, 0, pool))
