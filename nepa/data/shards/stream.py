"""Streaming shards to a training run: split by rank and worker, shuffled, exactly resumable.

**Layout.** A run reads ``M = steps_per_epoch * accum`` micro-batches of ``mb = global_batch /
(accum * world)`` samples per rank and epoch. Rank micro-batch ``m`` (counted over the whole run)
comes from stream ``v = m % W`` of that rank (``W`` = DataLoader workers, at least 1): stream
``v`` produces, in epoch ``e``, the micro-batches ``j`` (``j = m - e*M``) with ``(e*M + j) % W ==
v``. The DataLoader hands batches out round robin in order, so worker ``w`` of a loader started
at micro-batch ``m0`` plays stream ``(w + m0) % W``.

**Exact epochs** (``epochs: exact``). Epoch ``e`` orders the shards by a permutation drawn from
``(seed, e)`` and concatenates their samples; the first ``steps_per_epoch * global_batch`` of that
sequence are dealt out in contiguous ranges, one per rank, then one per stream, sized to the
micro-batches each stream owes. So every sample is read exactly once per epoch across all ranks
and workers; the last ``N mod global_batch`` samples of each epoch's order (a different set
every epoch) are not used, as with ``drop_last``. A range may start or end inside a shard: the
samples before it are read but not decoded.

**Resampled epochs** (``epochs: resampled``). Each stream draws shards with replacement from a
generator seeded by ``(seed, e, rank, stream)``, for ``epoch_steps`` steps per nominal epoch.
No manifest is needed.

**Shuffling and decoding.** Each stream passes its raw (undecoded) samples through webdataset's
shuffle buffer (seeded by ``(seed, e, rank, stream)``), then decodes and augments them
(augmentation seeded per sample). Micro-batch ``k`` of a stream's epoch is raw outputs
``[k*mb, (k+1)*mb)``; bad samples are dropped and the batch is topped up by repeating its good
samples (or, past the end of a truncated range, the epoch's first good samples), so every rank
takes the same number of steps.

**Resume.** Everything above is a pure function of (seed, layout, micro-batch index), so a
resumed run skips ``k*mb`` raw samples of each stream's current epoch, without decoding, and
continues exactly as an uninterrupted run would: in exact mode no sample is repeated or skipped
within the epoch, in resampled mode the shard draws and shuffles continue identically. The
number of ranks and workers must match the checkpoint's. The cost of a resume is re-reading (not
decoding) at most one epoch's range per stream.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import shuffle

from nepa.batch import Batch, Fields, collate, placeholder_batch
from nepa.data.loader import TrainLoader
from nepa.data.sampler import aug_seeds, check_layout
from nepa.data.shards.codecs import (
    PICKLE_EXTS,
    DecodeError,
    PickleMemberError,
    check_pickles,
    field_ext,
)
from nepa.data.shards.health import BadData, BadDataError
from nepa.data.shards.manifest import ShardList
from nepa.data.shards.options import ShardOptions
from nepa.data.shards.reader import read_shard, shard_name

log = logging.getLogger(__name__)


class SampleFn(Protocol):
    """Decodes one raw sample (augmentation seeded by ``seed``) into a dict sample, DecodeError
    if it is bad; ``finish_batch`` then works on the collated batch (e.g. normalises it)."""

    def __call__(self, sample: dict[str, Any], seed: int) -> Batch: ...

    def finish_batch(self, batch: Batch) -> Batch: ...


Mode = Literal["exact", "resampled"]


@dataclass(frozen=True)
class Layout:
    """How a run's batches are cut: global batch, accumulation, ranks, streams per rank."""

    global_batch: int
    accum: int
    world: int
    workers: int  # DataLoader workers; 0 means the main process reads (one stream)
    seed: int
    mode: Mode
    steps_per_epoch: int

    @property
    def streams(self) -> int:
        return max(self.workers, 1)

    @property
    def micro_batch(self) -> int:
        return self.global_batch // (self.accum * self.world)

    @property
    def micro_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accum

    def first_micro(self, epoch: int, stream: int) -> int:
        """The first micro-batch index ``j`` (within ``epoch``) that ``stream`` produces."""
        return (stream - epoch * self.micro_per_epoch) % self.streams

    def owed(self, epoch: int, stream: int) -> int:
        """How many micro-batches ``stream`` produces in ``epoch``."""
        return len(range(self.first_micro(epoch, stream), self.micro_per_epoch, self.streams))

    def range_of(self, epoch: int, rank: int, stream: int) -> tuple[int, int]:
        """Exact mode: the [start, stop) of the epoch's sample sequence that a stream reads."""
        per_rank = self.micro_per_epoch * self.micro_batch
        before = sum(self.owed(epoch, v) for v in range(stream)) * self.micro_batch
        start = rank * per_rank + before
        return start, start + self.owed(epoch, stream) * self.micro_batch

    def state(self) -> dict[str, Any]:
        """What a resume must match (0 and 1 workers read alike: one stream)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "workers"}
        return {**out, "streams": self.streams}


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and platforms)."""
    h = np.asarray([0], dtype=np.int64)
    for p in parts:
        h = aug_seeds(int(h[0]), 0, np.asarray([p], dtype=np.int64))
    return int(h[0])


