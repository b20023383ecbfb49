"""Re-writing a split replaces it only once the new one is complete (issue 11, point 6): an
interrupted re-write leaves the old split whole and listed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from nepa.data.shards.manifest import Manifest
from nepa.data.shards.write import write_shards


def _samples(n: int, value: int, interrupt_at: int | None = None):
    for i in range(n):
        if i == interrupt_at:
            raise KeyboardInterrupt
        yield {"__key__": f"s{i:04d}", "npy": np.full((2, 3), value, np.float32), "cls": i % 2}


def _state(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def test_an_interrupted_rewrite_keeps_the_old_split(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_shards(_samples(30, 1), out, shard_size=10, modality="array", classes=["a", "b"])
    before = _state(out)
    with pytest.raises(KeyboardInterrupt):
        write_shards(
            _samples(50, 2, interrupt_at=25),
            out,
            shard_size=10,
            modality="array",
            classes=["a", "b"],
        )
    assert _state(out) == before  # the old shards and manifest, and nothing else
    info = write_shards(_samples(50, 2), out, shard_size=10, modality="array", classes=["a", "b"])
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    assert manifest.splits["train"].samples == 50 == info.samples
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        *[f"train-{i:06d}.tar" for i in range(5)],
    ]
    for shard in manifest.splits["train"].shards:
        assert hashlib.sha256((out / shard.name).read_bytes()).hexdigest() == shard.sha256
