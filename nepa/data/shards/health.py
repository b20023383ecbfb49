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
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

KINDS = ("truncated", "decode", "shape", "missing", "corrupt")


class BadDataError(RuntimeError):
    """Too large a fraction of the data was bad to keep training."""


@dataclass
class BadData:
    """Counts of skipped samples where they are read. ``examples`` keeps the first error of each
    (shard, kind) so a report can say what went wrong."""

    counts: Counter = field(default_factory=Counter)  # (shard, kind) -> n
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    _logged: set[str] = field(default_factory=set)
    _delta: Counter = field(default_factory=Counter)

    def add(self, shard: str, kind: str, error: str, n: int = 1, key: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown bad-data kind {kind!r}; one of {KINDS}")
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

    def take_delta(self) -> dict[str, int]:
        """Counts added since the last call, as {"kind\\tshard": n} (plain types, so it crosses
        the DataLoader's process boundary unchanged)."""
        out = {f"{k}\t{s}": n for (s, k), n in self._delta.items()}
        self._delta.clear()
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class DataHealth:
    """Running totals in the training process; ``check`` enforces ``max_bad_fraction``."""

    def __init__(self, max_bad_fraction: float, min_samples: int = 1000) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.good = 0
        self.bad: Counter = Counter()  # (kind, shard) -> n, whole run
        self.epoch_bad: Counter = Counter()

    def update(self, good: int, delta: dict[str, int]) -> None:
        self.good += good
        for key, n in delta.items():
            kind, shard = key.split("\t", 1)
            self.bad[(kind, shard)] += n
            self.epoch_bad[(kind, shard)] += n

    @property
    def n_bad(self) -> int:
        return sum(self.bad.values())

    def by_kind(self, counts: Counter | None = None) -> dict[str, int]:
        out: Counter = Counter()
        for (kind, _), n in (self.bad if counts is None else counts).items():
            out[kind] += n
        return dict(out)

    def metrics(self) -> dict[str, float]:
        """Whole-run counts for metrics.jsonl (this process)."""
        m: dict[str, float] = {"data/good": self.good, "data/bad": self.n_bad}
        m.update({f"data/bad_{k}": n for k, n in self.by_kind().items()})
        return m

    def end_epoch(self, epoch: int) -> dict[str, object]:
        """Summary of epoch ``epoch`` on this process (logged by the caller), then reset."""
        shards = Counter()
        for (_, shard), n in self.epoch_bad.items():
            shards[shard] += n
        summary = {
            "epoch": epoch,
            "bad": sum(self.epoch_bad.values()),
            "bad_by_kind": self.by_kind(self.epoch_bad),
            "worst_shards": dict(shards.most_common(5)),
        }
        self.epoch_bad.clear()
        return summary

    def fraction(self, good: int, bad: int) -> float:
        return bad / max(good + bad, 1)

    def check(self, good: int, bad: int, *, force: bool = False) -> None:
        """Raise BadDataError if ``bad / (good + bad)`` (totals over all ranks) is over the limit;
        checked once ``min_samples`` were read, or always when ``force`` (at an epoch's end)."""
        if not force and good + bad < self.min_samples:
            return
        frac = self.fraction(good, bad)
        if frac > self.max_bad_fraction:
            kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.by_kind().items()))
            raise BadDataError(
                f"{bad} of {good + bad} samples read so far were bad ({frac:.2%}), over "
                f"data.max_bad_fraction={self.max_bad_fraction:g} ({kinds or 'on other ranks'}). "
                "Run `nepa shards verify` on the source to see which shards, fix or drop them, "
                "or raise data.max_bad_fraction; training state was saved."
            )
