"""``manifest.json``: what a folder of shards holds, and where a config's shard source points.

A shard *source* (one config string) is one of:

- a local folder holding ``manifest.json`` (or the path of the manifest itself);
- a template with ``{name}``, e.g. ``pipe:curl -sf http://host/cifar10/{name}`` or
  ``pipe:aws s3 cp s3://bucket/cifar10/{name} -``: ``{name}`` is replaced by ``manifest.json``
  to read the manifest and by each shard's name to read it;
- a shard list without a manifest: a brace pattern (``/data/train-{000000..000099}.tar``), a URL
  or a ``pipe:`` command, where ``{split}`` is replaced by the split name. Without a manifest the
  per-shard sample counts are unknown, so only the resampled epoch mode can read it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import braceexpand
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from nepa.data.paths import resolve_path

MANIFEST = "manifest.json"
FORMAT = "nepa-shards/1"


class ShardSourceError(ValueError):
    """A shard source that cannot be used as given (missing, no such split, bad manifest)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardInfo(_Model):
    # A plain file name: it is pasted into paths, URLs and ``pipe:`` shell commands, so a
    # manifest from elsewhere must not be able to inject anything.
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
    samples: NonNegativeInt
    bytes: NonNegativeInt
    sha256: str


class SplitInfo(_Model):
    shards: list[ShardInfo]
    samples: NonNegativeInt
    fields: list[str]  # extensions present in every sample, e.g. ["cls", "png"]
    # Per-channel mean/std computed while writing; ``stats`` names the values they describe
    # (nepa.data.shards.stats; None in manifests before 0.2: image pixels scaled to [0, 1]).
    mean: list[float] | None = None
    std: list[float] | None = None
    stats: str | None = None


class Manifest(_Model):
    format: Literal["nepa-shards/1"] = FORMAT
    modality: str  # "image", "audio", "array", or a user's own name
    classes: list[str] | None = None
    splits: dict[str, SplitInfo]
    created: dict[str, Any]  # how the shards were made: source, shard size, shuffle seed, version

    def split(self, name: str, where: str) -> SplitInfo:
        if name not in self.splits:
            raise ShardSourceError(
                f"{where} has no split {name!r}; it has {sorted(self.splits)}. Write it with "
                f"`nepa shards write SOURCE DIR --split {name}`"
            )
        return self.splits[name]


@dataclass(frozen=True)
class ShardList:
    """The shards of one split: ``urls`` as webdataset opens them; ``counts`` per shard (None
    without a manifest)."""

    urls: list[str]
    counts: list[int] | None
    manifest: Manifest | None
    where: str
    fields: list[str] | None = None  # extensions every sample has (from the manifest)

    @property
    def total(self) -> int | None:
        return None if self.counts is None else sum(self.counts)

    def class_names(self, max_label: int) -> list[str]:
        """The manifest's class names, or "0".."max_label" when it has none."""
        if self.manifest is not None and self.manifest.classes:
            return list(self.manifest.classes)
        return [str(i) for i in range(max_label + 1)]


def parse_manifest(text: bytes | str, where: str) -> Manifest:
    try:
        return Manifest.model_validate(json.loads(text))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardSourceError(f"{where} is not valid JSON ({e})") from None
    except ValidationError as e:
        raise ShardSourceError(f"{where} is not a nepa shard manifest ({FORMAT}):\n{e}") from None


def read_manifest(source: str) -> tuple[Manifest, str]:
    """Read the manifest of a source; returns (manifest, template) where ``template`` maps a
    shard name to its URL via ``template.replace("{name}", name)``."""
    if "{name}" in source:
        url = source.replace("{name}", MANIFEST)
        return parse_manifest(_read_url(url), url), source
    path = resolve_path(source)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST} at {path}: point data.source at a folder written by "
            "`nepa shards write`, or give a shard pattern such as /data/train-{000000..000009}.tar"
        )
    return parse_manifest(path.read_bytes(), str(path)), str(path.parent / "{name}")


def has_manifest(source: str) -> bool:
    if "{name}" in source:
        return True
    path = Path(os.path.expanduser(os.path.expandvars(source)))
    return path.suffix == ".json" or path.is_dir()


def resolve_shards(source: str, split: str) -> ShardList:
    """The shards of ``split`` in ``source`` (see the module docstring for the forms)."""
    if has_manifest(source):
        manifest, template = read_manifest(source)
        info = manifest.split(split, source)
        urls = [template.replace("{name}", s.name) for s in info.shards]
        return ShardList(urls, [s.samples for s in info.shards], manifest, source, info.fields)
    pattern = os.path.expanduser(os.path.expandvars(source.replace("{split}", split)))
    urls = list(braceexpand.braceexpand(pattern))
    if urls == [pattern] and not _is_remote(pattern) and not Path(pattern).suffix:
        raise ShardSourceError(
            f"no shard folder at {source!r} (resolved: {Path(pattern).absolute()}); write one "
            f"with `nepa shards write SOURCE {source} --split {split}`, or point data.source at "
            "a folder with manifest.json, a {name} template or a shard pattern"
        )
    local = [u for u in urls if not _is_remote(u)]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        raise ShardSourceError(
            f"{len(missing)} of {len(urls)} shard(s) of {source!r} (split {split!r}) do not "
            f"exist, e.g. {missing[0]}"
        )
    return ShardList(urls, None, None, source)


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def _read_url(url: str) -> bytes:
    from webdataset.gopen import gopen

    try:
        with gopen(url) as stream:
            data = stream.read()
    except Exception as e:  # gopen raises OSError, ValueError or its own errors per scheme
        raise OSError(f"could not read {url}: {type(e).__name__}: {e}") from e
    if not data:
        raise OSError(f"{url} returned nothing (is the URL right? is the server up?)")
    return data
