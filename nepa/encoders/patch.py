"""What the patch encoders share: a grid of patches read in a scan order, with padding along
the first (time) axis marked from a length field.

An encoder computes its tokens row-major over ``grid`` (C order), then :meth:`GridEncoder.scanned`
gathers them, and the padding mask, into the configured scan order and attaches the
coordinates. Image, spectrogram, video and sensor encoders all go through it.
"""

from __future__ import annotations

import math

import torch

from nepa.encoders.base import Encoder
from nepa.encoders.scans import scanned_grid
from nepa.tokens import Tokens


class GridEncoder(Encoder):
    """Base of encoders whose tokens are the cells of a fixed grid, read in a scan order."""

    def set_grid(self, grid: tuple[int, ...], scan: str, seed: int) -> None:
        self.grid = tuple(grid)
        self.n_axes = len(self.grid)
        order, coords = scanned_grid(scan, self.grid, seed)
        self.register_buffer("order", order, persistent=False)  # (T,) row-major index per step
        self.register_buffer("coords", coords, persistent=False)  # (T, A) in scan order

    def scanned(self, emb_BTD: torch.Tensor, keep_BT: torch.Tensor | None = None) -> Tokens:
        """Row-major tokens (B, T, D) and padding mask (B, T) -> Tokens in scan order."""
        keep = None if keep_BT is None else keep_BT[:, self.order]
        return Tokens(emb=emb_BTD[:, self.order], coords=self.coords, grid=self.grid, keep=keep)

    def keep_from_length(
        self, length_B: torch.Tensor, ends_N: torch.Tensor, per_step: int = 1
    ) -> torch.Tensor:
        """Row-major (B, T) mask of the real tokens when the first grid axis is time.

        ``ends_N``: where each of the N steps of the first axis ends (in the units of
        ``length``); a step is real when it ends within the length. Each step covers
        ``per_step`` consecutive row-major cells (the other axes).
        """
        keep_BN = ends_N.to(length_B.device)[None] <= length_B[:, None]
        return keep_BN.repeat_interleave(per_step, dim=1)

    def keep_time_steps(self, length_B: torch.Tensor | None, step: int) -> torch.Tensor | None:
        """Row-major (B, T) mask when grid axis 0 is time in whole patches of ``step`` units
        (frames): the tokens whose time patch ends within the length; None without a length."""
        if length_B is None:
            return None
        ends = (torch.arange(self.grid[0]) + 1) * step
        return self.keep_from_length(length_B, ends, math.prod(self.grid[1:]))
