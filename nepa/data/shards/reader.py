"""Read the raw samples of one shard through webdataset, counting what is lost instead of failing.

A raw sample is webdataset's dict: ``__key__``, ``__url__`` and one ``bytes`` value per member
extension. A tar that ends early or cannot be opened stops that shard only; with a known
sample count (from the manifest) the samples it lost are counted as ``truncated``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Any

from webdataset.tariterators import tarfile_samples

from nepa.data.shards.codecs import check_pickles
from nepa.data.shards.health import BadData


def shard_name(url: str) -> str:
    """A short name for logs and counts: the last path component of the URL or command."""
    return url.rstrip("/ -").split("/")[-1].split()[-1]


def read_shard(
    url: str,
    bad: BadData,
    *,
    expected: int | None = None,
    allow_pickle: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield the raw samples of the shard at ``url`` (a path, URL or ``pipe:`` command).

    Read errors are recorded in ``bad``; pickle members raise
    :class:`~nepa.data.shards.codecs.PickleMemberError` unless ``allow_pickle``.
    """
    name = shard_name(url)
    errors: list[BaseException] = []

    def handler(exn: BaseException) -> bool:
        errors.append(exn)
        return False  # stop this shard: after a tar error the stream position is unknown

    n = 0
    for sample in tarfile_samples([{"url": url}], handler=handler):
        yield check_pickles(sample, allow_pickle, name)
        n += 1
    if errors:
        e = errors[0]
        kind = "truncated" if _is_read_error(e) else "corrupt"
        lost = max(expected - n, 0) if expected is not None else 0
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if kind == "corrupt" or not lost:
            # A bad member (e.g. a duplicate name) or an error with nothing known lost: count one.
            bad.add(name, kind, f"{msg} after {n} good sample(s)", n=max(lost, 1))
        else:
            bad.add(name, "truncated", f"{msg}; {lost} of {expected} samples lost", n=lost)
    elif expected is not None and n < expected:
        bad.add(name, "truncated", f"shard ended after {n} of {expected} samples", n=expected - n)


def _is_read_error(e: BaseException) -> bool:
    return isinstance(e, tarfile.TarError | EOFError | OSError | ValueError) and (
        "duplicate file name" not in str(e)
    )
