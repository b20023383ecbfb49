"""Frozen features from any objective: choose layers, an attention mode and poolings.

Everything goes through ``objective.features(batch, layers, attn) -> Features``; pooling honours
the padding mask (``Features.keep``), so a padded sample pools exactly like the same sample
without padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from nepa.batch import LABEL, collate, to_device
from nepa.objectives.backbone import Features
from nepa.objectives.base import Objective

POOLS = ("mean", "last", "start", "grid2", "grid4")


def pool_tokens(h_BTD: torch.Tensor, feats: Features, pool: str) -> torch.Tensor:
    """(B, T, D) token outputs -> (B, F) features, over real tokens only (``feats.keep``).

    mean:  average over tokens (throws the layout away).
    last:  the last real token in scan order (under causal attention the only one that saw all).
    gridK: average tokens within each of K^A cells of their grid (coords binned per axis), then
           concatenate: keeps a coarse layout for any number of grid axes. An empty cell is 0.
    (``start``, the per-sample summary such as the start token's output, is taken in
    :func:`pool_features`.)
    """
    B, T, _ = h_BTD.shape
    keep = feats.keep
    w_BT = torch.ones(B, T, dtype=h_BTD.dtype, device=h_BTD.device)
    if keep is not None:
        w_BT = keep.to(h_BTD.dtype)
    if pool == "mean":
        return (h_BTD * w_BT[..., None]).sum(1) / w_BT.sum(1, keepdim=True).clamp_min(1.0)
    if pool == "last":
        if keep is None:
            return h_BTD[:, -1]
        last_B = T - 1 - keep.flip(1).to(torch.int8).argmax(1)  # index of the last real token
        return h_BTD[torch.arange(B, device=h_BTD.device), last_B]
    if pool.startswith("grid"):
        k = int(pool[4:])
        coords = feats.coords if feats.coords.ndim == 3 else feats.coords[None]  # (B|1, T, A)
        grid = torch.tensor(feats.grid, device=coords.device)
        cells = torch.clamp(grid, max=k)
        # (., T, A), each < min(k, size); padding may sit outside the grid: clamped, then unweighted
        bins = torch.minimum(coords * cells // grid, cells - 1)
        cell = torch.zeros(bins.shape[:-1], dtype=torch.long, device=bins.device)
        for a in range(bins.shape[-1]):
            cell = cell * k + bins[..., a]
        onehot = F.one_hot(cell, k ** bins.shape[-1]).to(h_BTD.dtype) * w_BT[..., None]  # B,T,C
        summed = torch.einsum("btd,btc->bcd", h_BTD, onehot.expand(B, -1, -1))
        counts = onehot.sum(1).clamp_min(1)[..., None]  # (B, C, 1)
        return (summed / counts.expand(B, -1, -1)).flatten(1)
    raise ValueError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")


def pool_features(feats: Features, index: int, pool: str) -> torch.Tensor:
    """(B, F) features of ``feats.layers[index]`` pooled by ``pool`` (``start``: the summary)."""
    if pool == "start":
        if feats.summary is None:
            raise ValueError("this backbone has no per-sample summary (start token) to pool")
        return feats.summary[index]
    return pool_tokens(feats.layers[index].float(), feats, pool)


def loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate)


@dataclass(frozen=True)
class Need:
    """One thing a protocol reads from a split: ``pool`` (one of :data:`POOLS`) of block
    ``layer``'s outputs, an (N, F) matrix; or with pool ``tokens`` the block's (N, T, D)
    float16 token outputs and their (N, T) keep mask (None when nothing is padded)."""

    layer: int
    pool: str


TOKENS = "tokens"


@torch.inference_mode()
def extract_needs(
    objective: Objective,
    dataset: Dataset,
    needs: set[Need],
    *,
    attn: str | None,
    device: torch.device,
    batch_size: int = 256,
    bf16: bool = False,
) -> dict[Need, Any]:
    """Every need in one pass over ``dataset`` (eval transform); the backbone runs only up to
    the deepest layer asked for."""
    objective.eval()
    layers = sorted({n.layer for n in needs})
    out: dict[Need, list] = {n: [] for n in needs}
    keeps: list[torch.Tensor] = []
    for batch in loader(dataset, batch_size):
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            feats = objective.features(to_device(batch, device), layers=layers, attn=attn)
        for n in needs:
            h = feats.layers[layers.index(n.layer)]
            if n.pool == TOKENS:
                out[n].append(h.to(torch.float16).cpu())
            else:
                out[n].append(pool_features(feats, layers.index(n.layer), n.pool).float().cpu())
        if feats.keep is not None:
            keeps.append(feats.keep.cpu())
    keep = torch.cat(keeps) if keeps else None
    return {n: (torch.cat(v), keep) if n.pool == TOKENS else torch.cat(v) for n, v in out.items()}


def extract(
    objective: Objective,
    dataset: Dataset,
    *,
    layers: list[int],
    pools: list[str],
    **kw: Any,
) -> dict[tuple[int, str], torch.Tensor]:
    """Features for every (layer, pool) in one pass over ``dataset`` (eval transform)."""
    needs = {Need(l, p) for l in layers for p in pools}
    return {(n.layer, n.pool): v for n, v in extract_needs(objective, dataset, needs, **kw).items()}


def labels_of(dataset: Dataset) -> torch.Tensor:
    """(N,) int64 class labels of an evaluation split (the ``label`` field of every item)."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return torch.as_tensor(labels, dtype=torch.int64)
    return torch.cat([b[LABEL] for b in loader(dataset, 1024)]).to(torch.int64)


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
