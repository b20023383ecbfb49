"""StepBatchSampler: coverage, split invariance (accum, world), exact resume, seeds, errors."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nepa.data.sampler import StepBatchSampler, aug_seeds

Batch = list[tuple[int, int]]


def take(sampler: StepBatchSampler, n: int) -> list[Batch]:
    return list(islice(iter(sampler), n))


def global_steps(
    n_items: int, g: int, accum: int, world: int, seed: int, steps: int
) -> list[Batch]:
    """Reassemble each global batch from (micro, rank) pieces: micro-major, then rank."""
    ranks = [
        take(StepBatchSampler(n_items, g, accum, r, world, seed), steps * accum)
        for r in range(world)
    ]
    return [
        [item for a in range(accum) for r in range(world) for item in ranks[r][s * accum + a]]
        for s in range(steps)
    ]


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    accum, world = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    g = accum * world * draw(st.integers(1, 3))
    n_items = draw(st.integers(g, 4 * g + 5))
    return n_items, g, accum, world, draw(st.integers(0, 2**31))


@settings(max_examples=40, deadline=None)
@given(layouts())
def test_each_epoch_covers_every_index_once_with_drop_last(layout) -> None:
    n_items, g, accum, world, seed = layout
    spe = n_items // g
    steps = global_steps(n_items, g, accum, world, seed, 2 * spe)
    for epoch in range(2):
        items = [i for b in steps[epoch * spe : (epoch + 1) * spe] for i, _ in b]
        assert len(items) == len(set(items)) == spe * g  # the incomplete tail is dropped
        perm = np.random.default_rng([seed, epoch]).permutation(n_items)
        assert items == perm[: spe * g].tolist()


@settings(max_examples=40, deadline=None)
@given(layouts())
def test_any_accum_world_split_gives_the_same_global_batches(layout) -> None:
    n_items, g, accum, world, seed = layout
    steps = 2 * (n_items // g) + 1  # crosses an epoch boundary
    reference = global_steps(n_items, g, 1, 1, seed, steps)
    assert global_steps(n_items, g, accum, world, seed, steps) == reference
    assert global_steps(n_items, g, accum, 1, seed, steps) == reference
    assert global_steps(n_items, g, 1, world, seed, steps) == reference


def test_world_two_pieces_concatenate_to_world_one_micro() -> None:
    one = take(StepBatchSampler(50, 8, accum=2, world=1, seed=5), 10)
    r0 = take(StepBatchSampler(50, 8, accum=2, rank=0, world=2, seed=5), 10)
    r1 = take(StepBatchSampler(50, 8, accum=2, rank=1, world=2, seed=5), 10)
    assert [a + b for a, b in zip(r0, r1, strict=True)] == one
    assert all(len(b) == 2 for b in r0)


@settings(max_examples=40, deadline=None)
@given(layouts(), st.integers(0, 40), st.integers(0, 2))
def test_start_micro_resumes_exactly(layout, k: int, rank: int) -> None:
    n_items, g, accum, world, seed = layout
    rank = rank % world
    fresh = take(StepBatchSampler(n_items, g, accum, rank, world, seed), k + 5)
    resumed = take(StepBatchSampler(n_items, g, accum, rank, world, seed, start_micro=k), 5)
    assert resumed == fresh[k:]


def test_aug_seed_depends_only_on_seed_epoch_index() -> None:
    s = StepBatchSampler(20, 4, seed=3)
    per_epoch = 20 // 4
    for m, batch in enumerate(take(s, 2 * per_epoch)):
        epoch = s.position(m)["epoch"]
        idx = np.array([i for i, _ in batch])
        assert [a for _, a in batch] == aug_seeds(3, epoch, idx).tolist()
    seeds = aug_seeds(3, 0, np.arange(1000))
    assert len(set(seeds.tolist())) == 1000 and seeds.min() >= 0
    assert not np.array_equal(seeds, aug_seeds(3, 1, np.arange(1000)))
    assert not np.array_equal(seeds, aug_seeds(4, 0, np.arange(1000)))
    assert all(isinstance(a, int) for _, a in take(s, 1)[0])


def test_position_and_steps_per_epoch() -> None:
    s = StepBatchSampler(n_items=103, global_batch=20, accum=2, world=2)
    assert s.steps_per_epoch == 5 and s.micro_batch == 5
    assert s.position(0) == {"epoch": 0, "step_in_epoch": 0, "micro_in_step": 0, "global_step": 0}
    assert s.position(11) == {"epoch": 1, "step_in_epoch": 0, "micro_in_step": 1, "global_step": 5}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"global_batch": 10, "accum": 4}, "not divisible by accum \\* world = 4 \\* 1"),
        ({"global_batch": 12, "accum": 2, "world": 4}, "multiple of 8"),
        ({"global_batch": 8, "world": 2, "rank": 2}, "rank 2 must be in"),
        ({"global_batch": 200}, "fewer than one global batch of 200"),
        ({"global_batch": 8, "start_micro": -1}, "start_micro"),
        ({"global_batch": 0}, "must be >= 1"),
    ],
)
def test_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StepBatchSampler(**{"n_items": 100, **kw})
