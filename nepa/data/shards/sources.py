"""Sources for ``nepa shards write``: a registry of source kinds, and the built-in ones.

Each source yields the samples of one split in a sorted, deterministic order (the writer then
shuffles them with a fixed seed) and keeps encoded files as they are (original bytes).

- ``image_folder``: a folder or ``.tar``/``.tar.gz`` with ``[prefix/]<split>/<class>/<image>``
  (walked by :mod:`nepa.data.folder`); ``cls`` indexes the sorted class-folder names of all
  splits; the key is ``<class>_<file stem>``.
- ``npz``: arrays ``x_<split>`` (N, ...) and optional integer labels ``y_<split>`` (N,); uint8
  (N, H, W) or (N, H, W, 1|3) become ``.png`` (modality image), anything else ``.npy`` (array).
- ``audio``: a folder or tar of .wav/.flac/.ogg, either ``[prefix/]<split>/<class>/<file>`` or
  files in one folder whose names a naming rule reads (:mod:`nepa.data.shards.naming`; FSDD's
  ``{digit}_{speaker}_{index}.wav`` is built in); classes are the sorted labels.

A new kind is one registered function ``(path, split) -> Source``::

    @source("my_kind", modality="video", help="a folder of .mp4 in <split>/<class>/")
    def my_source(path: Path, split: str) -> Source: ...

``modality`` lets a folder or tar be recognised by its first file with an extension of that
modality in the decoder registry; ``suffixes`` recognises a single file by its extension.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from nepa.data.decode import exts_of
from nepa.data.folder import (
    FolderSplit,
    Load,
    file_ext,
    in_split,
    iter_files,
    scan,
    split_layout,
)
from nepa.data.paths import resolve_path
from nepa.data.shards import fsdd as _fsdd  # noqa: F401  (registers the FSDD naming rule)
from nepa.data.shards.naming import NAMING_RULES, Named, NamingRule
from nepa.registry import Registry


@dataclass(frozen=True)
class Source:
    """One split of a source: ``samples`` are writer dicts in a deterministic order."""

    kind: str  # the registered name, recorded in the manifest
    modality: str
    classes: list[str] | None
    samples: Iterable[dict[str, Any]]


@dataclass(frozen=True)
class SourceKind:
    """How to open one kind of source and how to recognise it (see the module docstring)."""

    open: Callable[[Path, str], Source]
    help: str
    suffixes: frozenset[str] = frozenset()
    modality: str | None = None


SOURCES: Registry[SourceKind] = Registry("shard source kind")


def source(
    name: str, *, help: str, suffixes: Iterable[str] = (), modality: str | None = None
) -> Callable[[Callable[[Path, str], Source]], Callable[[Path, str], Source]]:
    """Decorator: register ``fn(path, split) -> Source`` as source kind ``name``."""

    def deco(fn: Callable[[Path, str], Source]) -> Callable[[Path, str], Source]:
        SOURCES.register(name)(SourceKind(fn, help, frozenset(suffixes), modality))
        return fn

    return deco


def sources_help() -> str:
    kinds = "; ".join(f"({i}) {SOURCES.get(n).help}" for i, n in enumerate(SOURCES.names(), 1))
    return (
        f"supported sources: {kinds}; naming rules: {', '.join(NAMING_RULES.names())}; or any "
        "iterable of samples through nepa.data.shards.write.write_shards"
    )


def open_source(spec: str, split: str, kind: str | None = None) -> Source:
    """Split ``split`` of the source at ``spec`` (a path; ``~`` and ``$VARS`` expand), of
    source kind ``kind`` (default: recognised by :func:`detect_kind`)."""
    path = resolve_path(spec)
    return SOURCES.get(kind or detect_kind(path)).open(path, split)


def detect_kind(path: Path) -> str:
    """A single file by its extension (``.npz``); a folder or tar by its first file whose
    extension belongs to a source kind's modality (an image -> ``image_folder``)."""
    kinds = [(n, SOURCES.get(n)) for n in SOURCES.names()]
    for name, k in kinds:
        if path.is_file() and file_ext(path.name) in k.suffixes:
            return name
    if not path.is_dir() and not (path.is_file() and tarfile.is_tarfile(path)):
        raise ValueError(f"cannot tell what {path} holds; {sources_help()}")
    by_ext = {e: n for n, k in reversed(kinds) if k.modality for e in exts_of(k.modality)}
    with closing(iter_files(path, frozenset(by_ext))) as files:
        for rel, _ in files:
            return by_ext[file_ext(rel)]
    modalities = sorted({k.modality for _, k in kinds if k.modality})
    raise ValueError(f"{path} holds no {' or '.join(modalities)} files; {sources_help()}")