def epoch_order(seed: int, epoch: int, n_shards: int) -> np.ndarray:
    return np.random.default_rng([seed % 2**63, epoch, 0x5A4D]).permutation(n_shards)


def exact_pieces(
    counts: list[int], order: np.ndarray, start: int, stop: int
) -> list[tuple[int, int, int]]:
    """Cut [start, stop) of the concatenation of shards ``order`` into (shard, lo, hi) pieces."""
    pieces, pos = [], 0
    for s in order.tolist():
        lo, hi = max(start - pos, 0), min(stop - pos, counts[s])
        if lo < hi:
            pieces.append((s, lo, hi))
        pos += counts[s]
        if pos >= stop:
            break
    return pieces


class ShardStream(IterableDataset):
    """Infinite stream of one rank's micro-batches ``(batch, meta)`` from a :class:`ShardList`.

    ``meta`` holds ``good`` (decoded samples in the batch), ``bad`` (counts since the previous
    batch of this worker, see :meth:`BadData.take_delta`), ``epoch`` and ``micro`` (the rank's
    micro-batch index of this batch).
    """

    def __init__(
        self,
        shards: ShardList,
        sample_fn: SampleFn,
        layout: Layout,
        *,
        rank: int,
        start_micro: int,
        shuffle_buffer: int,
        allow_pickle: bool,
        fields: Fields,
    ) -> None:
        self.shards, self.sample_fn, self.layout = shards, sample_fn, layout
        self.fields = dict(fields)
        self.rank, self.start_micro = rank, start_micro
        self.shuffle_buffer, self.allow_pickle = shuffle_buffer, allow_pickle

    # -- raw samples of one stream's epoch ----------------------------------------------------
    def raw(self, epoch: int, stream: int, bad: BadData) -> Iterator[tuple[int, dict]]:
        """(sample id, raw sample) in shuffled order for ``stream`` in ``epoch``."""
        lay, sh = self.layout, self.shards
        seed = stream_seed(lay.seed, epoch, self.rank, stream)
        if lay.mode == "exact":
            offsets = np.concatenate([[0], np.cumsum(sh.counts)]).tolist()
            start, stop = lay.range_of(epoch, self.rank, stream)
            pieces = exact_pieces(
                sh.counts, epoch_order(lay.seed, epoch, len(sh.urls)), start, stop
            )
            source = self._read_pieces(pieces, offsets, bad)
        else:
            source = itertools.islice(
                self._read_resampled(random.Random(seed), stream, bad),
                lay.owed(epoch, stream) * lay.micro_batch,
            )
        if self.shuffle_buffer > 1:
            shuffle_buffer = shuffle(
                bufsize=self.shuffle_buffer,
                initial=self.shuffle_buffer,
                rng=random.Random(seed ^ 0x2545F491),
            )
            source = shuffle_buffer(source)
        return source

    def _read_pieces(self, pieces, offsets, bad: BadData) -> Iterator[tuple[int, dict]]:
        for s, lo, hi in pieces:
            url, expected = self.shards.urls[s], self.shards.counts[s]
            for i, sample in enumerate(
                read_shard(
                    url,
                    bad,
                    expected=expected,
                    start=lo,
                    stop=hi,
                    allow_pickle=self.allow_pickle,
                    fields=self.shards.fields,
                )
            ):
                yield offsets[s] + lo + i, sample

    def _read_resampled(
        self, rng: random.Random, stream: int, bad: BadData
    ) -> Iterator[tuple[int, dict]]:
        n_read, empty_in_a_row, urls = 0, 0, self.shards.urls
        base = (self.rank * self.layout.streams + stream) << 40
        while True:
            s = rng.randrange(len(urls))
            expected = None if self.shards.counts is None else self.shards.counts[s]
            before = n_read
            for sample in read_shard(
                urls[s],
                bad,
                expected=expected,
                allow_pickle=self.allow_pickle,
                fields=self.shards.fields,
            ):
                yield base + n_read, sample  # ids unique per rank and stream: distinct crops
                n_read += 1
            empty_in_a_row = empty_in_a_row + 1 if n_read == before else 0
            if empty_in_a_row > 3 * len(urls) + 10:
                raise BadDataError(
                    f"{empty_in_a_row} shard draws in a row from {self.shards.where} gave no "
                    "sample; run `nepa shards verify` on it"
                )

    # -- batches -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[Batch, dict]]:
        info = get_worker_info()
        lay = self.layout
        worker = info.id if info is not None else 0
        stream = (worker + self.start_micro) % lay.streams
        bad = BadData()
        m = self.start_micro + (stream - self.start_micro) % lay.streams  # first micro it owes
        try:
            while True:
                epoch, j = divmod(m, lay.micro_per_epoch)
                k = (j - lay.first_micro(epoch, stream)) // lay.streams  # batches done this epoch
                raw = self.raw(epoch, stream, bad)
                # Resume: skip without decoding; what those samples cost was counted before the
                # checkpoint (the trainer saved those totals), so don't count it again.
                with bad.muted():
                    for _ in itertools.islice(raw, k * lay.micro_batch):
                        pass
                for _ in range(lay.owed(epoch, stream) - k):
                    batch, good = self._batch(raw, epoch, stream, bad)
                    yield batch, {"good": good, "bad": bad.take_delta(), "epoch": epoch, "micro": m}
                    m += lay.streams
        except (BadDataError, PickleMemberError) as e:
            # A rank that raised here would leave the others waiting in a collective. Instead,
            # hand out placeholder batches flagged ``fatal``: the trainer shares the flag in its
            # per-step reduction, so every rank saves and stops at the same step.
            stand_in = placeholder_batch(self.fields, lay.micro_batch)
            while True:
                yield stand_in, {"good": 0, "bad": {}, "epoch": -1, "micro": m, "fatal": str(e)}
                m += lay.streams

    def _batch(self, raw, epoch: int, stream: int, bad: BadData):
        mb = self.layout.micro_batch
        items = self._decode_all(list(itertools.islice(raw, mb)), epoch, bad)
        good = [it for it in items if it is not None]
        n_good = len(good)
        if not good:
            good = self._refill(epoch, stream, mb)
        batch = collate([good[i % len(good)] for i in range(mb)])
        return self.sample_fn.finish_batch(batch), n_good

    def _decode_all(self, raws: list[tuple[int, dict]], epoch: int, bad: BadData) -> list:
        """Decode and augment; a bad sample is counted and becomes None."""
        sids = np.fromiter((sid for sid, _ in raws), dtype=np.int64, count=len(raws))
        seeds = aug_seeds(self.layout.seed, epoch, sids).tolist()  # one call per batch
        out = []
        for (_, sample), seed in zip(raws, seeds, strict=True):
            try:
                out.append(self.sample_fn(sample, seed))
            except DecodeError as e:
                name = shard_name(sample.get("__url__", "?"))
                bad.add(name, e.kind, str(e), key=sample.get("__key__"))
                out.append(None)
        return out

    def _refill(self, epoch: int, stream: int, n: int) -> list:
        """Good samples from the start of the stream's epoch, for batches past a truncated end."""
        scratch, out = BadData(), []
        scratch.mute = True  # these samples were counted when first read
        for raw in self.raw(epoch, stream, scratch):
            [item] = self._decode_all([raw], epoch, scratch)
            if item is not None:
                out.append(item)
                if len(out) == n:
                    break
        if not out:
            raise BadDataError(
                f"rank {self.rank} stream {stream} found no decodable sample in its whole range "
                f"of epoch {epoch} in {self.shards.where}; run `nepa shards verify` on it"
            )
        return out


