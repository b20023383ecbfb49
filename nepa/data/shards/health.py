"""Bad-data accounting: skipped samples counted per shard and per kind, logged once per shard.

Kinds: ``truncated`` (samples lost to a tar that ends early or cannot be read: the manifest's
count minus what was read), ``decode`` (an undecodable image, wav or array), ``shape`` (decoded
but not of the expected shape), ``missing`` (no payload field), ``corrupt`` (a malformed tar
member, e.g. a duplicate name).

A :class:`BadData` lives where samples are read (a DataLoader worker) and hands its counts on
in small deltas; a :class:`DataHealth` in the training process adds them up, checks the
configured maximum bad fraction and writes the end-of-epoch summary.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

KINDS = ("truncated", "decode", "shape", "missing", "corrupt", "short", "nonfinite")


class BadDataError(RuntimeError):
    """Too large a fraction of the data was bad to keep training."""


@dataclass
class BadData:
    """Counts of skipped samples where they are read. ``examples`` keeps the first error of each
    (shard, kind) so a report can say what went wrong. While ``mute`` is set nothing is counted
    or logged (samples re-read on a resume, or to refill a batch, were counted the first time).
    """

    counts: Counter = field(default_factory=Counter)  # (shard, kind) -> n
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    mute: bool = False
    _logged: set[str] = field(default_factory=set)
    _delta: Counter = field(default_factory=Counter)

    def add(self, shard: str, kind: str, error: str, n: int = 1, key: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown bad-data kind {kind!r}; one of {KINDS}")
        if self.mute:
            return
        self.counts[(shard, kind)] += n
        self._delta[(shard, kind)] += n
        where = f"{shard}" + (f" sample {key!r}" if key else "")
        self.examples.setdefault((shard, kind), f"{where}: {error}")
        if shard not in self._logged:
            self._logged.add(shard)
            log.warning(
                "bad data in shard %s: %s (%s); skipped and counted (logged once per shard)",
                shard,
                error,
                kind,
            )

    @contextmanager
    def muted(self) -> Iterator[None]:
        before, self.mute = self.mute, True
        try:
            yield
        finally:
            self.mute = before

    def take_delta(self) -> dict[str, int]:
        """Counts added since the last call, as {"kind\\tshard": n} (plain types, so it crosses
        the DataLoader's process boundary unchanged)."""
        out = {f"{k}\t{s}": n for (s, k), n in self._delta.items()}
        self._delta.clear()
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Totals:
    """Counts summed over all ranks: good samples and bad ones by kind, for the run and for the
    current epoch."""

    good: int
    bad: dict[str, int]
    epoch_bad: dict[str, int]

    @property
    def n_bad(self) -> int:
        return sum(self.bad.values())

    @property
    def fraction(self) -> float:
        return self.n_bad / max(self.good + self.n_bad, 1)

    def metrics(self) -> dict[str, int]:
        return {
            "data/good": self.good,
            "data/bad": self.n_bad,
            **{f"data/bad_{k}": n for k, n in self.bad.items() if n},
        }


class DataHealth:
    """This process's counts in the training process. ``vector()`` lays them out for a sum
    over ranks and ``totals(summed)`` reads the result; ``check`` enforces the limit. Counts
    restored from a checkpoint go into ``restore`` on one rank only, so the sum stays right."""

    def __init__(self, max_bad_fraction: float, min_samples: int = 1000) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.good = 0
        self.bad: Counter = Counter()  # kind -> n, whole run on this rank
        self.epoch_bad: Counter = Counter()  # kind -> n, this epoch on this rank
        self.epoch_shards: Counter = Counter()  # shard -> n, this epoch on this rank

    def update(self, good: int, delta: dict[str, int]) -> None:
        self.good += good
        for key, n in delta.items():
            kind, shard = key.split("\t", 1)
            self.bad[kind] += n
            self.epoch_bad[kind] += n
            self.epoch_shards[shard] += n

    def by_kind(self) -> dict[str, int]:
        """This rank's bad counts by kind (kinds with none left out)."""
        return {k: n for k, n in self.bad.items() if n}

    @property
    def n_bad(self) -> int:
        return sum(self.bad.values())

    def restore(self, saved: dict) -> None:
        """Add a checkpoint's run totals (``Totals.good`` / ``.bad``) to this rank's counts."""
        self.good += int(saved.get("good", 0))
        self.bad.update({k: int(n) for k, n in saved.get("bad", {}).items()})

    def vector(self) -> list[int]:
        return [self.good, *(self.bad[k] for k in KINDS), *(self.epoch_bad[k] for k in KINDS)]

    @staticmethod
    def totals(summed: list[float]) -> Totals:
        v = [int(round(x)) for x in summed]
        n = len(KINDS)
        return Totals(
            v[0],
            dict(zip(KINDS, v[1 : 1 + n], strict=True)),
            dict(zip(KINDS, v[1 + n :], strict=True)),
        )

    def end_epoch(self) -> dict[str, int]:
        """This rank's worst shards of the epoch (for the log); resets the epoch counts."""
        worst = dict(self.epoch_shards.most_common(5))
        self.epoch_bad.clear()
        self.epoch_shards.clear()
        return worst

    def check(self, totals: Totals, *, force: bool = False) -> None:
        """Raise BadDataError if the bad fraction over all ranks is over the limit; judged once
        ``min_samples`` were read, or always when ``force`` (at an epoch's end)."""
        if not force and totals.good + totals.n_bad < self.min_samples:
            return
        if totals.fraction > self.max_bad_fraction:
            kinds = ", ".join(f"{k}: {n}" for k, n in totals.bad.items() if n)
            raise BadDataError(
                f"{totals.n_bad} of {totals.good + totals.n_bad} samples read so far were bad "
                f"({totals.fraction:.2%}), over data.max_bad_fraction={self.max_bad_fraction:g} "
                f"({kinds}). Run `nepa shards verify` on the source to see which shards, fix or "
                "drop them, or raise data.max_bad_fraction; a checkpoint is saved first."
            )
