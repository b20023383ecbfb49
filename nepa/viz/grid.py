"""From tokens in scan order back to the grid: cell parsing, token lookup, value scattering."""

from __future__ import annotations

import torch

from nepa.viz.model import VizError

Cell = tuple[int, int]  # (row, col) on the patch grid


def to_grid(
    values_QT: torch.Tensor, coords_TA: torch.Tensor, grid: tuple[int, ...]
) -> torch.Tensor:
    """Scatter per-token values (in token order) to their cells: (Q, T) -> (Q, *grid).

    Cells without a token stay NaN (none, for encoders that cover their grid).
    """
    out = values_QT.new_full((values_QT.shape[0], *grid), float("nan"))
    out[(slice(None), *coords_TA.long().unbind(-1))] = values_QT
    return out


def token_index(coords_TA: torch.Tensor, cell: Cell) -> int:
    """Position in token (scan) order of the token at grid ``cell``."""
    hit = (coords_TA == torch.tensor(cell, device=coords_TA.device)).all(-1).nonzero()
    if hit.numel() != 1:
        raise VizError(f"cell {cell} has {hit.numel()} tokens; expected exactly one")
    return int(hit[0, 0])


def default_cells(grid: tuple[int, int]) -> list[Cell]:
    """Centre, then the four corners (duplicates dropped on tiny grids)."""
    h, w = grid
    cells = [(h // 2, w // 2), (0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    return list(dict.fromkeys(cells))


def parse_cells(specs: list[str] | None, grid: tuple[int, int]) -> list[Cell]:
    """``["5", "2,3"]`` -> cells: an integer is a row-major patch index (``row * W + col``,
    whatever the scan order), ``r,c`` a row and column. None or [] -> :func:`default_cells`."""
    if not specs:
        return default_cells(grid)
    return [_parse_cell(s, grid) for s in specs]


def _parse_cell(spec: str, grid: tuple[int, int]) -> Cell:
    h, w = grid
    parts = spec.split(",")
    if not 1 <= len(parts) <= 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise VizError(f"bad patch {spec!r}: give a row-major index (e.g. 5) or row,col (e.g. 2,3)")
    if len(parts) == 1:
        i = int(parts[0])
        if not 0 <= i < h * w:
            raise VizError(f"patch index {i} is out of range: the grid {h}x{w} has 0..{h * w - 1}")
        return divmod(i, w)
    r, c = (int(p) for p in parts)
    if not (0 <= r < h and 0 <= c < w):
        raise VizError(f"patch {r},{c} is out of range: rows 0..{h - 1}, columns 0..{w - 1}")
    return r, c