def _key(rel: str) -> str:
    """A sample key from a path below the split folder: no '.' or '/' (webdataset's separators)."""
    return str(PurePosixPath(rel).with_suffix("")).replace("/", "_").replace(".", "_")


def _sorted_labels(labels: Iterable[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others alphabetically."""
    return sorted(set(labels), key=lambda s: (0, int(s), "") if s.isdecimal() else (1, 0, s))


def _keep(path: Path) -> Callable[[str, Load], Load]:
    """``take`` for :func:`~nepa.data.folder.scan` that keeps a file's bytes for later: a
    folder's loads stay valid, a tar member is read during the pass (the stream moves on)."""
    if path.is_dir():
        return lambda rel, load: load

    def read_now(rel: str, load: Load) -> Load:
        data = load()
        return lambda: data

    return read_now


def _split_missing(path: Path, split: str, found: Iterable[str], layout: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"no files for split {split!r} in {path} (layout {layout}; splits found: "
        f"{sorted(set(found)) or 'none'})"
    )


# ---------------------------------------------------------------- image folder


@source(
    "image_folder",
    modality="image",
    help="an ImageFolder folder or .tar/.tar.gz: [prefix/]<split>/<class>/<image>.png|jpg|...",
)
def image_folder_source(path: Path, split: str) -> Source:
    """``[prefix/]<split>/<class>/<image>`` in a folder or tar; original bytes, sorted by path."""
    rels, loads = scan(path, exts_of("image"), lambda rel: in_split(rel, split), _keep(path))
    layout = split_layout(path, rels, split)
    return Source("image_folder", "image", layout.classes, _image_samples(layout, loads))


def _image_samples(layout: FolderSplit, loads: dict[str, Load]) -> Iterator[dict[str, Any]]:
    index = layout.labels()
    for rel, cls in layout.files:
        ext = "jpg" if file_ext(rel) == "jpeg" else file_ext(rel)
        yield {
            "__key__": _key("/".join(PurePosixPath(rel).parts[-2:])),
            ext: loads[rel](),
            # No .json: the key holds class and file name, and every extra tar member costs
            # the reader ~45 us per sample (a third of a CIFAR-10 sample's read time).
            "cls": index[cls],
        }


# ---------------------------------------------------------------- npz


@source("npz", suffixes=("npz",), help="an .npz with arrays x_<split> and y_<split>")
def npz_source(path: Path, split: str) -> Source:
    """Arrays ``x_<split>`` (N, ...) and optional int labels ``y_<split>`` (N,); key
    ``<split>_<index:06d>``."""
    with np.load(path, allow_pickle=False) as f:
        xk, yk = f"x_{split}", f"y_{split}"
        if xk not in f.files:
            raise ValueError(
                f"{path} has no array {xk!r} for split {split!r}; arrays: {', '.join(f.files)} "
                "(an npz source needs x_<split> and optionally y_<split>)"
            )
        x = f[xk]
        y = _npz_labels(f, yk, len(x), path) if yk in f.files else None
        classes = _npz_classes(f, path)
    ext = "png" if _is_png_array(x) else "npy"
    modality = "image" if ext == "png" else "array"
    return Source(
        "npz", modality, classes if y is not None else None, _npz_samples(x, y, ext, split)
    )


def _is_png_array(x: np.ndarray) -> bool:
    return x.dtype == np.uint8 and (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3)))


def _npz_labels(f: Any, yk: str, n: int, path: Path) -> np.ndarray:
    y = f[yk]
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
        raise ValueError(
            f"{path}: {yk!r} must hold one integer class label per sample, shape ({n},); got "
            f"{y.dtype} {y.shape}"
        )
    if n and y.min() < 0:
        raise ValueError(f"{path}: {yk!r} has negative labels; labels index the classes from 0")
    return y


