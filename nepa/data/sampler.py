"""Step-indexed batch sampler: the same global batches for any (accum, world) split, resumable.

Epoch ``e`` visits a permutation of ``range(n_items)`` drawn from a generator seeded by
``(seed, e)``; the last incomplete global batch is dropped. Global step ``s`` of the epoch takes
``perm[s*G:(s+1)*G]``; that batch is cut into ``accum`` consecutive micro-chunks and each
micro-chunk into ``world`` consecutive pieces, one per rank. Every index carries an
``aug_seed`` that depends only on ``(seed, epoch, index)``, so a sample's augmentation does not
depend on how the batch is split or where the run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class StepBatchSampler:
    """Yields, forever, this rank's micro-batches as lists of ``(index, aug_seed)``.

    Use as a DataLoader ``batch_sampler``; the trainer decides when to stop. ``start_micro`` is
    the number of micro-batches this rank already consumed (equal on all ranks), so a resumed
    run continues exactly where it stopped.
    """

    def __init__(
        self,
        n_items: int,
        global_batch: int,
        accum: int = 1,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        start_micro: int = 0,
    ) -> None:
        _check(n_items, global_batch, accum, rank, world, start_micro)
        self.n_items, self.global_batch, self.accum = n_items, global_batch, accum
        self.rank, self.world, self.seed, self.start_micro = rank, world, seed, start_micro
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps (global batches) per epoch; the remainder is dropped."""
        return self.n_items // self.global_batch

    @property
    def micro_batch(self) -> int:
        """Items per micro-batch on one rank: global_batch / (accum * world)."""
        return self.global_batch // (self.accum * self.world)

    def position(self, micro_done: int) -> dict[str, int]:
        """Where a rank stands after ``micro_done`` micro-batches: epoch, step_in_epoch (the
        step in progress), micro_in_step (micro-batches of it already done), global_step."""
        step, micro_in_step = divmod(micro_done, self.accum)
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        return {
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "micro_in_step": micro_in_step,
            "global_step": step,
        }

    def micro(self, m: int) -> list[tuple[int, int]]:
        """Micro-batch number ``m`` (0-based, counted per rank) of this rank."""
        pos = self.position(m)
        perm = self._permutation(pos["epoch"])
        start = (
            pos["step_in_epoch"] * self.global_batch
            + pos["micro_in_step"] * (self.global_batch // self.accum)
            + self.rank * self.micro_batch
        )
        idx = perm[start : start + self.micro_batch]
        seeds = aug_seeds(self.seed, pos["epoch"], idx)
        return list(zip(idx.tolist(), seeds.tolist(), strict=True))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        m = self.start_micro
        while True:
            yield self.micro(m)
            m += 1

    def _permutation(self, epoch: int) -> np.ndarray:
        """Visiting order of epoch ``epoch``: (n_items,) int64, cached for the current epoch."""
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (
                epoch,
                np.random.default_rng([self.seed, epoch]).permutation(self.n_items),
            )
        return self._perm[1]


_M1, _M2, _GOLDEN = (
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
    np.uint64(0x9E3779B97F4A7C15),
)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def aug_seeds(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """Augmentation seed of each item: a hash of (seed, epoch, index) in [0, 2**63).

    Depends on nothing else (not the dataset size, batch split or resume point), so the same
    sample gets the same augmentation however a run is laid out.
    """
    h = _splitmix(np.asarray([seed], dtype=np.int64).astype(np.uint64))
    h = _splitmix(h ^ np.asarray([epoch], dtype=np.uint64))
    h = _splitmix(h ^ np.asarray(index, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(1)).astype(np.int64)


def _check(n_items: int, global_batch: int, accum: int, rank: int, world: int, start: int) -> None:
    check_layout(global_batch, accum, rank, world)
    if n_items < global_batch:
        raise ValueError(
            f"the dataset has {n_items} items, fewer than one global batch of {global_batch}; "
            "lower the batch size or use more data"
        )
    if start < 0:
        raise ValueError(f"start_micro must be >= 0, got {start}")


def check_layout(global_batch: int, accum: int, rank: int, world: int) -> None:
    """Raise unless the global batch splits evenly into accum micro-batches on world ranks."""
    if min(global_batch, accum, world) < 1:
        raise ValueError(
            f"global_batch ({global_batch}), accum ({accum}) and world ({world}) must be >= 1"
        )
    if global_batch % (accum * world):
        raise ValueError(
            f"global_batch {global_batch} is not divisible by accum * world = {accum} * {world}; "
            f"pick a global_batch that is a multiple of {accum * world}, or change accum"
        )
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} must be in [0, world={world})")
