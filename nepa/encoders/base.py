"""Encoder contract: one modality's batch -> Tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nepa.registry import Registry
from nepa.schema import ComponentConfig
from nepa.tokens import Tokens


class EncoderConfig(ComponentConfig):
    """Base of every encoder config. ``kind`` names the registry entry."""

    def check_input(self, sample_shape: tuple[int, ...]) -> None:
        """Raise ValueError, saying how to fix it, if samples of this shape cannot be encoded."""


class Encoder(nn.Module):
    """Maps a batch of one modality to :class:`Tokens`.

    Subclasses set ``n_axes`` (grid axes of the coordinates they emit) and ``grid`` once built.
    """

    n_axes: int
    grid: tuple[int, ...]

    def forward(self, x: Any) -> Tokens:  # pragma: no cover - interface
        raise NotImplementedError


#: builder signature: ``fn(cfg, *, dim: int, sample_shape: tuple[int, ...]) -> Encoder``
ENCODERS: Registry[Any] = Registry("encoder")


def build_encoder(cfg: EncoderConfig, *, dim: int, sample_shape: tuple[int, ...]) -> Encoder:
    return ENCODERS.get(cfg.kind)(cfg, dim=dim, sample_shape=sample_shape)


def order_tokens(
    emb_BTD: torch.Tensor, coords_TA: torch.Tensor, order_T: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder row-major tokens into a scan order (``order_T[i]`` = row-major index visited i-th)."""
    return emb_BTD[:, order_T], coords_TA[order_T]
