"""The training loader: one interface over map-style datasets and shard streams.

A dataset built with ``train=True`` may provide ``make_train_loader(**layout)`` (shard streams
do); otherwise it is indexed through :class:`~nepa.data.sampler.StepBatchSampler`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from nepa.data.sampler import StepBatchSampler


@dataclass
class TrainLoader:
    """Yields ``(x, y, meta)`` micro-batches forever; ``meta`` is None for map-style data, or
    the stream's per-batch report (good count, bad-sample deltas, epoch)."""

    batches: Iterable
    steps_per_epoch: int
    state: dict[str, Any] = field(default_factory=dict)  # stored in checkpoints, checked on resume
    max_bad_fraction: float | None = None  # None: the source does its own bad-data handling

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict | None]]:
        for batch in self.batches:
            yield batch if len(batch) == 3 else (*batch, None)


def train_loader(
    dataset: Dataset,
    *,
    global_batch: int,
    accum: int,
    rank: int,
    world: int,
    workers: int,
    seed: int,
    start_micro: int,
    pin_memory: bool,
) -> TrainLoader:
    layout = dict(
        global_batch=global_batch,
        accum=accum,
        rank=rank,
        world=world,
        workers=workers,
        seed=seed,
        start_micro=start_micro,
        pin_memory=pin_memory,
    )
    make = getattr(dataset, "make_train_loader", None)
    if make is not None:
        return make(**layout)
    sampler = StepBatchSampler(
        len(dataset), global_batch, accum, rank, world, seed, start_micro=start_micro
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        # Its own generator: iterating a DataLoader otherwise draws from the global RNG,
        # which would shift the model's random stream after a resume.
        generator=torch.Generator(),
        persistent_workers=workers > 0,
    )
    return TrainLoader(loader, sampler.steps_per_epoch, {"kind": "indexed"})
