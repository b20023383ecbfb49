"""ImageFolder trees, as a directory or a ``.tar``/``.tar.gz`` archive of one: the one walker
(used by :func:`read_image_folder` and by ``nepa shards write``) and the cached reader.

Layout: ``[prefix/]<split>/<class>/<file>``. Classes are the sorted class-folder names over all
splits under the prefix that holds the split (so labels agree between splits). Files are picked
by extension; which extensions are images is the decoder registry's to say
(:func:`nepa.data.decode.exts_of`).

:func:`read_image_folder` decodes every image once into uint8 HWC pixels and caches them as
``.npy`` files (see :mod:`nepa.data.cache`); undecodable files are skipped, counted and logged.
"""

from __future__ import annotations

import functools
import logging
import tarfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

import numpy as np

from nepa.data.cache import Arrays, load_or_build
from nepa.data.decode import DecodeError, decode_bytes, exts_of
from nepa.data.paths import file_fingerprint, stable_hash

log = logging.getLogger(__name__)

T = TypeVar("T")
Load = Callable[[], bytes]  # the bytes of one file
_CACHE_FILES = ("pixels", "shapes", "labels", "classes", "n_skipped")
_FORMAT = "imagefolder-v1"


# ---------------------------------------------------------------- the walker


def file_ext(name: str) -> str:
    """``"a/b.JPG"`` -> ``"jpg"``."""
    return PurePosixPath(name).suffix[1:].lower()


