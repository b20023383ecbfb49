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

Padded inputs (audio clips, sensor series shorter than the grid) pass each sample's *extent*,
the box ``[0, e)`` on every axis that holds its real cells: its blocks are sized on its extent
(the batch's scale and aspect ratio, so samples of the grid's full extent share one size) and
placed inside it, so every target and context cell is real. A sample whose extent is too small
for ``min_keep`` is marked not ``usable`` instead of failing the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

Grid = tuple[int, ...]
Extents = list[Grid] | None  # per sample: the box [0, e) on every axis that holds real cells


@dataclass(frozen=True)
class BlockSpec:
    n: int  # blocks per sample
    scale: tuple[float, float]  # fraction of the (non-full) cells one block covers
    aspect: tuple[float, float] = (1.0, 1.0)  # height / width, log-uniform (2 free axes)
    full_axes: tuple[int, ...] = ()  # axes every block spans whole (V-JEPA: time)


@dataclass(frozen=True)
class Masks:
    """Sorted row-major cell indices, padded per sample with ``*_keep`` False:
    ``context`` (B, Kc), ``targets`` (B, N, Kt); ``usable`` (B,) False for a sample whose
    extent could not give ``min_keep`` context cells."""

    context: torch.Tensor
    context_keep: torch.Tensor
    targets: torch.Tensor
    targets_keep: torch.Tensor
    usable: torch.Tensor

    def to(self, device: torch.device) -> Masks:
        return Masks(*(getattr(self, f.name).to(device) for f in fields(self)))


