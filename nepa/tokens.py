"""The contract between encoders and the predictor."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Tokens:
    """What every encoder returns, whatever the modality.

    emb:    (B, T, D) float embeddings, already in scan order. No position information.
    coords: (T, A) long, the integer grid coordinates of each token (A grid axes), in the same
            order as ``emb``, shared by the batch; or (B, T, A) when they differ per sample
            (e.g. JEPA's visible sets). The predictor normalises them by ``grid`` for RoPE.
    grid:   the grid shape (A ints): coords[..., a] lies in [0, grid[a]).
    keep:   optional (B, T) bool, True where a token is real (False = padding).
    """

    emb: torch.Tensor
    coords: torch.Tensor
    grid: tuple[int, ...]
    keep: torch.Tensor | None = None

    def __post_init__(self) -> None:
        B, T, _ = self.emb.shape
        A = len(self.grid)
        if self.coords.shape not in ((T, A), (B, T, A)):
            raise ValueError(
                f"coords must be (T={T}, A={A}) shared by the batch or (B={B}, T={T}, A={A}) per "
                f"sample, got {tuple(self.coords.shape)}"
            )
        if self.keep is not None and self.keep.shape != (B, T):
            raise ValueError(f"keep must be (B={B}, T={T}), got {tuple(self.keep.shape)}")

    @property
    def n_axes(self) -> int:
        """A, the number of grid axes (the last dim of ``coords`` in either layout)."""
        return self.coords.shape[-1]

    @property
    def per_sample_coords(self) -> bool:
        """True when ``coords`` is (B, T, A), False when it is (T, A) shared by the batch."""
        return self.coords.ndim == 3
