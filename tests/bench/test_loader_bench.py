"""``nepa bench loader`` end to end on a tiny CIFAR-like archive (figures are not judged here)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_png

from nepa.bench.loader import LoaderBenchConfig, run_loader_bench


def _archive(path: Path, per_class: int = 24) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                for i in range(per_class):
                    px = torch.from_numpy(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8))
                    data = encode_png(px).numpy().tobytes()
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.png")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return path


def test_loader_bench_prepares_once_and_reports_rates(tmp_path: Path) -> None:
    cfg = LoaderBenchConfig(
        archive=str(_archive(tmp_path / "tiny.tar.gz")),
        work=str(tmp_path / "work"),
        workers=(0, 1),
        batch=8,
        batches=2,
        warmup=1,
        rounds=1,
        model_steps=1,
    )
    lines: list[str] = []
    result = run_loader_bench(cfg, log=lines.append)
    assert [r["workers"] for r in result["loaders"]] == [0, 1]
    for row in result["loaders"]:
        assert row["shards"] > 0 and row["imagefolder"] > 0
        assert row["ratio"] == row["shards"] / row["imagefolder"]
    assert (
        result["loader_vs_model"] == result["loaders"][1]["shards"] / result["model_samples_per_s"]
    )
    assert len(lines) == 3 and "target >= 1.5x" in lines[0]
    manifest = tmp_path / "work" / "shards" / "manifest.json"
    assert len(list((tmp_path / "work" / "png" / "train").rglob("*.png"))) == 48
    stamp = manifest.stat().st_mtime_ns
    run_loader_bench(cfg, log=lines.append)  # the second run reuses the tree and the shards
    assert manifest.stat().st_mtime_ns == stamp
