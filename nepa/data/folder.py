"""Read one split of an ImageFolder tree, a directory or a ``.tar``/``.tar.gz`` archive of one.

Layout: ``[prefix/]<split>/<class>/<file>``. Classes are the sorted class-folder names over all
splits (so labels agree between splits). Every image is decoded once into uint8 HWC pixels and
cached as ``.npy`` files (see :mod:`nepa.data.cache`); undecodable files are skipped, counted
and logged once.
"""

from __future__ import annotations

import functools
import logging
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from nepa.data.cache import Arrays, load_or_build
from nepa.data.paths import file_fingerprint, stable_hash

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp")
_CACHE_FILES = ("pixels", "shapes", "labels", "classes", "n_skipped")
_FORMAT = "imagefolder-v1"


@dataclass(frozen=True)
class DecodedSplit:
    """One split in memory: ``images`` is (N, H, W, C) uint8, or a list of (H, W, C) arrays when
    sizes differ; ``labels`` (N,) int64 indexes ``classes``."""

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray
    classes: list[str]
    n_skipped: int


def decode(data: bytes) -> np.ndarray:
    """Decode an encoded image to (H, W, C) uint8 with its own channel count (gray stays C=1)."""
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    img_CHW = decode_image(raw, mode=ImageReadMode.UNCHANGED)
    if img_CHW.dtype != torch.uint8 or img_CHW.ndim != 3:
        raise ValueError(
            f"expected one 8-bit image, got {img_CHW.dtype} of shape {tuple(img_CHW.shape)}"
        )
    return img_CHW.permute(1, 2, 0).numpy()


def read_image_folder(root: Path, split: str) -> DecodedSplit:
    """Decode (or load from the cache) split ``split`` of the tree or archive at ``root``."""
    if not root.is_dir() and not tarfile.is_tarfile(root):
        raise ValueError(f"{root} is neither a folder nor a .tar/.tar.gz archive of images")
    files = _dir_files(root) if root.is_dir() else None
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
    return _source_key(root, _dir_files(root) if root.is_dir() else None, split)


def _source_key(root: Path, files: list[tuple[str, Path]] | None, split: str) -> str:
    if files is None:
        return file_fingerprint(root, split, _FORMAT)
    listing = (f"{rel}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for rel, p in files)
    return stable_hash(str(root), *listing, split, _FORMAT)


# ---------------------------------------------------------------- decoding


def _dir_files(root: Path) -> list[tuple[str, Path]]:
    return sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def _iter_encoded(
    root: Path, files: list[tuple[str, Path]] | None
) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Yield (member path, read) for image files; ``read`` is valid until the next item."""
    if files is not None:
        for rel, p in files:
            yield rel, p.read_bytes
        return
    with tarfile.open(root, "r|*") as tf:  # streaming: one sequential pass over a .tar.gz
        for m in tf:
            if m.isfile() and PurePosixPath(m.name).suffix.lower() in IMAGE_EXTENSIONS:
                yield m.name, lambda m=m: _read_member(tf, m)


def _read_member(tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(m)
    if f is None:
        raise ValueError("unreadable archive member")
    return f.read()


def _decode_split(root: Path, files: list[tuple[str, Path]] | None, split: str) -> Arrays:
    """Decode every image of ``split``; returns the cache arrays."""
    log.info("decoding split %r of %s (once; cached afterwards)", split, root)
    by_prefix: dict[tuple[str, ...], set[str]] = {}
    found: list[tuple[tuple[str, ...], str, str, np.ndarray]] = []
    skipped: list[str] = []
    splits_seen: set[str] = set()
    for name, read in _iter_encoded(root, files):
        parts = PurePosixPath(name.removeprefix("./")).parts
        if len(parts) < 3:
            continue
        prefix, sp, cls = parts[:-3], parts[-3], parts[-2]
        splits_seen.add(sp)
        by_prefix.setdefault(prefix, set()).add(cls)
        if sp != split:
            continue
        try:
            found.append((prefix, cls, name, decode(read())))
        except (RuntimeError, ValueError) as e:
            skipped.append(f"{name} ({e})")
    return _assemble(root, split, found, skipped, by_prefix, splits_seen)


def _assemble(
    root: Path,
    split: str,
    found: list[tuple[tuple[str, ...], str, str, np.ndarray]],
    skipped: list[str],
    by_prefix: dict[tuple[str, ...], set[str]],
    splits_seen: set[str],
) -> Arrays:
    if not found:
        if skipped:
            raise ValueError(
                f"all {len(skipped)} images of split {split!r} in {root} failed to decode, e.g. {skipped[0]}"
            )
        raise FileNotFoundError(
            f"no images for split {split!r} in {root}; expected {split}/<class>/<image> "
            f"(splits found: {sorted(splits_seen) or 'none'})"
        )
    prefixes = {p for p, *_ in found}
    if len(prefixes) > 1:
        raise ValueError(
            f"split {split!r} appears under several folders in {root}: {sorted(prefixes)}"
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
    classes = sorted(by_prefix[prefixes.pop()])
    index = {c: i for i, c in enumerate(classes)}
    found.sort(key=lambda t: (index[t[1]], t[2]))
    shapes = np.array([a.shape for *_, a in found], dtype=np.int64)  # (N, 3)
    return {
        "pixels": np.concatenate([a.reshape(-1) for *_, a in found]),
        "shapes": shapes,
        "labels": np.array([index[c] for _, c, *_ in found], dtype=np.int64),
        "classes": np.array(classes, dtype=np.str_),
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