def _npz_classes(f: Any, path: Path) -> list[str] | None:
    """``classes`` if the npz has it, else "0".."K-1" for the largest label over all y_*."""
    if "classes" in f.files:
        return [str(c) for c in f["classes"]]
    ys = [f[k] for k in f.files if k.startswith("y_") and np.issubdtype(f[k].dtype, np.integer)]
    if not ys:
        return None
    return [str(i) for i in range(max(int(y.max(initial=-1)) for y in ys) + 1)]


def _npz_samples(
    x: np.ndarray, y: np.ndarray | None, ext: str, split: str
) -> Iterator[dict[str, Any]]:
    for i in range(len(x)):
        sample: dict[str, Any] = {"__key__": f"{split}_{i:06d}", ext: x[i]}
        if y is not None:
            sample["cls"] = int(y[i])
        yield sample


# ---------------------------------------------------------------- audio


@source(
    "audio",
    modality="audio",
    help="a folder or .tar/.tar.gz of .wav/.flac/.ogg in [prefix/]<split>/<class>/<file>, or "
    "in one folder named by a naming rule (e.g. FSDD's {digit}_{speaker}_{index}.wav)",
)
def audio_source(path: Path, split: str, naming: NamingRule | None = None) -> Source:
    """``[prefix/]<split>/<class>/<file>``, or files in one folder that ``naming`` (default:
    the first registered naming rule that names every file) gives a split and a label;
    original bytes, sorted by path, with a ``.json`` of path, sample rate and the rule's meta."""
    rules = (
        [(getattr(naming, "__name__", "naming rule"), naming)]
        if naming is not None
        else [(n, NAMING_RULES.get(n)) for n in NAMING_RULES]
    )

    def want(rel: str) -> bool:
        return in_split(rel, split) or any(_named_split(r, rel) == split for _, r in rules)

    rels, loads = scan(path, exts_of("audio"), want, _keep(path))
    one_folder = len({PurePosixPath(rel).parent for rel in rels}) == 1
    for name, rule in rules if one_folder else ():
        named = {rel: rule(rel) for rel in rels}
        if all(named.values()):
            return _named_source(path, split, named, loads, name)
    if not all(len(PurePosixPath(r).parts) >= 3 for r in rels):
        raise ValueError(
            f"{path}: audio files must either all sit in one folder and follow a naming rule "
            f"({', '.join(NAMING_RULES.names())}), or sit in <split>/<class>/<file>"
        )
    layout = split_layout(path, rels, split, order=_sorted_labels)
    return Source("audio", "audio", layout.classes, _audio_folder_samples(layout, loads))


def _named_split(rule: NamingRule, rel: str) -> str | None:
    named = rule(rel)
    return None if named is None else named.split


def _named_source(
    path: Path, split: str, named: dict[str, Named | None], loads: dict[str, Load], rule: str
) -> Source:
    labels = _sorted_labels(n.label for n in named.values() if n is not None)
    chosen = sorted(
        ((rel, n) for rel, n in named.items() if n is not None and n.split == split),
        key=lambda t: t[0],
    )
    if not chosen:
        raise _split_missing(path, split, (n.split for n in named.values() if n), rule)
    return Source("audio", "audio", labels, _named_samples(chosen, labels, loads))


def _named_samples(
    chosen: list[tuple[str, Named]], labels: list[str], loads: dict[str, Load]
) -> Iterator[dict[str, Any]]:
    index = {c: i for i, c in enumerate(labels)}
    for rel, named in chosen:
        data = loads[rel]()
        yield {
            "__key__": _key(PurePosixPath(rel).name),
            file_ext(rel): data,
            "cls": index[named.label],
            "json": {"path": rel, **named.meta, "sample_rate": _sample_rate(data, rel)},
        }


def _audio_folder_samples(layout: FolderSplit, loads: dict[str, Load]) -> Iterator[dict[str, Any]]:
    index = layout.labels()
    for rel, cls in layout.files:
        data = loads[rel]()
        yield {
            "__key__": _key("/".join(PurePosixPath(rel).parts[-2:])),
            file_ext(rel): data,
            "cls": index[cls],
            "json": {"path": rel, "class": cls, "sample_rate": _sample_rate(data, rel)},
        }


def _sample_rate(data: bytes, rel: str) -> int:
    import soundfile as sf

    try:
        return int(sf.info(io.BytesIO(data)).samplerate)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise ValueError(f"{rel} is not readable audio ({e}); fix or remove the file") from None
