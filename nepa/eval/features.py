"""Frozen features from any objective: choose a layer, an attention mode and a pooling."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from nepa.objectives.base import Objective
from nepa.tokens import Tokens


def pool_tokens(h_BTD: torch.Tensor, tok: Tokens, pool: str) -> torch.Tensor:
    """(B, T, D) token outputs -> (B, F) features.

    mean:  average over tokens (throws the layout away).
    last:  the last token in scan order (under causal attention the only one that saw all).
    (``start``, the start token's output, is taken in :func:`extract`; under causal attention
    it has seen nothing but itself, so use it with bidirectional attention.)
    gridK: average tokens within each of K^A cells of their grid (coords binned per axis), then
           concatenate: keeps a coarse layout for any number of grid axes.
    """
    if pool == "mean":
        return h_BTD.mean(1)
    if pool == "last":
        return h_BTD[:, -1]
    if pool.startswith("grid"):
        k = int(pool[4:])
        grid = torch.tensor(tok.grid, device=tok.coords.device)
        bins = tok.coords * torch.clamp(grid, max=k) // grid  # (T, A), each < min(k, size)
        cell = torch.zeros(bins.shape[0], dtype=torch.long, device=bins.device)
        for a in range(bins.shape[1]):
            cell = cell * k + bins[:, a]
        onehot = torch.nn.functional.one_hot(cell, k ** bins.shape[1]).to(h_BTD.dtype)  # (T, C)
        summed = torch.einsum("btd,tc->bcd", h_BTD, onehot)
        counts = onehot.sum(0).clamp_min(1)[None, :, None]
        return (summed / counts).flatten(1)
    raise ValueError(f"unknown pool {pool!r}; valid: mean, last, grid2, grid4")


@torch.no_grad()
def extract(
    objective: Objective,
    dataset: Dataset,
    *,
    layers: list[int],
    pools: list[str],
    attn: str,
    device: torch.device,
    batch_size: int = 256,
    bf16: bool = False,
) -> dict[tuple[int, str], torch.Tensor]:
    """Features for every (layer, pool) in one pass over ``dataset`` (eval transform)."""
    objective.eval()
    out: dict[tuple[int, str], list[torch.Tensor]] = {(l, p): [] for l in layers for p in pools}
    for x, _ in DataLoader(dataset, batch_size=batch_size):
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            hs, tok, *rest = objective.features(x.to(device), layers=layers, attn=attn)
        starts = rest[0] if rest else None  # (B, D) per layer, for objectives with a start token
        if "start" in pools and starts is None:
            raise ValueError(f"{type(objective).__name__} has no start token to pool")
        for i, (layer, h) in enumerate(zip(layers, hs, strict=True)):
            for p in pools:
                f = starts[i] if p == "start" else pool_tokens(h.float(), tok, p)
                out[(layer, p)].append(f.float().cpu())
    return {key: torch.cat(v) for key, v in out.items()}


def eval_subset(dataset: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """At most ``limit`` items, drawn at random with a fixed seed (datasets are often stored
    class by class, so the first N would all be one class); in ascending index order."""
    if limit is None or limit >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:limit].sort().values
    subset = Subset(dataset, idx.tolist())
    subset.labels = dataset.labels[idx]  # type: ignore[attr-defined]
    subset.num_classes = dataset.num_classes  # type: ignore[attr-defined]
    return subset
