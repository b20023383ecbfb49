"""Write samples as WebDataset shards plus a ``manifest.json``: the Python API behind
``nepa shards write``.

A sample is a dict: ``__key__`` (unique, no ``.`` or ``/``), exactly one payload (``png``/``jpg``/
... image, ``wav``/``flac``/``ogg`` audio or ``npy`` array) and optional ``cls`` (int label),
``txt`` and ``json`` fields. Values are encoded by
:func:`~nepa.data.shards.codecs.encode_field`: ``bytes`` are stored as given (already encoded),
a uint8 array ``(H, W)`` / ``(H, W, 1|3)`` becomes a PNG, ints a ``.cls``, dicts a ``.json``.
Fields whose name starts with ``_`` (webdataset metadata such as ``__url__``) are not written.

Writing your own data in a few lines::

    import numpy as np
    from nepa.data.shards.write import write_shards

    images = np.random.randint(0, 256, (100, 32, 32, 3), dtype=np.uint8)  # (N, H, W, C)
    labels = np.random.randint(0, 10, size=100)  # (N,)
    samples = (
        {"__key__": f"img{i:05d}", "png": images[i], "cls": int(labels[i]), "json": {"id": i}}
        for i in range(len(images))
    )
    write_shards(samples, "shards/mine", split="train", classes=[str(c) for c in range(10)])
    # then: nepa shards verify shards/mine; train with data.source: shards/mine

Every field is decoded once while writing (what ``nepa shards verify`` will check later), so
bad data fails here, naming the sample. Output is deterministic: the same samples give
byte-identical tars and manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from webdataset import TarWriter

from nepa.data.decode import exts_of
from nepa.data.shards.codecs import (
    DecodeError,
    decode_field,
    encode_field,
    field_ext,
    payload_field,
)
from nepa.data.shards.manifest import MANIFEST, Manifest, ShardInfo, SplitInfo, parse_manifest
from nepa.data.shards.sources import open_source
from nepa.data.shards.stats import RunningStats
from nepa.io import atomic_write_text

log = logging.getLogger(__name__)

# Fixed member mtime, so the same samples give byte-identical tars. An int: a float makes
# tarfile add a PAX header with the exact value to every member.
SHARD_MTIME = 0
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def shard_filename(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def write_shards(
    samples: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    split: str = "train",
    shard_size: int = 1000,
    modality: str = "image",
    classes: list[str] | None = None,
    created: dict[str, Any] | None = None,
    shuffle_seed: int | None = None,
    progress: bool = False,
) -> SplitInfo:
    """Write ``samples`` as split ``split`` of the shard folder ``out_dir``; returns its entry.

    ``out_dir`` may already hold other splits: they are kept (their modality and classes must
    agree); an existing split of the same name is replaced: the new split is written beside it
    and swapped in at the end, so an interrupted or failed write leaves the old split whole. ``shuffle_seed`` (None keeps the
    given order) permutes the samples first, which holds them all in memory. ``created``
    records how the data was made (e.g. ``{"source": ..., "source_kind": ...}``); the nepa
    version, shard size and shuffle seed are added. For image modality the per-channel mean/std
    of the pixels scaled to [0, 1] go into the manifest.
    """
    out = Path(out_dir)
    _check_args(split, shard_size, modality)
    out.mkdir(parents=True, exist_ok=True)
    existing = _read_existing(out)
    _check_compatible(existing, split, modality, classes, out)
    listed = (
        {s.name for s in existing.splits[split].shards}
        if existing and split in existing.splits
        else set()
    )
    marker = out / f".{split}.writing"  # left by an interrupted write of an older nepa
    _remove_stale_shards(out, split, marker, listed)
    marker.unlink(missing_ok=True)
    # The new split is written beside the old one, which stays complete and listed until the
    # new one is: an interrupted write loses nothing. Then the shards and the manifest swap.
    staging = out / f".{split}.new"
    shutil.rmtree(staging, ignore_errors=True)  # an earlier interrupted write's partial split
    staging.mkdir()
    try:
        info = _write_split(
            samples, staging, split, shard_size, modality, classes, shuffle_seed, progress
        )
    except BaseException:  # a bad sample or an interrupt: the old split is untouched
        shutil.rmtree(staging, ignore_errors=True)
        raise
    how = {"shard_size": shard_size, "shuffle_seed": shuffle_seed, **(created or {})}
    _swap_in(out, staging, listed, info, _merged(existing, split, info, modality, classes, how))
    log.info(
        "wrote split %r: %d samples in %d shard(s) to %s%s",
        split,
        info.samples,
        len(info.shards),
        out,
        f" (replacing {len(listed)} shard(s))" if listed else "",
    )
    return info


def _swap_in(out: Path, staging: Path, old: set[str], info: SplitInfo, manifest: Manifest) -> None:
    """Move the staged shards into ``out`` and write the new manifest; the old shards of the
    split are moved aside first and deleted last (a few renames: the only window in which the
    folder is between the two versions)."""
    aside = staging.with_suffix(".old")
    aside.mkdir(exist_ok=True)
    for name in old:
        if (out / name).exists():
            (out / name).rename(aside / name)
    for shard in info.shards:
        (staging / shard.name).rename(out / shard.name)
    write_manifest(manifest, out)
    shutil.rmtree(aside)
    staging.rmdir()


def _write_split(
    samples: Iterable[dict[str, Any]],
    out: Path,
    split: str,
    shard_size: int,
    modality: str,
    classes: list[str] | None,
    shuffle_seed: int | None,
    progress: bool,
) -> SplitInfo:
    if shuffle_seed is not None:
        samples = shuffled(samples, shuffle_seed)
    acc = _SplitAccumulator(modality, classes)
    total = len(samples) if isinstance(samples, list) else None
    encoded = (acc.add(s) for s in samples)
    with tqdm(
        encoded, total=total, disable=not progress, desc=f"writing {split}", unit="sample"
    ) as bar:
        shards = _write_tars(bar, out, split, shard_size)
    if not shards:
        raise ValueError(f"no samples to write for split {split!r} of {out}")
    return acc.split_info(shards)


def shuffled(samples: Iterable[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """All samples in an order fixed by ``seed`` (numpy's default generator)."""
    items = list(samples)
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]


