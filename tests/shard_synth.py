"""Synthetic image shards for stream tests: sample ``i`` is a flat 8x8 PNG and ``.cls`` = ``i``.

Written with webdataset's TarWriter directly (independent of nepa's writer under test).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import webdataset as wds

from nepa.data.shards.codecs import encode_png_array
from nepa.data.shards.manifest import Manifest, ShardInfo, SplitInfo


def _bad_sample(kind: str, i: int, size: int) -> dict:
    """A sample of the given bad kind: undecodable png, 1 channel instead of 3, or no payload."""
    if kind == "decode":
        return {"png": b"\x89PNG garbage"}
    if kind == "shape":
        return {"png": encode_png_array(np.zeros((size, size), dtype=np.uint8))}
    if kind == "missing":
        return {"txt": b"no image here"}
    raise ValueError(kind)


def make_shards(
    root: Path,
    counts: list[int],
    split: str = "train",
    size: int = 8,
    channels: int = 3,
    bad: dict[int, str] | None = None,
    extra: dict[int, dict[str, bytes]] | None = None,
) -> Path:
    """Write ``len(counts)`` shards holding ``counts[k]`` samples each; ids run 0..sum-1.

    ``bad`` maps sample ids to a bad kind ("decode", "shape", "missing") written instead;
    ``extra`` adds members to some samples (e.g. ``{5: {"pyd": b"..."}}``)."""
    bad, extra = bad or {}, extra or {}
    root.mkdir(parents=True, exist_ok=True)
    infos, i = [], 0
    for k, n in enumerate(counts):
        name = f"{split}-{k:06d}.tar"
        with wds.TarWriter(str(root / name), encoder=False, mtime=0) as w:
            for _ in range(n):
                px = np.full((size, size, channels), i % 251, dtype=np.uint8)
                payload = (
                    _bad_sample(bad[i], i, size) if i in bad else {"png": encode_png_array(px)}
                )
                w.write(
                    {"__key__": f"s{i:06d}", **payload, "cls": str(i).encode(), **extra.get(i, {})}
                )
                i += 1
        data = (root / name).read_bytes()
        infos.append(
            ShardInfo(
                name=name, samples=n, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
            )
        )
    split_info = SplitInfo(
        shards=infos,
        samples=sum(counts),
        fields=["cls", "png"],
        mean=[0.5] * channels,
        std=[0.25] * channels,
    )
    manifest_path = root / "manifest.json"
    splits = {}
    if manifest_path.exists():
        splits = dict(Manifest.model_validate_json(manifest_path.read_text()).splits)
    splits[split] = split_info
    m = Manifest(modality="image", classes=None, splits=splits, created={"by": "tests/synth"})
    manifest_path.write_text(m.model_dump_json(indent=1))
    return root


def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def take(data, n: int, *, rank=0, world=1, workers=0, start=0, batch=16, accum=1) -> list:
    """The first ``n`` micro-batches ``(batch, meta)`` of a shard dataset's training loader
    (``batch`` a dict of tensors)."""
    loader = data.make_train_loader(
        global_batch=batch,
        accum=accum,
        rank=rank,
        world=world,
        workers=workers,
        seed=7,
        start_micro=start,
        pin_memory=False,
    )
    it = iter(loader)
    return [next(it) for _ in range(n)]


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``{relative path: bytes}`` below ``root`` (a source folder for a test)."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root
