"""``image_shards``: images streamed from WebDataset shards (``.png``/``.jpg`` + optional ``.cls``).

Training streams the shards (see :mod:`nepa.data.shards.stream`) with the same augmentation as
the in-memory image datasets; evaluation reads a split into memory once (for kNN and probes).
``mean``/``std`` default to the per-channel statistics ``nepa shards write`` stored in the
manifest for the train split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from nepa.batch import LABEL, Batch
from nepa.data.base import DATASETS
from nepa.data.decode import decode_bytes, exts_of
from nepa.data.images import (
    CropFlip,
    ImageDataConfig,
    ImageDataset,
    make_dataset,
    normalizer,
    train_augment,
)
from nepa.data.shards.codecs import DecodeError, field_ext, label_of, payload_field
from nepa.data.shards.manifest import ShardList, resolve_shards
from nepa.data.shards.options import ShardOptions
from nepa.data.shards.reader import decode_all
from nepa.data.shards.stats import PIXELS
from nepa.data.shards.stream import ShardTrainData


class ImageShardsConfig(ImageDataConfig, ShardOptions):
    """Image shards; see :class:`ShardOptions` for ``source`` and the streaming fields."""

    kind: Literal["image_shards"] = "image_shards"


def decode_sample(sample: dict[str, Any], channels: int) -> tuple[torch.Tensor, int]:
    """Raw sample -> (uint8 (C, H, W) image, label or -1); DecodeError if bad."""
    field = payload_field(sample, exts_of("image"))  # built-in or user-registered extensions
    img_CHW = decode_bytes(field_ext(field), sample[field])
    if img_CHW.shape[0] != channels:
        raise DecodeError(
            f"image has {img_CHW.shape[0]} channel(s), the config says channels={channels}",
            kind="shape",
        )
    return img_CHW, label_of(sample)


class ImageSample:
    """The stream's sample function: decode, check, crop and flip (seeded) to a uint8
    ``{"image", "label"}`` sample; ``finish_batch`` then normalises the whole batch at once."""

    def __init__(
        self,
        channels: int,
        augment: CropFlip | None,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.channels, self.augment, self.normalize = channels, augment, normalize

    def __call__(self, sample: dict[str, Any], seed: int) -> Batch:
        img_CHW, y = decode_sample(sample, self.channels)
        img_CHW = img_CHW if self.augment is None else self.augment(img_CHW, seed)
        return {"image": img_CHW, LABEL: torch.tensor(y)}

    def finish_batch(self, batch: Batch) -> Batch:
        if self.normalize is None:
            return batch
        return {**batch, "image": self.normalize(batch["image"])}


def _stats(cfg: ImageShardsConfig, shards: ShardList) -> Callable[[], np.ndarray]:
    def stats() -> np.ndarray:
        m = shards.manifest
        info = m.splits.get("train") if m is not None else None
        if (
            info is None
            or info.mean is None
            or info.std is None
            or info.stats not in (None, PIXELS)
        ):
            raise ValueError(
                f"{cfg.source!r} has no stored pixel statistics for a train split: set "
                f"data.mean and data.std ({cfg.channels} values each)"
            )
        return np.asarray([info.mean, info.std], dtype=np.float64)

    return stats


def read_split(cfg: ImageShardsConfig, shards: ShardList) -> tuple[list[np.ndarray], np.ndarray]:
    """Decode every sample of a split: (list of (H, W, C) uint8, labels (N,) int64)."""

    def decode(sample: dict[str, Any]) -> tuple[np.ndarray, int]:
        img_CHW, y = decode_sample(sample, cfg.channels)
        return img_CHW.permute(1, 2, 0).numpy(), y

    items = decode_all(shards, decode, allow_pickle=cfg.allow_pickle, where=cfg.source)
    return [x for x, _ in items], np.asarray([y for _, y in items], dtype=np.int64)


@DATASETS.register("image_shards", config=ImageShardsConfig)
def build_image_shards(
    cfg: ImageShardsConfig, *, split: str, train: bool
) -> ShardTrainData | ImageDataset:
    shards = resolve_shards(cfg.source, split)
    stats = _stats(cfg, shards)
    if train:
        if cfg.limit_train is not None:
            raise ValueError(
                "limit_train does not apply to streamed shards; write a smaller split, or use "
                "eval.max_train to limit evaluation"
            )
        mean, std = cfg.mean, cfg.std
        if mean is None or std is None:
            s = stats()
            mean = tuple(s[0]) if mean is None else mean
            std = tuple(s[1]) if std is None else std
        sample_fn = ImageSample(cfg.channels, train_augment(cfg), normalizer(mean, std))
        return ShardTrainData(shards, sample_fn, cfg)
    images, labels = read_split(cfg, shards)
    if len(images) and all(a.shape == images[0].shape for a in images):
        images = np.stack(images)
    return make_dataset(
        cfg,
        split=split,
        train=False,
        images=images,
        labels=labels,
        classes=shards.class_names(int(labels.max(initial=-1))),
        source=cfg.source,
        train_stats=stats,
    )
