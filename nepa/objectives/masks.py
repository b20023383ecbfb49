"""Block masks for JEPA-style objectives on any grid: which cells the context sees and which
cells are predicted.

A :class:`BlockSpec` describes blocks: how many, their scale (fraction of the grid's cells, or
of one frame's cells when ``full_axes`` spans them), their aspect ratio (height / width, drawn
log-uniformly, as I-JEPA does), and which grid axes every block spans whole (V-JEPA's blocks
span all of time: ``full_axes=(0,)`` on a ``(T, H, W)`` grid). The block *size* is drawn once
per batch, so every sample's target set has the same number of cells (no padding); the block
*locations* are drawn per sample.

Two schemes, both from one ``torch.Generator`` the objective seeds from (seed, step):

- :func:`context_and_targets` (I-JEPA): ``targets`` blocks, then one ``context`` block with every
  target cell removed. A configuration whose context would fall below ``min_keep`` cells
  whatever the placement is refused up front (:func:`check_blocks`); a sample whose placement
  leaves fewer is placed again.
- :func:`complement_context` (V-JEPA): the union of the blocks is the target, the context is
  everything else.

Shapes come from one generator per batch, locations from one generator per sample (see
:func:`context_and_targets`). Sets that differ in size per sample are padded, with a keep mask
(I-JEPA cuts them to the batch's smallest instead, which makes a sample's context depend on its
batch-mates). Indices are row-major (C order) cell numbers of the grid, sorted, int64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Grid = tuple[int, ...]


@dataclass(frozen=True)
class BlockSpec:
    n: int  # blocks per sample
    scale: tuple[float, float]  # fraction of the (non-full) cells one block covers
    aspect: tuple[float, float] = (1.0, 1.0)  # height / width, log-uniform (2 free axes)
    full_axes: tuple[int, ...] = ()  # axes every block spans whole (V-JEPA: time)


@dataclass(frozen=True)
class Masks:
    """Sorted row-major cell indices, padded per sample with ``*_keep`` False:
    ``context`` (B, Kc), ``targets`` (B, N, Kt)."""

    context: torch.Tensor
    context_keep: torch.Tensor
    targets: torch.Tensor
    targets_keep: torch.Tensor


def _pad(sets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Index sets of different sizes -> (B, K) indices (padding 0) and (B, K) keep."""
    k = max(len(x) for x in sets)
    idx = torch.zeros(len(sets), k, dtype=torch.long)
    keep = torch.zeros(len(sets), k, dtype=torch.bool)
    for i, x in enumerate(sets):
        idx[i, : len(x)], keep[i, : len(x)] = x, True
    return idx, keep


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def free_axes(grid: Grid, spec: BlockSpec) -> list[int]:
    axes = [a for a in range(len(grid)) if a not in spec.full_axes]
    if not axes or len(axes) > 2:
        raise ValueError(
            f"blocks on grid {grid} with full_axes={spec.full_axes} leave {len(axes)} axes to "
            "place them on; they need 1 or 2"
        )
    return axes


def block_shape(grid: Grid, spec: BlockSpec, scale: float, aspect: float) -> tuple[int, ...]:
    """The extent of a block on every axis (at least one cell, at most the grid)."""
    axes = free_axes(grid, spec)
    shape = list(grid)
    if len(axes) == 1:
        (a,) = axes
        shape[a] = min(grid[a], max(1, round(scale * grid[a])))
    else:
        a, b = axes
        cells = scale * grid[a] * grid[b]
        shape[a] = min(grid[a], max(1, round(math.sqrt(cells * aspect))))
        shape[b] = min(grid[b], max(1, round(math.sqrt(cells / aspect))))
    return tuple(shape)


def draw_shape(grid: Grid, spec: BlockSpec, g: torch.Generator) -> tuple[int, ...]:
    """One block shape for the whole batch: scale uniform, aspect log-uniform."""
    scale = _uniform(g, *spec.scale)
    lo, hi = math.log(spec.aspect[0]), math.log(spec.aspect[1])
    return block_shape(grid, spec, scale, math.exp(_uniform(g, lo, hi)))


