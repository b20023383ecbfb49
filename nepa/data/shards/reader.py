"""Read the raw samples of one shard through webdataset, counting what is lost instead of failing.

A raw sample is webdataset's dict: ``__key__``, ``__url__`` and one ``bytes`` value per member
extension. A tar that ends early or cannot be opened stops that shard only; with a known
sample count (from the manifest) the samples it lost are counted as ``truncated``.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from webdataset.tariterators import tarfile_samples

from nepa.data.shards.codecs import DecodeError, check_pickles
from nepa.data.shards.health import BadData
from nepa.data.shards.manifest import ShardList

log = logging.getLogger(__name__)
T = TypeVar("T")


def shard_name(url: str) -> str:
    """A short name for logs and counts: the file name in the URL or ``pipe:`` command."""
    tokens = url.split()
    path = next((t for t in reversed(tokens) if ".tar" in t), tokens[-1] if tokens else url)
    return path.rstrip("/").rsplit("/", 1)[-1]


def read_shard(
    url: str,
    bad: BadData,
    *,
    expected: int | None = None,
    start: int = 0,
    stop: int | None = None,
    allow_pickle: bool = False,
    fields: list[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield raw samples ``start:stop`` of the shard at ``url`` (a path, URL or ``pipe:``
    command); ``stop`` defaults to ``expected`` (the manifest's count) or the end.

    Samples before ``start`` are read but not returned (tar streams cannot seek). Read errors
    are recorded in ``bad``, counting only samples lost inside ``start:stop`` (so readers of
    disjoint ranges of one shard never count a loss twice); pickle members raise
    :class:`~nepa.data.shards.codecs.PickleMemberError` unless ``allow_pickle``. With
    ``fields`` (the manifest's), a sample lacking one of them is counted ``missing``, not returned.
    """
    name = shard_name(url)
    stop = expected if stop is None else stop
    need = set(fields or ())

    def release(sample: dict[str, Any]) -> dict[str, Any] | None:
        lacking = need - sample.keys()
        if lacking:
            bad.add(name, "missing", f"no {sorted(lacking)} member(s)", key=sample.get("__key__"))
            return None
        return check_pickles(sample, allow_pickle, name)

    errors: list[BaseException] = []

    def handler(exn: BaseException) -> bool:
        errors.append(exn)
        return False  # stop this shard: after a tar error the stream position is unknown

    # One sample is held back until the next one starts (or the tar ends cleanly): when a tar
    # breaks, the sample being read may lack members, so it is counted as lost, not returned.
    held, n = None, 0  # n: index of the next sample the tar yields
    for sample in tarfile_samples([{"url": url}], handler=handler):
        if held is not None and start <= n - 1 and (out := release(held)) is not None:
            yield out
        held, n = sample, n + 1
        if stop is not None and n > stop:
            return
    # A tar cut exactly between members ends "cleanly" in stream mode; with a known count, a
    # short shard is broken all the same, and its last sample may lack members.
    broken = bool(errors) or (stop is not None and n < stop)
    if held is not None and not broken and start <= n - 1 and (out := release(held)) is not None:
        yield out
    good_end = max(n - 1, 0) if broken else n  # samples known to be whole
    lost = max(stop - max(good_end, start), 0) if stop is not None else 0
    if errors:
        e = errors[0]
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if not _is_read_error(e):
            bad.add(name, "corrupt", f"{msg} after {good_end} sample(s)", n=max(lost, 1))
        elif lost or stop is None:
            # Without a known count, an unreadable tail counts as one event.
            bad.add(name, "truncated", f"{msg} after {good_end} sample(s)", n=max(lost, 1))
    elif lost:
        bad.add(name, "truncated", f"shard ended after {n} of {expected} samples", n=lost)


def _is_read_error(e: BaseException) -> bool:
    return isinstance(e, tarfile.TarError | EOFError | OSError | ValueError) and (
        "duplicate file name" not in str(e)
    )


def decode_all(
    shards: ShardList, decode: Callable[[dict[str, Any]], T], *, allow_pickle: bool, where: str
) -> list[T]:
    """Read and decode every sample of a split in order (for evaluation, which needs it all in
    memory); bad samples are counted, logged once per shard and summarised, then skipped."""
    bad, out = BadData(), []
    counts = shards.counts or [None] * len(shards.urls)
    for url, expected in zip(shards.urls, counts, strict=True):
        for sample in read_shard(
            url, bad, expected=expected, allow_pickle=allow_pickle, fields=shards.fields
        ):
            try:
                out.append(decode(sample))
            except DecodeError as e:
                bad.add(shard_name(url), e.kind, str(e), key=sample.get("__key__"))
    if bad.total:
        log.warning("%s: skipped %d bad sample(s) while reading a split", where, bad.total)
    if not out:
        raise ValueError(f"{where}: no readable sample in this split")
    return out
