"""``array_shards``: numeric arrays (``.npy``) streamed from shards, e.g. sensor windows.

Each sample's ``.npy`` must have exactly ``shape`` (e.g. ``[6, 128]`` for six channels of 128
time steps, ``[20, 64, 64]`` for a Moving MNIST clip); anything else is a ``shape`` error, and an
array holding a NaN or inf a ``nonfinite`` one, counted and skipped like any bad sample. Values
are cast to float32 and normalised by ``mean``/``std`` (one value per leading channel, or one for
all) when given, then viewed as ``view`` when given (``[1, 20, 64, 64]``: the clip as one
channel for the video encoder). There is no augmentation: an encoder for arrays brings its own if
it needs one.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import PositiveInt, model_validator
from torch.utils.data import Dataset

from nepa.batch import LABEL, LABEL_FIELD, Batch, FieldSpec
from nepa.data.base import DATASETS
from nepa.data.decode import decode_bytes, exts_of
from nepa.data.shards.codecs import DecodeError, field_ext, label_of, payload_field
from nepa.data.shards.manifest import resolve_shards
from nepa.data.shards.options import ShardOptions
from nepa.data.shards.reader import decode_all
from nepa.data.shards.stream import ShardTrainData


class ArrayShardsConfig(ShardOptions):
    """``shape``: the shape of every sample; ``mean``/``std``: one value per ``shape[0]``;
    ``field``: the name of the array in each batch (``{field: (B, *shape), "label": (B,)}``)."""

    kind: Literal["array_shards"] = "array_shards"
    shape: tuple[PositiveInt, ...]
    view: tuple[PositiveInt, ...] | None = None
    field: str = "signal"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _check_stats(self) -> ArrayShardsConfig:
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) not in (1, self.shape[0]):
                raise ValueError(
                    f"{name} has {len(v)} values; give one per channel (shape[0] = "
                    f"{self.shape[0]}) or one for all"
                )
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std values must be > 0, got {self.std}")
        if self.view is not None and math.prod(self.view) != math.prod(self.shape):
            raise ValueError(
                f"view {list(self.view)} holds {math.prod(self.view)} values, shape "
                f"{list(self.shape)} {math.prod(self.shape)}: a view must keep every value"
            )
        return self

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {self.field: FieldSpec(tuple(self.view or self.shape)), LABEL: LABEL_FIELD}


class ArraySample:
    """Decode a ``.npy`` payload, check its shape, cast and normalise: (x, label or -1)."""

    def __init__(self, cfg: ArrayShardsConfig) -> None:
        self.shape, self.field, self.view = tuple(cfg.shape), cfg.field, cfg.view
        extra = (1,) * (len(cfg.shape) - 1)  # broadcast per leading channel
        self.mean = None if cfg.mean is None else torch.tensor(cfg.mean).reshape(-1, *extra)
        self.std = None if cfg.std is None else torch.tensor(cfg.std).reshape(-1, *extra)

    def __call__(self, sample: dict[str, Any], seed: int = 0) -> Batch:
        field = payload_field(sample, exts_of("array"))  # built-in or user-registered extensions
        arr = decode_bytes(field_ext(field), sample[field])
        if arr.shape != self.shape:
            raise DecodeError(f"array of shape {arr.shape}, expected {self.shape}", kind="shape")
        if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
            raise DecodeError(f"array of dtype {arr.dtype} is not numeric")
        x = torch.from_numpy(arr.astype(np.float32, copy=False))
        if not torch.isfinite(x).all():
            raise DecodeError("array holds a NaN or inf", kind="nonfinite")
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        if self.view is not None:
            x = x.reshape(self.view)
        return {self.field: x, LABEL: torch.tensor(label_of(sample))}

    def finish_batch(self, batch: Batch) -> Batch:
        return batch


class ArrayDataset(Dataset):
    """A split in memory for evaluation: ``ds[i]`` -> ``{field: x, "label": y}``."""

    def __init__(
        self, xs: torch.Tensor, labels: torch.Tensor, classes: list[str], field: str
    ) -> None:
        self.xs, self.labels, self.classes = xs, labels, classes  # (N, *shape), (N,)
        self.num_classes = len(classes)
        self.field = field

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> Batch:
        index = key[0] if isinstance(key, tuple) else key
        return {self.field: self.xs[index], LABEL: self.labels[index]}


@DATASETS.register("array_shards", config=ArrayShardsConfig)
def build_array_shards(
    cfg: ArrayShardsConfig, *, split: str, train: bool
) -> ShardTrainData | ArrayDataset:
    shards = resolve_shards(cfg.source, split)
    sample_fn = ArraySample(cfg)
    if train:
        return ShardTrainData(shards, sample_fn, cfg)
    items = decode_all(shards, sample_fn, allow_pickle=cfg.allow_pickle, where=cfg.source)
    xs = torch.stack([it[cfg.field] for it in items])
    labels = torch.stack([it[LABEL] for it in items]).to(torch.int64)
    return ArrayDataset(xs, labels, shards.class_names(int(labels.max())), cfg.field)
