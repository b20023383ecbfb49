"""Built-in sources for ``nepa shards write``: ImageFolder trees, npz arrays and audio folders.

Each source yields the samples of one split in a sorted, deterministic order (the writer then
shuffles them with a fixed seed) and keeps encoded files as they are (original bytes).

- ``image_folder``: a folder or ``.tar``/``.tar.gz`` with ``[prefix/]<split>/<class>/<image>``;
  ``cls`` indexes the sorted class-folder names of all splits; ``json`` = {"path", "class"}.
- ``npz``: arrays ``x_<split>`` (N, ...) and optional integer labels ``y_<split>`` (N,); uint8
  (N, H, W) or (N, H, W, 1|3) become ``.png`` (modality image), anything else ``.npy`` (array).
- ``audio``: a folder or tar of .wav/.flac/.ogg, either FSDD-named files in one folder
  (``{digit}_{speaker}_{index}.wav``; index 0-4 is the test split, the rest train) or
  ``<split>/<class>/<file>``; classes are the sorted labels.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from nepa.data.paths import resolve_path
from nepa.data.shards.codecs import AUDIO_EXTS, IMAGE_EXTS

SOURCES_HELP = (
    "supported sources: (1) an ImageFolder folder or .tar/.tar.gz: [prefix/]<split>/<class>/"
    "<image>.png|jpg|...; (2) an .npz with arrays x_<split> and y_<split>; (3) a folder or "
    ".tar/.tar.gz of .wav/.flac/.ogg, FSDD-named {digit}_{speaker}_{index}.wav in one folder "
    "or <split>/<class>/<file>; (4) any iterable of samples through "
    "nepa.data.shards.write.write_shards"
)
FSDD_NAME = re.compile(r"^(?P<label>\d+)_(?P<speaker>[A-Za-z0-9-]+)_(?P<index>\d+)$")
FSDD_TEST_INDICES = range(5)  # the official FSDD split: recordings 0-4 of each are the test set

Load = Callable[[], bytes]


@dataclass(frozen=True)
class Source:
    """One split of a source: ``samples`` are writer dicts in a deterministic order."""

    kind: str  # "image_folder", "npz" or "audio"
    modality: str
    classes: list[str] | None
    samples: Iterable[dict[str, Any]]


def open_source(spec: str, split: str) -> Source:
    """Split ``split`` of the source at ``spec`` (a path; ``~`` and ``$VARS`` expand)."""
    path = resolve_path(spec)
    kind = detect_kind(path)
    if kind == "npz":
        return npz_source(path, split)
    if kind == "audio":
        return audio_source(path, split)
    return image_folder_source(path, split)


def detect_kind(path: Path) -> str:
    """``npz`` for an .npz file; ``image_folder`` or ``audio`` for a folder or tar by the first
    image or audio file in it."""
    if path.is_file() and path.suffix.lower() == ".npz":
        return "npz"
    if path.is_dir() or (path.is_file() and tarfile.is_tarfile(path)):
        with closing(iter_files(path, IMAGE_EXTS | AUDIO_EXTS)) as files:
            for rel, _ in files:
                return "image_folder" if _ext(rel) in IMAGE_EXTS else "audio"
        raise ValueError(f"{path} holds no image or audio files; {SOURCES_HELP}")
    raise ValueError(f"cannot tell what {path} holds; {SOURCES_HELP}")


def iter_files(path: Path, exts: frozenset[str]) -> Iterator[tuple[str, Load]]:
    """Yield (relative POSIX path, load) for files with an extension in ``exts``: sorted for a
    folder, in archive order for a tar (streamed; ``load`` is valid until the next item)."""
    if path.is_dir():
        files = sorted(
            (p.relative_to(path).as_posix(), p)
            for p in path.rglob("*")
            if p.suffix[1:].lower() in exts and p.is_file()
        )
        for rel, p in files:
            yield rel, p.read_bytes
        return
    with tarfile.open(path, "r|*") as tf:  # one sequential pass, also over a .tar.gz
        for m in tf:
            if m.isfile() and _ext(m.name) in exts:
                yield m.name.removeprefix("./"), lambda m=m: _read_member(tf, m)


def _read_member(tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(m)
    if f is None:
        raise ValueError(f"cannot read archive member {m.name}")
    return f.read()


def _ext(name: str) -> str:
    return PurePosixPath(name).suffix[1:].lower()


def _key(rel: str) -> str:
    """A sample key from a path below the split folder: no '.' or '/' (webdataset's separators)."""
    return str(PurePosixPath(rel).with_suffix("")).replace("/", "_").replace(".", "_")


def _sorted_labels(labels: Iterable[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others alphabetically."""
    return sorted(set(labels), key=lambda s: (0, int(s), "") if s.isdecimal() else (1, 0, s))


def _collect(
    path: Path, exts: frozenset[str], keep: Callable[[str], bool]
) -> list[tuple[str, Load]]:
    """All (path, load) of ``path``; for a tar, the files ``keep`` wants are read now (the
    stream moves on), the others get a load that must not be called."""
    if path.is_dir():
        return list(iter_files(path, exts))
    out = []
    for rel, load in iter_files(path, exts):
        if keep(rel):
            data = load()
            out.append((rel, lambda data=data: data))
        else:
            out.append((rel, _not_loaded))
    return out


def _first(item: tuple[str, Load]) -> str:
    return item[0]


def _not_loaded() -> bytes:
    raise AssertionError("a tar member outside the requested split was not kept")


def _split_missing(path: Path, split: str, found: Iterable[str], layout: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"no files for split {split!r} in {path} (layout {layout}; splits found: "
        f"{sorted(set(found)) or 'none'})"
    )


# ---------------------------------------------------------------- image folder


def image_folder_source(path: Path, split: str) -> Source:
    """``[prefix/]<split>/<class>/<image>`` in a folder or tar; original bytes, sorted by path."""

    def in_split(rel: str) -> bool:
        parts = PurePosixPath(rel).parts
        return len(parts) >= 3 and parts[-3] == split

    files = _collect(path, IMAGE_EXTS, in_split)
    classes_by_prefix: dict[tuple[str, ...], set[str]] = {}
    for rel, _ in files:
        parts = PurePosixPath(rel).parts
        if len(parts) >= 3:
            classes_by_prefix.setdefault(parts[:-3], set()).add(parts[-2])
    chosen = sorted(((r, load) for r, load in files if in_split(r)), key=_first)
    if not chosen:
        found = (PurePosixPath(r).parts[-3] for r, _ in files if len(PurePosixPath(r).parts) >= 3)
        raise _split_missing(path, split, found, "<split>/<class>/<image>")
    prefixes = {PurePosixPath(rel).parts[:-3] for rel, _ in chosen}
    if len(prefixes) > 1:
        raise ValueError(
            f"split {split!r} appears under several folders in {path}: {sorted(prefixes)}"
        )
    classes = sorted(classes_by_prefix[prefixes.pop()])
    return Source("image_folder", "image", classes, _image_samples(chosen, classes))


def _image_samples(files: list[tuple[str, Load]], classes: list[str]) -> Iterator[dict[str, Any]]:
    index = {c: i for i, c in enumerate(classes)}
    for rel, load in files:
        parts = PurePosixPath(rel).parts
        ext = "jpg" if _ext(rel) == "jpeg" else _ext(rel)
        yield {
            "__key__": _key("/".join(parts[-2:])),
            ext: load(),
            # No .json: the key holds class and file name, and every extra tar member costs
            # the reader ~45 us per sample (a third of a CIFAR-10 sample's read time).
            "cls": index[parts[-2]],
        }


# ---------------------------------------------------------------- npz


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


def audio_source(path: Path, split: str) -> Source:
    """FSDD-named files in one folder, or ``<split>/<class>/<file>``; original bytes."""

    def fsdd_split(rel: str) -> str | None:
        m = FSDD_NAME.match(PurePosixPath(rel).stem)
        return None if m is None else ("test" if int(m["index"]) in FSDD_TEST_INDICES else "train")

    def keep(rel: str) -> bool:
        parts = PurePosixPath(rel).parts
        return fsdd_split(rel) == split or (len(parts) >= 3 and parts[-3] == split)

    files = _collect(path, AUDIO_EXTS, keep)
    one_folder = len({PurePosixPath(rel).parent for rel, _ in files}) == 1
    if one_folder and all(fsdd_split(rel) for rel, _ in files):
        labels = _sorted_labels(FSDD_NAME.match(PurePosixPath(r).stem)["label"] for r, _ in files)
        chosen = sorted(((r, load) for r, load in files if fsdd_split(r) == split), key=_first)
        if not chosen:
            raise _split_missing(path, split, (fsdd_split(r) for r, _ in files), "FSDD")
        return Source("audio", "audio", labels, _fsdd_samples(chosen, labels))
    if not all(len(PurePosixPath(r).parts) >= 3 for r, _ in files):
        raise ValueError(
            f"{path}: audio files must either all be FSDD-named {{digit}}_{{speaker}}_{{index}}"
            ".wav in one folder, or sit in <split>/<class>/<file>"
        )
    labels = _sorted_labels(PurePosixPath(r).parts[-2] for r, _ in files)
    chosen = sorted(((r, ld) for r, ld in files if PurePosixPath(r).parts[-3] == split), key=_first)
    if not chosen:
        raise _split_missing(
            path, split, (PurePosixPath(r).parts[-3] for r, _ in files), "<split>/<class>/<file>"
        )
    return Source("audio", "audio", labels, _audio_folder_samples(chosen, labels))


def _sample_rate(data: bytes, rel: str) -> int:
    import soundfile as sf

    try:
        return int(sf.info(io.BytesIO(data)).samplerate)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise ValueError(f"{rel} is not readable audio ({e}); fix or remove the file") from None


def _fsdd_samples(files: list[tuple[str, Load]], labels: list[str]) -> Iterator[dict[str, Any]]:
    index = {c: i for i, c in enumerate(labels)}
    for rel, load in files:
        m = FSDD_NAME.match(PurePosixPath(rel).stem)
        data = load()
        meta = {"speaker": m["speaker"], "index": int(m["index"]), "path": rel}
        yield {
            "__key__": _key(PurePosixPath(rel).name),
            _ext(rel): data,
            "cls": index[m["label"]],
            "json": {**meta, "sample_rate": _sample_rate(data, rel)},
        }


def _audio_folder_samples(
    files: list[tuple[str, Load]], labels: list[str]
) -> Iterator[dict[str, Any]]:
    index = {c: i for i, c in enumerate(labels)}
    for rel, load in files:
        parts = PurePosixPath(rel).parts
        data = load()
        yield {
            "__key__": _key("/".join(parts[-2:])),
            _ext(rel): data,
            "cls": index[parts[-2]],
            "json": {"path": rel, "class": parts[-2], "sample_rate": _sample_rate(data, rel)},
        }