def place(grid: Grid, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """A (prod(grid),) bool mask of one block of ``shape`` at a uniform random position."""
    m = torch.zeros(grid, dtype=torch.bool)
    starts = [
        int(torch.randint(0, n - k + 1, (), generator=g)) for n, k in zip(grid, shape, strict=True)
    ]
    m[tuple(slice(s, s + k) for s, k in zip(starts, shape, strict=True))] = True
    return m.reshape(-1)


def _indices(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero().squeeze(1)


TRIES = 20  # placements tried per sample before a context below min_keep is an error


def context_and_targets(
    grid: Grid,
    shape_gen: torch.Generator,
    sample_gens: list[torch.Generator],
    targets: BlockSpec,
    context: BlockSpec,
    min_keep: int,
) -> Masks:
    """I-JEPA: ``targets.n`` target blocks and one context block minus the targets, per sample.

    Block shapes come from ``shape_gen`` (once per batch: every sample's targets have the same
    size); each sample's locations from its own generator, so a sample's masks do not depend on
    which other samples share its batch (DDP and accumulation splits give the same masks).
    Contexts keep all their cells, padded to the batch's largest. A sample whose context keeps
    fewer than ``min_keep`` cells is placed again.
    """
    t_shape, c_shape = draw_shape(grid, targets, shape_gen), draw_shape(grid, context, shape_gen)
    tgt, ctx = [], []
    for g in sample_gens:
        for _ in range(TRIES):
            blocks = [place(grid, t_shape, g) for _ in range(targets.n)]
            keep = _indices(place(grid, c_shape, g) & ~torch.stack(blocks).any(0))
            if len(keep) >= min_keep:
                break
        else:
            raise ValueError(
                f"on the {grid} grid, {targets.n} target blocks of shape {t_shape} left a "
                f"context block of shape {c_shape} fewer than min_keep={min_keep} cells in "
                f"{TRIES} placements: use fewer or smaller targets or a larger context"
            )
        tgt.append(torch.stack([_indices(b) for b in blocks]))  # (N, Kt): one shape for all
        ctx.append(keep)
    context_idx, context_keep = _pad(ctx)
    targets_idx = torch.stack(tgt)
    return Masks(
        context_idx, context_keep, targets_idx, torch.ones_like(targets_idx, dtype=torch.bool)
    )


def complement_context(
    grid: Grid,
    shape_gen: torch.Generator,
    sample_gens: list[torch.Generator],
    blocks: BlockSpec,
    min_keep: int = 1,
) -> Masks:
    """V-JEPA: the union of ``blocks.n`` blocks is predicted from everything else; both sets
    padded to the batch's largest. A sample whose context keeps fewer than ``min_keep`` cells
    is placed again."""
    shape = draw_shape(grid, blocks, shape_gen)
    unions = []
    for g in sample_gens:
        for _ in range(TRIES):
            union = torch.stack([place(grid, shape, g) for _ in range(blocks.n)]).any(0)
            if int((~union).sum()) >= min_keep:
                break
        else:
            raise ValueError(
                f"on the {grid} grid, {blocks.n} blocks of shape {shape} left the context fewer "
                f"than min_keep={min_keep} cells in {TRIES} placements: use fewer or smaller "
                "blocks"
            )
        unions.append(union)
    t_idx, t_keep = _pad([_indices(u) for u in unions])
    c_idx, c_keep = _pad([_indices(~u) for u in unions])
    return Masks(c_idx, c_keep, t_idx[:, None], t_keep[:, None])


def check_blocks(grid: Grid, targets: BlockSpec, context: BlockSpec | None, min_keep: int) -> None:
    """ValueError naming the grid and the numbers when no placement can work: the smallest
    target block covers the whole grid, or even the largest context minus the smallest target
    keeps fewer than ``min_keep`` cells."""
    cells = math.prod(grid)
    aspects = (targets.aspect[0], 1.0, targets.aspect[1])
    t_min = min(math.prod(block_shape(grid, targets, targets.scale[0], a)) for a in aspects)
    if t_min >= cells:
        raise ValueError(
            f"a target block of scale {targets.scale[0]} covers the whole {grid} grid "
            f"({cells} cells): lower the target scale or use a finer grid"
        )
    c_max = math.prod(block_shape(grid, context, context.scale[1], 1.0)) if context else cells
    if c_max - t_min < min_keep:
        raise ValueError(
            f"on the {grid} grid ({cells} cells) the context keeps at most {c_max - t_min} "
            f"cells (a context block of {c_max} minus a target block of {t_min}), below "
            f"min_keep={min_keep}: use smaller targets, a larger context or a finer grid"
        )