def write_manifest(manifest: Manifest, out_dir: Path) -> None:
    """Write ``manifest.json`` through a temp file and ``os.replace``: readers see the old or the
    new manifest, never half of one (keys sorted, so the bytes are deterministic)."""
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    atomic_write_text(out_dir / MANIFEST, text)


# ---------------------------------------------------------------- checks and manifest


def _check_args(split: str, shard_size: int, modality: str) -> None:
    if not _SPLIT_NAME.match(split):
        raise ValueError(
            f"split {split!r}: use letters, digits, '_' and '-' (it names the shard files), "
            "e.g. train, test, val"
        )
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not modality or not isinstance(modality, str):
        raise ValueError(
            f"modality must be a non-empty name (image, audio, array...), got {modality!r}"
        )


def _read_existing(out: Path) -> Manifest | None:
    path = out / MANIFEST
    return parse_manifest(path.read_bytes(), str(path)) if path.is_file() else None


def _check_compatible(
    existing: Manifest | None, split: str, modality: str, classes: list[str] | None, out: Path
) -> None:
    """The other splits of ``out`` must hold the same kind of data with the same classes."""
    if existing is None or not set(existing.splits) - {split}:
        return
    others = sorted(set(existing.splits) - {split})
    if existing.modality != modality:
        raise ValueError(
            f"{out} holds {existing.modality} data (splits {others}) but this split is "
            f"{modality}: write it into another folder"
        )
    if existing.classes != classes:
        raise ValueError(
            f"{out} has classes {existing.classes} (splits {others}) but this split has "
            f"{classes}: labels would disagree between splits; write it into another folder or "
            "rewrite all splits with the same classes"
        )


def _remove_stale_shards(out: Path, split: str, marker: Path, listed: set[str]) -> None:
    """Delete ``{split}-NNNNNN.tar`` files the manifest does not list, left by an interrupted
    write (its marker file is still there); refuse to touch such files otherwise, as they may be
    someone else's data."""
    pattern = re.compile(rf"^{re.escape(split)}-\d{{6}}\.tar$")
    stale = sorted(p for p in out.iterdir() if pattern.match(p.name) and p.name not in listed)
    if stale and not marker.exists():
        raise FileExistsError(
            f"{out} holds {len(stale)} shard file(s) of split {split!r} that its {MANIFEST} does "
            f"not list, e.g. {stale[0].name}; delete them or write into another folder"
        )
    for p in stale:
        p.unlink()
    if stale:
        log.warning(
            "deleted %d shard(s) of split %r left in %s by an interrupted write",
            len(stale),
            split,
            out,
        )


def _merged(
    existing: Manifest | None,
    split: str,
    info: SplitInfo,
    modality: str,
    classes: list[str] | None,
    how: dict[str, Any],
) -> Manifest:
    """The manifest with ``split`` set; ``created["splits"][split]`` says how it was written."""
    from nepa import __version__

    created: dict[str, Any] = dict(existing.created) if existing is not None else {}
    made = dict(created.get("splits", {}))
    made[split] = {"nepa_version": __version__, **how}
    created["splits"] = made
    splits = dict(existing.splits) if existing is not None else {}
    splits[split] = info
    return Manifest(modality=modality, classes=classes, splits=splits, created=created)


# ---------------------------------------------------------------- samples


