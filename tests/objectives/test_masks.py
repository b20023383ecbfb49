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


def _gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [_g(1000 * seed + i) for i in range(n)]


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
    m = context_and_targets(grid, _g(), _gens(16), targets, context, 10)
    cells = math.prod(grid)
    B, N, Kt = m.targets.shape
    assert (16, targets.n) == (B, N) and m.context.shape[0] == 16
    assert m.targets_keep.all() and m.context_keep.sum(1).min() >= 10
    for b in range(16):
        ctx = set(m.context[b][m.context_keep[b]].tolist())
        assert len(ctx) == m.context_keep[b].sum()  # no repeats
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
        m = complement_context(grid, _g(3), _gens(6), spec)
        assert m.targets.shape[:2] == (6, 1)
        for b in range(6):
            t = m.targets[b, 0][m.targets_keep[b, 0]]
            tgt, ctx = set(t.tolist()), set(m.context[b][m.context_keep[b]].tolist())
            assert not tgt & ctx and len(tgt) + len(ctx) == math.prod(grid)  # the rest
            cols = {(h, w) for _, h, w in torch.stack(torch.unravel_index(t, grid), 1).tolist()}
            assert len(t) == len(cols) * grid[0]  # a masked (h, w) is masked in every frame
        frame = 14 * 14
        block = block_shape(grid, spec, spec.scale[0], 1.0)
        assert block[0] == 8 and abs(block[1] * block[2] / frame - spec.scale[0]) < 0.05


def test_same_seed_same_masks_other_step_other_masks() -> None:
    def draw(seed: int, n: int = 8):
        return context_and_targets(
            (14, 14), _g(seed), _gens(n, seed), IJEPA_TARGETS, IJEPA_CONTEXT, 10
        )

    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.targets, c.targets)
    # a sample's masks do not depend on its batch-mates: the first 4 of 8 equal a batch of 4
    half = context_and_targets((14, 14), _g(7), _gens(8, 7)[:4], IJEPA_TARGETS, IJEPA_CONTEXT, 10)
    assert torch.equal(half.targets, a.targets[:4])
    for i in range(4):
        assert torch.equal(half.context[i][half.context_keep[i]], a.context[i][a.context_keep[i]])
    d = complement_context((4, 6, 6), _g(1), _gens(4, 1), VJEPA_SHORT)
    e = complement_context((4, 6, 6), _g(1), _gens(4, 1), VJEPA_SHORT)
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
        context_and_targets((6, 6), _g(), _gens(4), many, IJEPA_CONTEXT, 30)


def _inside(idx: torch.Tensor, grid: tuple[int, ...], extent: tuple[int, ...]) -> bool:
    coords = torch.stack(torch.unravel_index(idx, grid), 1)
    return bool((coords < torch.tensor(extent)).all())


def test_extents_of_the_whole_grid_change_nothing() -> None:
    plain = context_and_targets((14, 14), _g(4), _gens(6), IJEPA_TARGETS, IJEPA_CONTEXT, 10)
    full = context_and_targets(
        (14, 14), _g(4), _gens(6), IJEPA_TARGETS, IJEPA_CONTEXT, 10, [(14, 14)] * 6
    )
    for a, b in zip(vars(plain).values(), vars(full).values(), strict=True):
        assert torch.equal(a, b)
    assert plain.usable.all()


@pytest.mark.parametrize(
    ("grid", "targets", "context", "extents"),
    [
        ((12, 8), BlockSpec(4, (0.15, 0.2), full_axes=(1,)), IJEPA_CONTEXT, None),
        ((14, 14), IJEPA_TARGETS, IJEPA_CONTEXT, None),
        ((4, 6, 6), VJEPA_SHORT, None, None),
    ],
)
def test_padded_samples_are_masked_inside_their_extent(grid, targets, context, extents) -> None:
    # samples of the whole grid, half of its first axis, and a quarter of it
    extents = [grid, (grid[0] // 2, *grid[1:]), (max(1, grid[0] // 4), *grid[1:])] * 2
    if context is None:
        m = complement_context(grid, _g(2), _gens(6), targets, 1, extents)
    else:
        m = context_and_targets(grid, _g(2), _gens(6), targets, context, 4, extents)
    for b, extent in enumerate(extents):
        tgt = m.targets[b][m.targets_keep[b]]
        ctx = m.context[b][m.context_keep[b]]
        assert _inside(tgt, grid, extent) and _inside(ctx, grid, extent)
        assert not set(tgt.tolist()) & set(ctx.tolist())
        if context is None:  # the context is the rest of the extent
            assert len(set(tgt.tolist())) + len(ctx) == math.prod(extent)
    if context is not None:  # blocks are sized on each sample's own extent
        sizes = m.targets_keep[:, 0].sum(-1)
        assert sizes[0] >= sizes[1] >= sizes[2] and sizes[0] > sizes[2]
        assert torch.equal(sizes[:3], sizes[3:])  # one size per extent


def test_a_sample_too_short_for_min_keep_is_not_usable_instead_of_an_error() -> None:
    m = context_and_targets((16,), _g(), _gens(3), SPANS, IJEPA_CONTEXT, 5, [(16,), (12,), (3,)])
    assert m.usable.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="fewer than min_keep=20"):  # the full grid still fails
        context_and_targets((16,), _g(), _gens(3), SPANS, IJEPA_CONTEXT, 20, [(16,)] * 3)
