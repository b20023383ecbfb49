"""Attentive probe on frozen token outputs (as in V-JEPA / AIM).

A few learned queries cross-attend over the (B, T, D) token outputs of one layer (keys and values
get a LayerNorm first); the attended vectors go through LayerNorm + Linear to the classes. Unlike
mean pooling, the probe can pick out the tokens that carry the class wherever they are.

Tokens come from :mod:`nepa.eval.store` (float16 on the CPU). The peak learning rate is chosen on a stratified
validation split carved from train, never on test; the probe is then retrained on all of train
with that rate and scored once on test. Training is seeded, so it is deterministic on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from nepa.eval.linear import stratified_split
from nepa.params import decay_groups
from nepa.schema import Config
from nepa.train.optim import lr_at, warmup_steps


class AttentiveConfig(Config):
    """The attentive probe: ``queries`` learned queries, AdamW, warm-up + cosine, fixed epochs.

    ``lr_grid``: peak rates tried; the one with the best top-1 on the validation split of train
    (``eval.val_fraction``) is used for the final fit on all of train.
    """

    queries: int = Field(1, gt=0, description="learned queries (their outputs are concatenated)")
    heads: int | None = Field(None, gt=0, description="attention heads; null: the backbone's")
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(128, gt=0)
    lr_grid: tuple[float, ...] = Field((3e-4, 1e-3, 3e-3, 1e-2), min_length=1)
    weight_decay: float = Field(0.05, ge=0)
    warmup: float = Field(
        0.1, ge=0, description="warm-up length: a fraction of steps (<1) or a step count (>=1)"
    )

    @field_validator("lr_grid")
    @classmethod
    def _check_lrs(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if min(v) <= 0:
            raise ValueError(f"learning rates must be > 0, got {list(v)}")
        return v


class AttentiveHead(nn.Module):
    """(B, T, D) tokens (+ optional (B, T) keep mask) -> (B, C) logits."""

    def __init__(self, dim: int, num_classes: int, *, queries: int = 1, heads: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, queries, dim) * 0.02)  # (1, Q, D)
        self.kv_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(queries * dim)
        self.fc = nn.Linear(queries * dim, num_classes)

    def forward(self, x_BTD: torch.Tensor, keep_BT: torch.Tensor | None = None) -> torch.Tensor:
        kv = self.kv_norm(x_BTD)
        q = self.query.expand(x_BTD.shape[0], -1, -1)
        pad = None if keep_BT is None else ~keep_BT
        out_BQD, _ = self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)
        return self.fc(self.norm(out_BQD.flatten(1)))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Scales every group's initial lr by the pretraining schedule's factor (linear warm-up,
    cosine to zero); ``warmup`` as in OptimConfig: a fraction of steps (<1) or a step count."""
    warm = warmup_steps(warmup, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, peak=1.0, warmup=warm, total=total_steps)
    )


def adamw(model: nn.Module, lr: float, weight_decay: float, **kw) -> torch.optim.AdamW:
    """AdamW without weight decay on norms and biases (as pretraining)."""
    groups = decay_groups(model, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, **kw)


def train_head(
    x_NTD: torch.Tensor,
    y_N: torch.Tensor,
    keep_NT: torch.Tensor | None,
    *,
    num_classes: int,
    cfg: AttentiveConfig,
    heads: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> AttentiveHead:
    """Fit a fresh head (seeded init and batch order) for ``cfg.epochs`` epochs."""
    torch.manual_seed(seed)
    head = AttentiveHead(x_NTD.shape[-1], num_classes, queries=cfg.queries, heads=heads).to(device)
    opt = adamw(head, lr, cfg.weight_decay)
    steps_per_epoch = -(-len(y_N) // cfg.batch_size)
    sched = warmup_cosine(opt, cfg.epochs * steps_per_epoch, cfg.warmup)
    g = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(y_N), generator=g).split(cfg.batch_size):
            keep = None if keep_NT is None else keep_NT[idx].to(device)
            logits = head(x_NTD[idx].to(device, torch.float32), keep)
            loss = F.cross_entropy(logits, y_N[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def head_top1(
    head: AttentiveHead,
    x_NTD: torch.Tensor,
    y_N: torch.Tensor,
    keep_NT: torch.Tensor | None,
    device: torch.device,
    batch_size: int = 512,
) -> float:
    correct = 0
    for idx in torch.arange(len(y_N)).split(batch_size):
        keep = None if keep_NT is None else keep_NT[idx].to(device)
        pred = head(x_NTD[idx].to(device, torch.float32), keep).argmax(-1).cpu()
        correct += int((pred == y_N[idx]).sum())
    return correct / len(y_N)


def _rows(keep: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if keep is None else keep[idx]


def attentive_probe(
    train: tuple[torch.Tensor, torch.Tensor | None],
    ytr: torch.Tensor,
    test: tuple[torch.Tensor, torch.Tensor | None],
    yte: torch.Tensor,
    *,
    num_classes: int,
    cfg: AttentiveConfig,
    heads: int,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | None = None,
) -> dict:
    """``train`` / ``test``: (tokens (N, T, D), keep (N, T) or None). Choose the lr on a
    validation split of train, retrain on all of train, score test once."""
    device = device or torch.device("cpu")
    (xtr, ktr), (xte, kte) = train, test
    fit, val = stratified_split(ytr, val_fraction, seed)
    kw = dict(num_classes=num_classes, cfg=cfg, heads=heads, seed=seed, device=device)
    val_acc = {}
    for lr in cfg.lr_grid:
        head = train_head(xtr[fit], ytr[fit], _rows(ktr, fit), lr=lr, **kw)
        val_acc[lr] = head_top1(head, xtr[val], ytr[val], _rows(ktr, val), device)
    best = max(cfg.lr_grid, key=lambda lr: (val_acc[lr], -lr))  # ties: the smaller rate
    head = train_head(xtr, ytr, ktr, lr=best, **kw)
    return {
        "top1": head_top1(head, xte, yte, kte, device),
        "train_top1": head_top1(head, xtr, ytr, ktr, device),
        "lr": best,
        "val_top1": val_acc[best],
        "val_top1_by_lr": {str(k): v for k, v in val_acc.items()},
        "n_fit": len(fit),
        "n_val": len(val),
    }
