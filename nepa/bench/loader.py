"""``nepa bench loader``: CIFAR-10 training batches from shards vs torchvision's ImageFolder,
and both against the demo model's training step.

Both loaders decode PNGs and apply the recipe's augmentation (RandomResizedCrop(32, scale
0.35-1) + horizontal flip + ToDtype + Normalize) into batches of ``batch`` on ``workers``
DataLoader workers:

- ``shards``: ``recipes/cifar10.py:shards``'s data config streaming the shards that
  ``nepa shards write`` makes from the archive (exact epochs, shuffle buffer as in the recipe);
- ``imagefolder``: ``torchvision.datasets.ImageFolder`` over the extracted PNG tree with a
  ``torchvision.transforms.v2`` pipeline, in a ``DataLoader(shuffle=True, drop_last=True)``: the
  standard way to read an image folder.

Rates are samples per second after ``warmup`` batches, timed in rounds that alternate the two
loaders (order reversed every round); each figure is the median over rounds. The model rate is
the demo recipe's model (dim 128, depth 4, patch 4) training on CIFAR-shaped batches of 64
(forward, NEPA loss, backward, AdamW), in the main process with torch's default threads.
"""

from __future__ import annotations

import shutil
import statistics
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from nepa.data.paths import resolve_path

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
TARGET_VS_IMAGEFOLDER = 1.5
TARGET_VS_MODEL = 3.0


@dataclass(frozen=True)
class LoaderBenchConfig:
    archive: str = "${NEPA_DATA_DIR}/cifar10-png.tar.gz"
    work: str = "~/.cache/nepa/bench/cifar10"
    workers: tuple[int, ...] = (0, 1, 2)
    batch: int = 128
    batches: int = 40
    warmup: int = 5
    rounds: int = 3
    model_steps: int = 10


def prepare(cfg: LoaderBenchConfig) -> tuple[Path, Path]:
    """Extract the PNG tree and write the train shards once; returns (tree, shards)."""
    from nepa.data.shards.write import write_source

    archive = resolve_path(cfg.archive)
    work = resolve_path(cfg.work, must_exist=False)
    tree, shards = work / "png", work / "shards"
    if not (tree / "train").is_dir():
        tmp = work / "png.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
        shutil.rmtree(tree, ignore_errors=True)
        tmp.rename(tree)  # a crash mid-extraction leaves only png.partial, redone next time
    if not (shards / "manifest.json").is_file():
        write_source(str(archive), shards, split="train")
    return tree, shards


def shard_loader(shards: Path, workers: int, batch: int):
    from nepa.config import load_recipe
    from nepa.data.base import build_dataset

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "cifar10.py"
    spec = f"{recipe}:shards" if recipe.is_file() else "recipes.cifar10:shards"
    cfg = load_recipe(spec, [f"data.source={shards}"])[0]
    data = build_dataset(cfg.data, split="train", train=True)
    return data.make_train_loader(
        global_batch=batch,
        accum=1,
        rank=0,
        world=1,
        workers=workers,
        seed=0,
        start_micro=0,
        pin_memory=False,
    )


def imagefolder_loader(tree: Path, workers: int, batch: int) -> DataLoader:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(32, scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    return DataLoader(
        ImageFolder(str(tree / "train"), transform=transform),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def rate(loader, batch: int, batches: int, warmup: int) -> float:
    """Samples per second of ``batches`` batches after ``warmup`` (worker start-up excluded)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    del it
    return batches * batch / dt


def model_rate(steps: int, batch: int = 64) -> float:
    """Training samples per second of the demo model on (batch, 3, 32, 32) inputs."""
    from nepa.batch import placeholder_batch
    from nepa.config import OptimConfig
    from nepa.data.shards.image import ImageShardsConfig
    from nepa.demo_recipe import demo
    from nepa.train.build import build_objective
    from nepa.train.optim import build_optimizer

    cfg = demo()
    data = ImageShardsConfig(source=".", image_size=32, channels=3, mean=MEAN, std=STD)
    cfg = cfg.model_validate({**cfg.model_dump(), "data": data.model_dump()})
    objective = build_objective(cfg)
    optimizer = build_optimizer(objective.param_groups(OptimConfig()), OptimConfig())
    batch_dict = placeholder_batch(cfg.data.fields, batch)
    batch_dict["image"] = torch.randn(batch, 3, 32, 32)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss, _ = objective(batch_dict)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def run_loader_bench(cfg: LoaderBenchConfig, log=print) -> dict:
    tree, shards = prepare(cfg)
    results = []
    for w in cfg.workers:
        per = {"shards": [], "imagefolder": []}
        for r in range(cfg.rounds):
            order = ["shards", "imagefolder"] if r % 2 == 0 else ["imagefolder", "shards"]
            for name in order:
                loader = (
                    shard_loader(shards, w, cfg.batch)
                    if name == "shards"
                    else imagefolder_loader(tree, w, cfg.batch)
                )
                per[name].append(rate(loader, cfg.batch, cfg.batches, cfg.warmup))
                del loader
        row = {
            "workers": w,
            "shards": statistics.median(per["shards"]),
            "imagefolder": statistics.median(per["imagefolder"]),
            "rounds": per,
        }
        row["ratio"] = row["shards"] / row["imagefolder"]
        log(
            f"workers={w}: shards {row['shards']:,.0f}/s, imagefolder {row['imagefolder']:,.0f}/s, "
            f"ratio {row['ratio']:.2f}x (target >= {TARGET_VS_IMAGEFOLDER}x)"
        )
        results.append(row)
    model = model_rate(cfg.model_steps)
    recipe_workers = 1  # recipes/cifar10.py:shards
    loader_at_recipe = next((r["shards"] for r in results if r["workers"] == recipe_workers), None)
    out = {
        "config": cfg.__dict__,
        "loaders": results,
        "model_samples_per_s": model,
        "targets": {"vs_imagefolder": TARGET_VS_IMAGEFOLDER, "vs_model": TARGET_VS_MODEL},
    }
    if loader_at_recipe is not None:
        out["loader_vs_model"] = loader_at_recipe / model
        log(
            f"demo model step: {model:,.0f} samples/s; shards loader with {recipe_workers} worker: "
            f"{loader_at_recipe:,.0f}/s = {out['loader_vs_model']:.1f}x the step "
            f"(target >= {TARGET_VS_MODEL}x)"
        )
    return out
