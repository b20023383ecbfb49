"""JEPA block masks on 1-D, 2-D and 3-D grids: disjoint context and targets, sizes within the
configured scales and aspect ratios, at least min_keep context cells, seeded."""

from __future__ import annotations

import math

import pytest
import torch

from nepa.objectives.masks import (
    BlockSpec,
    block_shape,
    check_blocks,
    complement_context,
    context_and_targets,
)

IJEPA_TARGETS = BlockSpec(4, (0.15, 0.2), (0.75, 1.5))
IJEPA_CONTEXT = BlockSpec(1, (0.85, 1.0))
VJEPA_SHORT = BlockSpec(8, (0.15, 0.15), (0.75, 1.5), full_axes=(0,))
VJEPA_LONG = BlockSpec(2, (0.7, 0.7), (0.75, 1.5), full_axes=(0,))
SPANS = BlockSpec(4, (0.15, 0.2))


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _boxes(idx: torch.Tensor, grid: tuple[int, ...]) -> tuple[int, ...]:
    """The bounding box extent of a set of row-major cells, and check it is a full box."""
    coords = torch.stack(torch.unravel_index(idx, grid), 1)
    extent = tuple(int(e) for e in coords.max(0).values - coords.min(0).values + 1)
    assert math.prod(extent) == len(idx), "a block is a whole box"
    return extent


@pytest.mark.parametrize(
    ("grid", "targets", "context"),
    [
        ((14, 14), IJEPA_TARGETS, IJEPA_CONTEXT),
        ((8, 12), IJEPA_TARGETS, IJEPA_CONTEXT),
        ((48,), SPANS, IJEPA_CONTEXT),
    ],
)
def test_context_and_targets(grid, targets, context) -> None:
    check_blocks(grid, targets, context, min_keep=10)
    m = context_and_targets(grid, 16, targets, context, 10, _g())
    cells = math.prod(grid)
    B, N, Kt = m.targets.shape
    assert (16, targets.n) == (B, N) and m.context.shape[0] == 16
    assert m.context.shape[1] >= 10
    for b in range(16):
        ctx = set(m.context[b].tolist())
        assert len(ctx) == m.context.shape[1]  # no repeats
        for t in m.targets[b]:
            assert not ctx & set(t.tolist())  # disjoint
            extent = _boxes(t, grid)
            free = [e for e, n in zip(extent, grid, strict=True)]
            scale = math.prod(free) / cells
            assert 0.5 * targets.scale[0] <= scale <= 1.6 * targets.scale[1], (extent, scale)
            if len(grid) == 2:  # rounding to whole cells moves the ratio a little
                assert 0.5 * targets.aspect[0] <= extent[0] / extent[1] <= 2 * targets.aspect[1]
        assert all(0 <= i < cells for i in ctx)
    assert len({tuple(m.targets[b, 0].shape) for b in range(16)}) == 1  # one size per batch


def test_vjepa_blocks_span_all_time_and_the_context_is_the_rest() -> None:
    grid = (8, 14, 14)
    for spec in (VJEPA_SHORT, VJEPA_LONG):
        m = complement_context(grid, 6, spec, _g(3))
        assert m.targets.shape[:2] == (6, 1)
        for b in range(6):
            tgt, ctx = set(m.targets[b, 0].tolist()), set(m.context[b].tolist())
            assert not tgt & ctx
            assert len(tgt) + len(ctx) <= math.prod(grid)
        one = complement_context(grid, 1, spec, _g(4))  # one sample: nothing is cut
        t = torch.stack(torch.unravel_index(one.targets[0, 0], grid), 1)
        cols = {(h, w) for _, h, w in t.tolist()}
        assert len(t) == len(cols) * grid[0]  # a masked (h, w) is masked in every frame
        assert len(t) + one.context.shape[1] == math.prod(grid)  # the context is the rest
        frame = 14 * 14
        block = block_shape(grid, spec, spec.scale[0], 1.0)
        assert block[0] == 8 and abs(block[1] * block[2] / frame - spec.scale[0]) < 0.05


def test_same_seed_same_masks_other_step_other_masks() -> None:
    a = context_and_targets((14, 14), 8, IJEPA_TARGETS, IJEPA_CONTEXT, 10, _g(7))
    b = context_and_targets((14, 14), 8, IJEPA_TARGETS, IJEPA_CONTEXT, 10, _g(7))
    c = context_and_targets((14, 14), 8, IJEPA_TARGETS, IJEPA_CONTEXT, 10, _g(8))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.targets, c.targets)
    d = complement_context((4, 6, 6), 4, VJEPA_SHORT, _g(1))
    e = complement_context((4, 6, 6), 4, VJEPA_SHORT, _g(1))
    assert torch.equal(d.targets, e.targets) and torch.equal(d.context, e.context)


@pytest.mark.parametrize(
    ("grid", "targets", "context", "min_keep", "message"),
    [
        ((4, 4), BlockSpec(4, (1.0, 1.0)), None, 1, r"covers the whole \(4, 4\) grid"),
        ((4, 4), IJEPA_TARGETS, IJEPA_CONTEXT, 16, r"on the \(4, 4\) grid .* below min_keep=16"),
        ((8,), SPANS, BlockSpec(1, (0.3, 0.4)), 10, r"on the \(8,\) grid"),
    ],
)
def test_unsatisfiable_configurations_name_grid_and_numbers(
    grid, targets, context, min_keep, message
) -> None:
    with pytest.raises(ValueError, match=message):
        check_blocks(grid, targets, context, min_keep)


def test_a_context_too_small_for_min_keep_at_draw_time_is_an_error() -> None:
    many = BlockSpec(12, (0.2, 0.2))  # twelve blocks on 36 cells: rarely 30 left
    with pytest.raises(ValueError, match="fewer than min_keep=30 cells in 20 placements"):
        context_and_targets((6, 6), 4, many, IJEPA_CONTEXT, 30, _g())
