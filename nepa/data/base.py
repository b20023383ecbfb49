"""Dataset contract: a config that declares its fields, and a registry of dataset builders.

A built dataset supports ``len(ds)``, ``ds.num_classes``, ``ds.labels`` (int64 tensor of all
labels) and ``ds[key] -> dict[str, Tensor]`` with the fields its config declares (for images
``{"image": (C, H, W) float32, "label": () int64}``): ``key`` is an index (deterministic eval
transform) or a tuple ``(index, aug_seed)`` (training augmentation seeded by ``aug_seed`` when
built with ``train=True``). ``ds.normalization`` (optional) is the JSON-ready description of
the input normalisation it applies, which the trainer stores in the run directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from nepa.batch import Batch, FieldSpec, collate
from nepa.registry import Registry
from nepa.schema import ComponentConfig


class DataConfig(ComponentConfig):
    """Base of every dataset config. ``kind`` names the registry entry."""

    @property
    def fields(self) -> dict[str, FieldSpec]:
        """Name -> shape and dtype of every field of one sample; known from the config alone."""
        raise NotImplementedError

    def input_transform(self, normalization: dict) -> Callable[[Any], dict]:
        """One raw input (e.g. an image) -> a sample dict, exactly as evaluation feeds the model;
        ``normalization`` is what the dataset reported at training (stored in the run
        directory's meta.json). Used by :func:`nepa.load_run`."""
        raise NotImplementedError(
            f"data {self.kind!r} does not say how to turn a raw input into a sample; build the "
            "batch dict yourself (its fields: " + ", ".join(self.fields) + ")"
        )


#: builder signature: ``fn(cfg, *, split: str, train: bool) -> torch.utils.data.Dataset``
DATASETS: Registry[Any] = Registry("dataset")


def build_dataset(cfg: DataConfig, *, split: str, train: bool) -> Dataset:
    """Build split ``split`` of the dataset named by ``cfg.kind``."""
    return DATASETS.get(cfg.kind)(cfg, split=split, train=train)


def sample_batches(cfg: DataConfig, n: int, seed: int, batch: int = 256) -> Iterator[Batch]:
    """``n`` samples of the train split (all of it if smaller), drawn without replacement by
    ``seed`` and seen as evaluation sees them (no augmentation), in collated batches: the data
    for a data-dependent initialisation such as a tokenizer's codebook."""
    ds = build_dataset(cfg, split="train", train=False)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    for i in range(0, len(order), batch):
        yield collate([ds[int(j)] for j in order[i : i + batch]])
