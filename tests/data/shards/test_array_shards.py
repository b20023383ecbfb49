"""``array_shards``: .npy samples streamed with shape checks, and a split read for evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from shard_synth import take

from nepa.batch import FieldSpec
from nepa.data.base import build_dataset
from nepa.data.shards.array import ArrayShardsConfig
from nepa.data.shards.health import DataHealth
from nepa.data.shards.write import write_shards

SHAPE = (6, 16)


def _write(root: Path, n: int, wrong: set[int], split: str = "train") -> Path:
    rng = np.random.default_rng(0)
    samples = (
        {
            "__key__": f"w{i:05d}",
            "npy": rng.normal(size=(6, 15) if i in wrong else SHAPE).astype(np.float32) + i,
            "cls": i % 3,
        }
        for i in range(n)
    )
    write_shards(
        samples, root, split=split, shard_size=16, modality="array", classes=["a", "b", "c"]
    )
    return root


def test_wrong_shapes_are_counted_and_skipped(tmp_path: Path) -> None:
    src = _write(tmp_path / "arr", 64, wrong={5, 40})
    cfg = ArrayShardsConfig(source=str(src), shape=SHAPE, mean=(1.0,) * 6, std=(2.0,) * 6)
    data = build_dataset(cfg, split="train", train=True)
    assert cfg.fields == {"signal": FieldSpec(SHAPE), "label": FieldSpec((), "int64")}
    health = DataHealth(1.0)
    for batch, meta in take(data, 4):  # one epoch
        assert set(batch) == {"signal", "label"}
        x, y = batch["signal"], batch["label"]
        assert x.shape == (16, *SHAPE) and x.dtype == torch.float32
        assert y.shape == (16,) and y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2}
        health.update(meta["good"], meta["bad"])
    assert health.by_kind() == {"shape": 2} and health.good == 62


def test_eval_split_in_memory_with_normalisation(tmp_path: Path) -> None:
    src = _write(tmp_path / "arr", 20, wrong={3}, split="test")
    cfg = ArrayShardsConfig(source=str(src), shape=SHAPE, mean=(1.0,) * 6, std=(2.0,) * 6)
    ds = build_dataset(cfg, split="test", train=False)
    assert len(ds) == 19 and ds.num_classes == 3 and ds.classes == ["a", "b", "c"]
    sample = ds[3]  # the 4th good sample is sample 4 (sample 3 was skipped)
    assert set(sample) == {"signal", "label"}
    x, y = sample["signal"], sample["label"]
    assert y == 4 % 3 and abs(float(x.mean()) - (4 + 0 - 1) / 2) < 0.6
    assert ds.labels.tolist() == [i % 3 for i in range(20) if i != 3]


def test_field_name_is_configurable(tmp_path: Path) -> None:
    src = _write(tmp_path / "arr", 20, wrong=set(), split="test")
    cfg = ArrayShardsConfig(source=str(src), shape=SHAPE, field="imu")
    assert set(cfg.fields) == {"imu", "label"}
    ds = build_dataset(cfg, split="test", train=False)
    assert set(ds[0]) == {"imu", "label"} and ds[0]["imu"].shape == SHAPE


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="one per channel"):
        ArrayShardsConfig(source="x", shape=SHAPE, mean=(0.0,) * 5)
    with pytest.raises(ValueError, match="exact epoch is the whole split"):
        ArrayShardsConfig(source="x", shape=SHAPE, epoch_steps=3)
