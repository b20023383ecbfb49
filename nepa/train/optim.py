"""AdamW parameter groups and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from nepa.config import OptimConfig


def no_decay_names(model: nn.Module) -> set[str]:
    """Full names of parameters that get no weight decay: norms, biases (ndim < 2) and any
    parameter a submodule lists in ``no_weight_decay()`` (e.g. the start token)."""
    names = {n for n, p in model.named_parameters() if p.ndim < 2}
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names |= {f"{prefix}.{n}" if prefix else n for n in fn()}
    return names


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    skip = no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    return int(round(cfg.warmup * total_steps)) if cfg.warmup < 1 else int(cfg.warmup)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warm-up to ``cfg.lr`` then cosine decay to ``cfg.lr * min_lr_ratio``.
    ``step`` counts optimizer steps already taken (0 for the first)."""
    warm = warmup_steps(cfg, total_steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total_steps - warm)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