def stream_loader(dataset: ShardStream, workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over a :class:`ShardStream` (batches are made in the workers)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator(),  # the global RNG is the model's; see Trainer.loader
    )


class ShardTrainData:
    """What a shard dataset's ``build(train=True)`` returns: the stream is made once the
    trainer knows the layout (batch, accumulation, ranks, workers)."""

    def __init__(self, shards: ShardList, sample_fn: SampleFn, options: ShardOptions) -> None:
        if options.epochs == "exact" and shards.counts is None:
            raise ValueError(
                f"exact epochs need per-shard sample counts, and {shards.where!r} has no manifest; "
                "write the shards with `nepa shards write` (which adds manifest.json), or set "
                "data.epochs=resampled and data.epoch_steps"
            )
        self.shards, self.sample_fn, self.options = shards, sample_fn, options
        self.preflight()

    def preflight(self) -> None:
        """Fail before training, not hours in: refuse pickle members the manifest lists, and
        read the first sample of the first shard (which also proves the source is reachable)."""
        listed = [f for f in self.shards.fields or () if field_ext(f) in PICKLE_EXTS]
        if listed and not self.options.allow_pickle:
            check_pickles({"__key__": "(manifest)", **dict.fromkeys(listed)}, False, "manifest")
        bad = BadData()
        first = next(
            read_shard(self.shards.urls[0], bad, stop=1, allow_pickle=self.options.allow_pickle),
            None,
        )
        if first is None:
            why = "; ".join(bad.examples.values()) or "it holds no sample"
            raise ValueError(f"cannot read the first shard of {self.shards.where!r}: {why}")

    def steps_per_epoch(self, global_batch: int) -> int:
        o, total = self.options, self.shards.total
        if o.epoch_steps is not None:
            return o.epoch_steps
        if total is None:
            raise ValueError(
                f"{self.shards.where!r} has no manifest, so the epoch length is unknown: set "
                "data.epoch_steps (steps per nominal epoch)"
            )
        if total < global_batch:
            raise ValueError(
                f"split has {total} samples, fewer than one global batch of {global_batch}; "
                "lower train.batch_size or write more data"
            )
        return total // global_batch

    def make_train_loader(
        self,
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
        check_layout(global_batch, accum, rank, world)
        layout = Layout(
            global_batch,
            accum,
            world,
            workers,
            seed,
            self.options.epochs,
            self.steps_per_epoch(global_batch),
        )
        stream = ShardStream(
            self.shards,
            self.sample_fn,
            layout,
            rank=rank,
            start_micro=start_micro,
            shuffle_buffer=self.options.shuffle_buffer,
            allow_pickle=self.options.allow_pickle,
            fields=self.options.fields,
        )
        return TrainLoader(
            stream_loader(stream, workers, pin_memory),
            layout.steps_per_epoch,
            {"kind": "shards", **layout.state()},
            self.options.max_bad_fraction,
        )