def list_folder(root: Path, exts: Collection[str]) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of the files below ``root`` with an extension in ``exts``,
    sorted by relative path."""
    return sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*")
        if p.suffix[1:].lower() in exts and p.is_file()
    )


def iter_files(
    root: Path, exts: Collection[str], files: list[tuple[str, Path]] | None = None
) -> Iterator[tuple[str, Load]]:
    """Yield (relative POSIX path, load) for the files with an extension in ``exts``: sorted
    for a folder (``files``: its listing, if already made), in archive order for a tar, streamed
    in one pass (also over a .tar.gz; a member's ``load`` is valid until the next item)."""
    if root.is_dir():
        for rel, p in list_folder(root, exts) if files is None else files:
            yield rel, p.read_bytes
        return
    with tarfile.open(root, "r|*") as tf:
        for m in tf:
            if m.isfile() and file_ext(m.name) in exts:
                yield m.name.removeprefix("./"), functools.partial(_read_member, tf, m)


def _read_member(tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(m)
    if f is None:
        raise ValueError(f"cannot read archive member {m.name}")
    return f.read()


def scan(
    root: Path,
    exts: Collection[str],
    want: Callable[[str], bool],
    take: Callable[[str, Load], T],
    files: list[tuple[str, Path]] | None = None,
) -> tuple[list[str], dict[str, T]]:
    """One pass over ``root``: the relative paths of all files with an extension in ``exts``,
    and ``take(path, load)`` of those ``want`` selects, called during the pass (so a tar is read
    once and a member's bytes need not outlive ``take``)."""
    rels: list[str] = []
    taken: dict[str, T] = {}
    for rel, load in iter_files(root, exts, files):
        rels.append(rel)
        if want(rel):
            taken[rel] = take(rel, load)
    return rels, taken


def in_split(rel: str, split: str) -> bool:
    """Whether ``rel`` is ``[prefix/]<split>/<class>/<file>``."""
    parts = PurePosixPath(rel).parts
    return len(parts) >= 3 and parts[-3] == split


@dataclass(frozen=True)
class FolderSplit:
    """One split of a ``[prefix/]<split>/<class>/<file>`` tree: ``files`` are its (relative
    path, class) sorted by path; ``classes`` the class folders of every split under its prefix."""

    classes: list[str]
    files: list[tuple[str, str]]

    def labels(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}


def split_layout(
    root: Path,
    rels: Iterable[str],
    split: str,
    order: Callable[[Iterable[str]], list[str]] = sorted,
) -> FolderSplit:
    """Split ``split`` of the files ``rels`` (relative paths below ``root``); ``order`` sorts
    the class names. Raises if the split is missing or sits under several prefixes."""
    classes_by_prefix: dict[tuple[str, ...], set[str]] = {}
    splits_seen: set[str] = set()
    chosen: list[tuple[str, str]] = []
    for rel in rels:
        parts = PurePosixPath(rel).parts
        if len(parts) < 3:
            continue
        classes_by_prefix.setdefault(parts[:-3], set()).add(parts[-2])
        splits_seen.add(parts[-3])
        if parts[-3] == split:
            chosen.append((rel, parts[-2]))
    if not chosen:
        raise FileNotFoundError(
            f"no files for split {split!r} in {root}; expected [prefix/]{split}/<class>/<file> "
            f"(splits found: {sorted(splits_seen) or 'none'})"
        )
    prefixes = {PurePosixPath(rel).parts[:-3] for rel, _ in chosen}
    if len(prefixes) > 1:
        raise ValueError(
            f"split {split!r} appears under several folders in {root}: {sorted(prefixes)}"
        )
    return FolderSplit(order(classes_by_prefix[prefixes.pop()]), sorted(chosen))


# ---------------------------------------------------------------- the cached reader


@dataclass(frozen=True)
class DecodedSplit:
    """One split in memory: ``images`` is (N, H, W, C) uint8, or a list of (H, W, C) arrays when
    sizes differ; ``labels`` (N,) int64 indexes ``classes``."""

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray
    classes: list[str]
    n_skipped: int


def decode(data: bytes, ext: str = "png") -> np.ndarray:
    """Decode an encoded image with the decoder registered for ``ext`` to (H, W, C) uint8 with
    its own channel count (gray stays C=1); raises :class:`~nepa.data.decode.DecodeError`."""
    return decode_bytes(ext, data).permute(1, 2, 0).numpy()


def read_image_folder(root: Path, split: str) -> DecodedSplit:
    """Decode (or load from the cache) split ``split`` of the tree or archive at ``root``."""
    if not root.is_dir() and not tarfile.is_tarfile(root):
        raise ValueError(f"{root} is neither a folder nor a .tar/.tar.gz archive of images")
    files = list_folder(root, exts_of("image")) if root.is_dir() else None
    name = f"{_FORMAT}-{root.name}-{split}-{_source_key(root, files, split)}"
    build = functools.partial(_decode_split, root, files, split)
    decoded = _from_arrays(load_or_build(name, _CACHE_FILES, build))
    if decoded.n_skipped:
        log.info(
            "split %r of %s: %d undecodable image(s) were skipped", split, root, decoded.n_skipped
        )
    return decoded


def source_key(root: Path, split: str) -> str:
    """Cache key of one split: archive path + size + mtime, or every file's path + size + mtime."""
    return _source_key(root, list_folder(root, exts_of("image")) if root.is_dir() else None, split)


def _source_key(root: Path, files: list[tuple[str, Path]] | None, split: str) -> str:
    if files is None:
        return file_fingerprint(root, split, _FORMAT)
    listing = (f"{rel}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for rel, p in files)
    return stable_hash(str(root), *listing, split, _FORMAT)


def _decode_split(root: Path, files: list[tuple[str, Path]] | None, split: str) -> Arrays:
    """Decode every image of ``split``; returns the cache arrays."""
    log.info("decoding split %r of %s (once; cached afterwards)", split, root)
    skipped: list[str] = []

    def take(rel: str, load: Load) -> np.ndarray | None:
        try:
            return decode(load(), file_ext(rel))
        except DecodeError as e:
            skipped.append(f"{rel} ({e})")
            return None

    rels, images = scan(root, exts_of("image"), lambda rel: in_split(rel, split), take, files)
    layout = split_layout(root, rels, split)
    found = [(cls, rel, images[rel]) for rel, cls in layout.files if images[rel] is not None]
    if not found:
        raise ValueError(
            f"all {len(skipped)} images of split {split!r} in {root} failed to decode, e.g. {skipped[0]}"
        )
    if skipped:
        log.warning(
            "skipped %d undecodable image(s) of %d in split %r of %s, e.g. %s",
            len(skipped),
            len(skipped) + len(found),
            split,
            root,
            "; ".join(skipped[:3]),
        )
    index = layout.labels()
    found.sort(key=lambda t: (index[t[0]], t[1]))
    shapes = np.array([a.shape for *_, a in found], dtype=np.int64)  # (N, 3)
    return {
        "pixels": np.concatenate([a.reshape(-1) for *_, a in found]),
        "shapes": shapes,
        "labels": np.array([index[c] for c, *_ in found], dtype=np.int64),
        "classes": np.array(layout.classes, dtype=np.str_),
        "n_skipped": np.array(len(skipped), dtype=np.int64),
    }


def _from_arrays(arrays: Arrays) -> DecodedSplit:
    """Rebuild images from the flat cache: one (N, H, W, C) view when all shapes agree."""
    pixels, shapes = arrays["pixels"], arrays["shapes"]
    if (shapes == shapes[0]).all():
        images: np.ndarray | list[np.ndarray] = pixels.reshape(len(shapes), *shapes[0])
    else:
        ends = np.cumsum(shapes.prod(axis=1))
        images = [pixels[e - s.prod() : e].reshape(s) for e, s in zip(ends, shapes, strict=True)]
    return DecodedSplit(
        images=images,
        labels=arrays["labels"].astype(np.int64),
        classes=[str(c) for c in arrays["classes"]],
        n_skipped=int(arrays["n_skipped"]),
    )
