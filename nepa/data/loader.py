"""The training loader: one interface over map-style datasets and shard streams.

A dataset built with ``train=True`` may provide ``make_train_loader(**layout)`` (shard streams
do); otherwise it is indexed through :class:`~nepa.data.sampler.StepBatchSampler`. Either way the
trainer sees a :class:`TrainLoader`: ``(batch, meta)`` micro-batches, and the hooks through which
a source reports on its own health (bad samples skipped, a loader that failed). The trainer calls
them for every source and never asks which kind it has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from nepa.batch import Batch, collate
from nepa.data.sampler import StepBatchSampler
from nepa.data.shards.health import BadDataError, DataHealth, Totals

log = logging.getLogger(__name__)

#: sums a list of numbers over all ranks (a collective; identity in one process)
Reduce = Callable[[list[float]], list[float]]


@dataclass
class TrainLoader:
    """Yields ``(batch, meta)`` micro-batches forever; ``meta`` is None for map-style data, or
    the stream's per-batch report (good count, bad-sample deltas, epoch, micro-batch index, and
    ``fatal`` when the loader cannot go on).

    ``max_bad_fraction`` None means the source does its own bad-data handling; otherwise the
    loader keeps a :class:`DataHealth` whose totals over all ranks are checked at every log
    interval and epoch end, logged, and stored in checkpoints.
    """

    batches: Iterable
    steps_per_epoch: int
    state: dict[str, Any] = field(default_factory=dict)  # stored in checkpoints, checked on resume
    max_bad_fraction: float | None = None
    fatal: str | None = None  # why this rank's loader stopped, once it has
    health: DataHealth | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.max_bad_fraction is not None:
            self.health = DataHealth(self.max_bad_fraction)

    def __iter__(self) -> Iterator[tuple[Batch, dict | None]]:
        for item in self.batches:  # a batch dict, or (batch, meta) (a list after a DataLoader)
            yield (item, None) if isinstance(item, dict) else (item[0], item[1])

    def check_resume(self, saved: dict | None) -> None:
        """Raise ValueError if a checkpoint's data state was cut for another layout than this
        loader's (a shard stream resumes exactly only with the same ranks and workers)."""
        if not saved or saved.get("kind") != self.state.get("kind"):
            return
        diff = {k: (saved.get(k), v) for k, v in self.state.items() if saved.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
            raise ValueError(
                f"the data stream was cut for another layout ({what}); a streamed run resumes "
                "exactly only with the same number of processes and train.num_workers"
            )

    # -- what a source reports -----------------------------------------------------------------
    def observe(self, meta: dict | None, expected_micro: int, rank: int) -> None:
        """Take in a batch's report: its counts, or the fatal flag of a failed loader."""
        if meta is None:
            return
        if meta.get("fatal") is not None:
            if self.fatal is None:
                log.error("data loader on rank %d failed: %s", rank, meta["fatal"])
            self.fatal = meta["fatal"]
            return
        if meta["micro"] != expected_micro:
            raise RuntimeError(
                f"data stream out of order: got micro-batch {meta['micro']}, expected "
                f"{expected_micro} (a DataLoader that does not hand batches out in order?)"
            )
        if self.health is not None:
            self.health.update(meta["good"], meta["bad"])

    def restore_health(self, saved: dict, is_main: bool) -> None:
        """Counts from a checkpoint; they are totals over all ranks, so rank 0 adds them once."""
        if self.health is not None and is_main:
            self.health.restore(saved)

    def totals(self, reduce: Reduce) -> Totals | None:
        """Bad-data counts summed over all ranks (a collective: call on every rank)."""
        if self.health is None:
            return None
        return DataHealth.totals(reduce(self.health.vector()))

    def health_state(self, reduce: Reduce) -> dict:
        """What a checkpoint stores (a collective: call on every rank)."""
        totals = self.totals(reduce)
        return {} if totals is None else {"good": totals.good, "bad": totals.bad}

    def report(self, step: int, reduce: Reduce) -> tuple[dict, dict | None]:
        """At a log interval or an epoch end (a collective: call on every rank): the metrics to
        log and, at an epoch's end, its summary record. Raises BadDataError past the limit."""
        totals = self.totals(reduce)
        if totals is None:
            return {}, None
        epoch_end = step % self.steps_per_epoch == 0
        summary = None
        if epoch_end:
            epoch = step // self.steps_per_epoch - 1
            worst = self.health.end_epoch()
            kinds = {k: n for k, n in totals.epoch_bad.items() if n}
            log.info(
                "epoch %d done: %d bad sample(s) %s; run total %d bad of %d read (%.3f%%)%s",
                epoch,
                sum(kinds.values()),
                kinds or "",
                totals.n_bad,
                totals.good + totals.n_bad,
                100 * totals.fraction,
                f"; worst shards on rank 0: {worst}" if worst else "",
            )
            summary = {"step": step, "data/epoch": epoch, "data/epoch_bad": kinds}
        self.health.check(totals, force=epoch_end)
        return totals.metrics(), summary


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
        collate_fn=collate,
        # Its own generator: iterating a DataLoader otherwise draws from the global RNG,
        # which would shift the model's random stream after a resume.
        generator=torch.Generator(),
        persistent_workers=workers > 0,
    )
    return TrainLoader(loader, sampler.steps_per_epoch, {"kind": "indexed"})


def single_process_batches(
    dataset: Dataset, *, global_batch: int, seed: int, accum: int = 1, workers: int = 0
) -> Iterator[Batch]:
    """The micro-batch dicts one process trains on from the start (rank 0 of 1): for
    benchmarks and measurements made outside a run."""
    loader = train_loader(
        dataset,
        global_batch=global_batch,
        accum=accum,
        rank=0,
        world=1,
        workers=workers,
        seed=seed,
        start_micro=0,
        pin_memory=False,
    )
    return (batch for batch, _ in loader)


__all__ = ["BadDataError", "TrainLoader", "single_process_batches", "train_loader"]
