"""N-D rotary position embedding over integer grid coordinates.

The head dimension is split evenly across the A grid axes; on each axis the coordinates of
patch centres are normalised to [-1, 1] and rotate ``Dh / (2A)`` channel pairs with periods
``theta ** (2 i / (Dh / A))`` (i = 0..Dh/(2A)-1), as in DINOv3 / the NEPA reference (theta 100).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def normalized_coords(coords_TA: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Integer cell indices -> patch-centre coordinates in [-1, 1]. (T, A) float."""
    size = torch.tensor(grid, dtype=torch.float32, device=coords_TA.device)
    return (coords_TA.float() + 0.5) / size * 2.0 - 1.0


class RotaryND(nn.Module):
    """Computes (cos, sin) tables for tokens at given coordinates and applies them to q/k."""

    def __init__(self, head_dim: int, n_axes: int, theta: float = 100.0,
                 rescale: tuple[float, float] | None = None) -> None:
        super().__init__()
        if head_dim % (2 * n_axes):
            raise ValueError(
                f"RoPE over {n_axes} axes needs a head dim divisible by {2 * n_axes}, got {head_dim}: "
                "change predictor.dim or predictor.heads"
            )
        self.n_axes = n_axes
        self.per_axis = head_dim // n_axes  # channels per axis (even)
        n_freq = self.per_axis // 2
        periods = theta ** (2 * torch.arange(n_freq, dtype=torch.float32) / self.per_axis)
        self.register_buffer("periods", periods, persistent=False)
        self.rescale = rescale

    def tables(self, pos_TA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos_TA: (T, A) or (B, T, A) float coordinates -> cos, sin of shape (..., T, 1, Dh)."""
        if self.training and self.rescale is not None:
            lo, hi = self.rescale
            # One log-uniform scale per step, like the reference's train-time coordinate jitter.
            s = math.exp(torch.empty(()).uniform_(math.log(lo), math.log(hi)).item())
            pos_TA = pos_TA * s
        angles = 2 * math.pi * pos_TA[..., None] / self.periods  # (..., T, A, F)
        angles = angles.flatten(-2)  # (..., T, A*F): axis-major blocks
        angles = torch.cat([angles, angles], dim=-1)  # (..., T, Dh) rotate-half layout
        return angles.cos()[..., None, :], angles.sin()[..., None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, Dh); cos/sin broadcast to it. Rotate-half convention."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
