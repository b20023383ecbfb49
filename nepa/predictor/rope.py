"""N-D rotary position embedding over integer grid coordinates.

On each of the A grid axes the coordinates of patch centres are normalised to [-1, 1] and rotate
``F = floor(Dh / (2A))`` channel pairs with periods ``theta ** (2 i / (2F))`` (i = 0..F-1), as in
DINOv3 / the NEPA reference (theta 100). When ``2A`` does not divide Dh the ``Dh - 2AF`` channels
left over are not rotated (V-JEPA 2's split, e.g. 3-D video with 64-wide heads: 3 x 20 rotated
channels plus 4 unrotated ones); when it does, this is exactly the even split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def normalized_coords(coords_TA: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Integer cell indices -> patch-centre coordinates in [-1, 1]: (T, A) -> (T, A) float, or
    per sample (B, T, A) -> (B, T, A) float."""
    size = torch.tensor(grid, dtype=torch.float32, device=coords_TA.device)
    return (coords_TA.float() + 0.5) / size * 2.0 - 1.0


class RotaryND(nn.Module):
    """Computes (cos, sin) tables for tokens at given coordinates and applies them to q/k."""

    def __init__(
        self,
        head_dim: int,
        n_axes: int,
        theta: float = 100.0,
        rescale: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        n_freq = head_dim // (2 * n_axes)  # F: frequency pairs per axis
        if n_freq == 0:
            raise ValueError(
                f"RoPE over {n_axes} axes needs a head dim of at least {2 * n_axes} (one channel "
                f"pair per axis), got {head_dim}: raise predictor.dim or lower predictor.heads"
            )
        if head_dim % 2:  # rotate-half pairs channel j with j + Dh/2
            raise ValueError(
                f"RoPE needs an even head dim, got {head_dim}: change predictor.dim or "
                "predictor.heads"
            )
        self.head_dim = head_dim
        self.n_axes = n_axes
        self.per_axis = 2 * n_freq  # rotated channels per axis (even)
        # Zero angles for the channel pairs no axis gets: cos 1, sin 0, an exact identity.
        self.n_unrotated = head_dim - n_axes * self.per_axis
        periods = theta ** (2 * torch.arange(n_freq, dtype=torch.float32) / self.per_axis)
        self.register_buffer("periods", periods, persistent=False)
        self.rescale = rescale
        self._step_scale: float | None = None  # set once per optimizer step by set_step_seed

    def set_step_seed(self, seed: int) -> None:
        """Fix this optimizer step's coordinate scale from ``seed`` (the trainer derives it
        from the run seed and the step): every micro-batch, rank and resumed run of a step
        then uses the same scale."""
        if self.rescale is not None:
            self._step_scale = self._draw_scale(torch.Generator().manual_seed(seed))

    def _draw_scale(self, generator: torch.Generator | None = None) -> float:
        lo, hi = self.rescale  # type: ignore[misc]
        u = torch.empty(()).uniform_(math.log(lo), math.log(hi), generator=generator)
        return math.exp(u.item())

    def tables(self, pos_TA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos_TA: (T, A) or (B, T, A) float coordinates -> cos, sin of shape (..., T, 1, Dh).

        Channel layout (rotate-half): pair (j, Dh/2 + j) turns by axis ``j // F``'s angle
        ``i = j % F`` for j < A*F; pairs with A*F <= j < Dh/2 are not rotated."""
        if self.training and self.rescale is not None:
            # One log-uniform scale per step, like the reference's train-time coordinate jitter;
            # outside the trainer (no step seed) a fresh one per call from the global RNG.
            s = self._step_scale if self._step_scale is not None else self._draw_scale()
            pos_TA = pos_TA * s
        angles = 2 * math.pi * pos_TA[..., None] / self.periods  # (..., T, A, F)
        angles = angles.flatten(-2)  # (..., T, A*F): axis-major blocks
        if self.n_unrotated:  # skipped when 2A divides Dh, so those tables stay bit-identical
            angles = F.pad(angles, (0, self.n_unrotated // 2))  # (..., T, Dh/2)
        angles = torch.cat([angles, angles], dim=-1)  # (..., T, Dh) rotate-half layout
        return angles.cos()[..., None, :], angles.sin()[..., None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, Dh); cos/sin broadcast to it. Rotate-half convention:
    ``x * cos + cat(-x2, x1) * sin`` with ``x1, x2 = x.chunk(2, -1)``, computed in the promoted
    dtype of (x, cos, sin) and returned in x's dtype."""
    if cos.requires_grad or sin.requires_grad:  # rare: learnable tables; keep autograd's path
        x1, x2 = x.chunk(2, dim=-1)
        return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)
    return _RotateHalf.apply(x, cos, sin)


class _RotateHalf(torch.autograd.Function):
    """The same rotation as the chunk/cat formula, in four half-width kernels instead of
    neg + cat + mul + mul + add, and a backward that is one more rotation (no saved x)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return _rotate(x, cos, sin, transpose=False).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        g = _rotate(grad, cos, sin, transpose=True)
        if g.shape != ctx.x_shape:  # x was broadcast against the tables
            g = g.sum_to_size(ctx.x_shape)
        return g.to(ctx.x_dtype), None, None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, transpose: bool) -> torch.Tensor:
    """With halves x1, x2 (and c1, c2, s1, s2 of the tables):
    forward   [x1 c1 - x2 s1, x2 c2 + x1 s2]   (= x cos + cat(-x2, x1) sin)
    transpose [x1 c1 + x2 s2, x2 c2 - x1 s1]   (its adjoint, for the backward)."""
    h = x.shape[-1] // 2
    shape = torch.broadcast_shapes(x.shape, cos.shape, sin.shape)
    dtype = torch.promote_types(torch.promote_types(x.dtype, cos.dtype), sin.dtype)
    out = torch.empty(shape, dtype=dtype, device=x.device)
    x1, x2, o1, o2 = x[..., :h], x[..., h:], out[..., :h], out[..., h:]
    c1, c2, s1, s2 = cos[..., :h], cos[..., h:], sin[..., :h], sin[..., h:]
    torch.mul(x1, c1, out=o1)
    o1.addcmul_(x2, s2 if transpose else s1, value=1.0 if transpose else -1.0)
    torch.mul(x2, c2, out=o2)
    o2.addcmul_(x1, s1 if transpose else s2, value=-1.0 if transpose else 1.0)
    return out