@dataclass
class _SplitAccumulator:
    """Checks and encodes samples one by one; gathers keys, common fields and statistics."""

    modality: str
    classes: list[str] | None
    keys: set[str] = field(default_factory=set)
    fields: set[str] | None = None
    stats: RunningStats | None = None

    def __post_init__(self) -> None:
        self.stats = RunningStats(self.modality)

    def add(self, sample: dict[str, Any]) -> dict[str, Any]:
        key = self._check_key(sample.get("__key__"))
        out: dict[str, Any] = {"__key__": key}
        for name, value in sample.items():
            if name.startswith("_"):
                continue
            fname = _check_field_name(key, name, out)
            out[fname] = _encode(key, fname, value)
        payload = self._decode_all(key, out)
        self.fields = set(out) - {"__key__"} if self.fields is None else self.fields & set(out)
        self.stats.add(payload)
        return out

    def _check_key(self, key: Any) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"every sample needs a non-empty string '__key__', got {key!r}")
        if "." in key or "/" in key:
            raise ValueError(
                f"sample key {key!r} contains '.' or '/': webdataset splits member names at the "
                "first '.' after the last '/', so use e.g. key.replace('.', '_').replace('/', '_')"
            )
        if key in self.keys:
            raise ValueError(f"duplicate sample key {key!r}: every sample needs its own __key__")
        self.keys.add(key)
        return key

    def _decode_all(self, key: str, sample: dict[str, Any]) -> Any:
        """Decode every field (as verify and training will); return the decoded payload."""
        try:
            payload = payload_field(sample)
        except DecodeError as e:
            raise ValueError(f"sample {key!r}: {e}; give exactly one payload field") from None
        allowed = exts_of(self.modality)  # empty for a modality no decoder declares
        if allowed and field_ext(payload) not in allowed:
            raise ValueError(
                f"sample {key!r}: payload .{payload} is not {self.modality} data (expected one of "
                f"{sorted(allowed)}); pass modality= to say what the data is"
            )
        decoded = {}
        for name, data in sample.items():
            if name == "__key__":
                continue
            try:
                decoded[name] = decode_field(name, data)
            except DecodeError as e:
                raise ValueError(f"sample {key!r}, field .{name}: {e}; fix or drop it") from None
        self._check_label(key, decoded.get("cls"))
        return decoded[payload]

    def _check_label(self, key: str, label: int | None) -> None:
        if label is None or self.classes is None:
            return
        if not 0 <= label < len(self.classes):
            raise ValueError(
                f"sample {key!r}: cls={label} is outside [0, {len(self.classes)}) "
                f"for {len(self.classes)} classes; cls is an index into classes"
            )

    def split_info(self, shards: list[ShardInfo]) -> SplitInfo:
        mean, std, what = self.stats.result()
        return SplitInfo(
            shards=shards,
            samples=sum(s.samples for s in shards),
            fields=sorted(self.fields or ()),
            mean=mean,
            std=std,
            stats=what,
        )


def _check_field_name(key: str, name: str, seen: dict[str, Any]) -> str:
    fname = name.lower()
    if not fname or "/" in fname or fname.startswith(".") or fname.endswith("."):
        raise ValueError(f"sample {key!r}: bad field name {name!r}; use an extension like 'png'")
    if fname in seen:
        raise ValueError(f"sample {key!r}: field {name!r} given twice (field names ignore case)")
    return fname


def _encode(key: str, name: str, value: Any) -> bytes:
    try:
        return encode_field(field_ext(name), value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sample {key!r}, field {name!r}: {e}") from None


# ---------------------------------------------------------------- tars


def _write_tars(
    samples: Iterable[dict[str, Any]], out: Path, split: str, shard_size: int
) -> list[ShardInfo]:
    """Write ``shard_size`` samples per tar; return each shard's name, count, size and sha256."""
    it = iter(samples)
    shards = []
    while True:
        chunk = _peek_chunk(it, shard_size)
        if chunk is None:
            return shards
        name = shard_filename(split, len(shards))
        path = out / name
        with open(path, "wb") as f:
            n = 0
            with TarWriter(f, encoder=False, mtime=SHARD_MTIME) as tw:
                for sample in chunk:
                    tw.write(sample)
                    n += 1
            f.flush()
            os.fsync(f.fileno())
        shards.append(
            ShardInfo(name=name, samples=n, bytes=path.stat().st_size, sha256=sha256_file(path))
        )


def _peek_chunk(it: Iterator[dict[str, Any]], size: int) -> Iterator[dict[str, Any]] | None:
    """The next ``size`` items as an iterator, or None when ``it`` is exhausted (so no empty
    shard is ever written)."""
    first = next(it, None)
    return None if first is None else chain([first], islice(it, size - 1))


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_source(
    spec: str,
    out_dir: str | os.PathLike[str],
    *,
    split: str = "train",
    shard_size: int = 1000,
    shuffle_seed: int | None = 0,
    progress: bool = False,
    kind: str | None = None,
) -> SplitInfo:
    """Write split ``split`` of a registered source (image folder or tar, npz, audio folder or
    tar, ...: :data:`nepa.data.shards.sources.SOURCES`; ``kind`` None recognises it) as shards
    into ``out_dir``."""
    source = open_source(spec, split, kind)
    return write_shards(
        source.samples,
        out_dir,
        split=split,
        shard_size=shard_size,
        modality=source.modality,
        classes=source.classes,
        created={"source": spec, "source_kind": source.kind},
        shuffle_seed=shuffle_seed,
        progress=progress,
    )
