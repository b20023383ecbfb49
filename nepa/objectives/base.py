"""Objective contract: owns its modules, maps a batch to (loss, metrics)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nepa.registry import Registry
from nepa.schema import ComponentConfig


class ObjectiveConfig(ComponentConfig):
    """Base of every objective config."""


class Objective(nn.Module):
    """forward(x) -> (loss: scalar tensor, metrics: dict[str, tensor]); features(x) for eval."""

    def forward(self, x: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def features(
        self, x: Any, *, layers: list[int], attn: str | None = None
    ):  # pragma: no cover
        """Frozen features for evaluation: a list (one per layer) of (B, T, D) token outputs,
        the ``Tokens`` (coords / grid of those tokens) and, optionally, a list (one per layer)
        of (B, D) start-token outputs (for ``pool: start``)."""
        raise NotImplementedError


#: builder signature: ``fn(cfg, *, encoder, predictor) -> Objective``
OBJECTIVES: Registry[Any] = Registry("objective")
