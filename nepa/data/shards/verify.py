"""Check every sample of a shard source: ``nepa shards verify``.

Each shard is read with :func:`~nepa.data.shards.reader.read_shard` (samples lost to a tar that
ends early are counted against the manifest's count), every field of every sample is decoded,
each sample must have exactly one payload and the fields the manifest lists, and a local shard's
size and sha256 must match the manifest. Problems are reported, never raised:

``{"source", "splits", "shards", "samples" (good samples read), "expected" (from the manifest,
or null), "bad": [{"shard", "key", "kind", "error", "count"}] (the first ``max_listed``),
"bad_entries" (all of them), "bad_by_kind": {kind: samples}, "ok"}``.

Kinds: ``truncated``, ``corrupt`` (a malformed tar, or a file that differs from the manifest),
``decode``, ``shape``, ``missing`` (no payload or a listed field absent) and ``pickle`` (a
member only a pickle loader could read; the rest of that shard cannot be read).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nepa.data.decode import payload_exts
from nepa.data.shards.codecs import (
    DecodeError,
    PickleMemberError,
    decode_field,
    field_ext,
    payload_field,
)
from nepa.data.shards.health import BadData
from nepa.data.shards.manifest import ShardInfo, has_manifest, read_manifest, resolve_shards
from nepa.data.shards.reader import read_shard, shard_name
from nepa.data.shards.write import sha256_file

MAX_LISTED = 1000


@dataclass(frozen=True)
class _Shard:
    url: str
    expected: int | None  # samples the manifest says it holds
    info: ShardInfo | None
    fields: tuple[str, ...]  # fields every sample must have (from the manifest)

    @property
    def name(self) -> str:
        return shard_name(self.url)


@dataclass
class _Report:
    max_listed: int
    good: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)
    n_entries: int = 0
    by_kind: Counter = field(default_factory=Counter)

    def add(self, shard: str, key: str | None, kind: str, error: str, count: int = 1) -> None:
        self.n_entries += 1
        self.by_kind[kind] += count
        if len(self.bad) < self.max_listed:
            self.bad.append(
                {"shard": shard, "key": key, "kind": kind, "error": error, "count": count}
            )


def verify_shards(
    source: str,
    splits: Sequence[str] | None = None,
    *,
    allow_pickle: bool = False,
    max_listed: int = MAX_LISTED,
    progress: bool = False,
) -> dict[str, Any]:
    """Decode every sample of ``splits`` (default: all splits of the manifest) of ``source``
    (a shard folder, manifest, ``{name}`` template or shard pattern) and report what is bad."""
    names, shards = _shards_of(source, splits)
    report = _Report(max_listed)
    for shard in tqdm(shards, disable=not progress, desc="verifying", unit="shard"):
        _verify_shard(shard, report, allow_pickle)
    expected = [s.expected for s in shards]
    return {
        "source": source,
        "splits": names,
        "shards": len(shards),
        "samples": report.good,
        "expected": None if None in expected else sum(expected),
        "bad": report.bad,
        "bad_entries": report.n_entries,
        "bad_by_kind": dict(sorted(report.by_kind.items())),
        "ok": report.n_entries == 0,
    }


def _shards_of(source: str, splits: Sequence[str] | None) -> tuple[list[str], list[_Shard]]:
    """The split names and the shards to check, with what the manifest says of each."""
    if not has_manifest(source):
        if splits is None and "{split}" in source:
            raise ValueError(f"{source!r} has a {{split}} placeholder: say which split(s) to check")
        names = list(splits) if splits is not None else [""]
        lists = [resolve_shards(source, s) for s in names]
        return names, [_Shard(u, None, None, ()) for sl in lists for u in sl.urls]
    manifest, _ = read_manifest(source)
    names = list(splits) if splits is not None else sorted(manifest.splits)
    shards = []
    for name in names:
        info = manifest.split(name, source)
        urls = resolve_shards(source, name).urls
        fields = tuple(f for f in info.fields if field_ext(f) not in payload_exts())
        shards += [_Shard(u, s.samples, s, fields) for u, s in zip(urls, info.shards, strict=True)]
    return names, shards


def _verify_shard(shard: _Shard, report: _Report, allow_pickle: bool) -> None:
    if shard.info is not None and _is_local(shard.url):
        _check_file(shard, report)
    bad = BadData()
    n = 0
    try:
        for sample in read_shard(
            shard.url, bad, expected=shard.expected, allow_pickle=allow_pickle
        ):
            n += 1
            _check_sample(shard, sample, report)
    except PickleMemberError as e:
        # read_shard raises from inside its generator: the rest of this shard is not readable.
        left = "" if shard.expected is None else f" ({max(shard.expected - n, 0)} sample(s))"
        report.add(shard.name, None, "pickle", f"{e} [the rest of this shard{left} was not read]")
    for (name, kind), count in sorted(bad.counts.items()):
        report.add(name, None, kind, bad.examples[(name, kind)], count=count)


def _check_sample(shard: _Shard, sample: dict[str, Any], report: _Report) -> None:
    """Decode every field; one bad entry per problem, and a good count if there is none."""
    key = sample.get("__key__")
    problems: list[tuple[str, str]] = []
    try:
        payload_field(sample)
    except DecodeError as e:
        problems.append((e.kind, str(e)))
    absent = [f for f in shard.fields if f not in sample]
    if absent:
        problems.append(
            ("missing", f"no field(s) {absent}, which the manifest lists for every sample")
        )
    for name, data in sample.items():
        if name.startswith("__"):
            continue
        try:
            decode_field(name, data)
        except DecodeError as e:
            problems.append((e.kind, f".{name}: {e}"))
    for kind, error in problems:
        report.add(shard.name, key, kind, error)
    if not problems:
        report.good += 1


def _check_file(shard: _Shard, report: _Report) -> None:
    """A local shard must have the size and sha256 the manifest recorded (a missing file is
    reported by the reader as truncated)."""
    path, info = Path(shard.url), shard.info
    if info is None or not path.is_file():
        return
    size = path.stat().st_size
    if size != info.bytes:
        error = f"file has {size} bytes, the manifest says {info.bytes}"
    elif sha256_file(path) != info.sha256:
        error = f"sha256 differs from the manifest's {info.sha256[:16]}..."
    else:
        return
    report.add(shard.name, None, "corrupt", f"{error}: the file changed after it was written")


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


def summary(report: dict[str, Any]) -> str:
    """A few human-readable lines about a report."""
    expected = "" if report["expected"] is None else f" of {report['expected']} expected"
    lines = [
        f"{report['source']}: {report['shards']} shard(s), {report['samples']} good sample(s)"
        f"{expected}: {'OK' if report['ok'] else 'BAD'}"
    ]
    if not report["ok"]:
        kinds = ", ".join(f"{k}: {n}" for k, n in report["bad_by_kind"].items())
        lines.append(f"bad ({report['bad_entries']} problem(s); samples by kind: {kinds})")
        for b in report["bad"][:10]:
            where = b["shard"] + (f" {b['key']!r}" if b["key"] else "")
            lines.append(f"  {b['kind']:9s} {where}: {b['error']}")
        if report["bad_entries"] > 10:
            lines.append(f"  ... {report['bad_entries'] - 10} more (use --json FILE for all)")
    return "\n".join(lines)