def _pad(sets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Index sets (..., K_i) of different sizes K_i -> (B, ..., K) indices (padding 0) and
    (B, ..., K) keep."""
    k = max(x.shape[-1] for x in sets)
    idx = torch.zeros(len(sets), *sets[0].shape[:-1], k, dtype=torch.long)
    keep = torch.zeros(idx.shape, dtype=torch.bool)
    for i, x in enumerate(sets):
        idx[i, ..., : x.shape[-1]], keep[i, ..., : x.shape[-1]] = x, True
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
    """The extent of a block on every axis (at least one cell, at most the grid; ``grid`` is a
    sample's extent when it is padded)."""
    axes = free_axes(grid, spec)
    shape = list(grid)
    if len(axes) == 1:
        (a,) = axes
        shape[a] = min(grid[a], max(1, round(scale * grid[a])))
    else:
        a, b = axes
        cells = scale * grid[a] * grid[b]
        want_a = max(1, round(math.sqrt(cells * aspect)))
        want_b = max(1, round(math.sqrt(cells / aspect)))
        shape[a], shape[b] = min(grid[a], want_a), min(grid[b], want_b)
        # A block cut short on one axis (a narrow grid or a short sample) grows on the other
        # to keep its scale.
        if shape[a] < want_a:
            shape[b] = min(grid[b], max(1, round(cells / shape[a])))
        elif shape[b] < want_b:
            shape[a] = min(grid[a], max(1, round(cells / shape[b])))
    return tuple(shape)


def draw_size(spec: BlockSpec, g: torch.Generator) -> tuple[float, float]:
    """One block (scale, aspect) for the whole batch: scale uniform, aspect log-uniform."""
    scale = _uniform(g, *spec.scale)
    lo, hi = math.log(spec.aspect[0]), math.log(spec.aspect[1])
    return scale, math.exp(_uniform(g, lo, hi))


def place(grid: Grid, shape: tuple[int, ...], g: torch.Generator, extent: Grid) -> torch.Tensor:
    """A (prod(grid),) bool mask of one block of ``shape`` at a uniform random position inside
    ``extent`` (the box [0, e) on every axis; the grid itself when unpadded)."""
    m = torch.zeros(grid, dtype=torch.bool)
    starts = [
        int(torch.randint(0, n - k + 1, (), generator=g))
        for n, k in zip(extent, shape, strict=True)
    ]
    m[tuple(slice(s, s + k) for s, k in zip(starts, shape, strict=True))] = True
    return m.reshape(-1)


def _box(grid: Grid, extent: Grid) -> torch.Tensor:
    """(prod(grid),) bool: the cells inside ``extent``."""
    m = torch.zeros(grid, dtype=torch.bool)
    m[tuple(slice(0, e) for e in extent)] = True
    return m.reshape(-1)


def _indices(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero().squeeze(1)


TRIES = 20  # placements tried per sample before a context below min_keep is given up on


def _too_few(grid: Grid, extent: Grid, what: str, min_keep: int) -> None:
    """A full-extent sample that found no placement is an error (the configuration barely
    fits); a padded one is only not usable."""
    if extent == grid:
        raise ValueError(
            f"on the {grid} grid, {what} fewer than min_keep={min_keep} cells in {TRIES} "
            "placements: use fewer or smaller targets or a larger context"
        )


def context_and_targets(
    grid: Grid,
    shape_gen: torch.Generator,
    sample_gens: list[torch.Generator],
    targets: BlockSpec,
    context: BlockSpec,
    min_keep: int,
    extents: Extents = None,
) -> Masks:
    """I-JEPA: ``targets.n`` target blocks and one context block minus the targets, per sample.

    Block scales and aspect ratios come from ``shape_gen`` (once per batch: every sample of the
    same extent has targets of the same size); each sample's locations from its own generator,
    so a sample's masks do not depend on which other samples share its batch (DDP and
    accumulation splits give the same masks). Contexts keep all their cells, padded to the
    batch's largest. A sample whose context keeps fewer than ``min_keep`` cells is placed again.
    """
    t_size, c_size = draw_size(targets, shape_gen), draw_size(context, shape_gen)
    tgt, ctx, usable = [], [], []
    for i, g in enumerate(sample_gens):
        extent = grid if extents is None else extents[i]
        t_shape, c_shape = (
            block_shape(extent, targets, *t_size),
            block_shape(extent, context, *c_size),
        )
        for _ in range(TRIES):
            blocks = [place(grid, t_shape, g, extent) for _ in range(targets.n)]
            keep = _indices(place(grid, c_shape, g, extent) & ~torch.stack(blocks).any(0))
            if len(keep) >= min_keep:
                break
        else:
            what = (
                f"{targets.n} target blocks of shape {t_shape} left a context block of shape "
                f"{c_shape}"
            )
            _too_few(grid, extent, what, min_keep)
        usable.append(len(keep) >= min_keep)
        tgt.append(torch.stack([_indices(b) for b in blocks]))  # (N, Kt): one shape per extent
        ctx.append(keep)
    context_idx, context_keep = _pad(ctx)
    targets_idx, targets_keep = _pad(tgt)
    return Masks(context_idx, context_keep, targets_idx, targets_keep, torch.tensor(usable))


def complement_context(
    grid: Grid,
    shape_gen: torch.Generator,
    sample_gens: list[torch.Generator],
    blocks: BlockSpec,
    min_keep: int = 1,
    extents: Extents = None,
) -> Masks:
    """V-JEPA: the union of ``blocks.n`` blocks is predicted from the rest of the sample's
    extent; both sets padded to the batch's largest. A sample whose context keeps fewer than
    ``min_keep`` cells is placed again."""
    size = draw_size(blocks, shape_gen)
    unions, contexts, usable = [], [], []
    for i, g in enumerate(sample_gens):
        extent = grid if extents is None else extents[i]
        shape, box = block_shape(extent, blocks, *size), _box(grid, extent)
        for _ in range(TRIES):
            union = torch.stack([place(grid, shape, g, extent) for _ in range(blocks.n)]).any(0)
            if int((box & ~union).sum()) >= min_keep:
                break
        else:
            _too_few(grid, extent, f"{blocks.n} blocks of shape {shape} left the context", min_keep)
        usable.append(int((box & ~union).sum()) >= min_keep)
        unions.append(_indices(union))
        contexts.append(_indices(box & ~union))
    t_idx, t_keep = _pad(unions)
    c_idx, c_keep = _pad(contexts)
    return Masks(c_idx, c_keep, t_idx[:, None], t_keep[:, None], torch.tensor(usable))


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
