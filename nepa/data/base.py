"""Dataset contract: a config that knows its sample shape, and a registry of dataset builders.

A built dataset supports ``len(ds)``, ``ds.num_classes``, ``ds.labels`` (int64 tensor of all
labels) and ``ds[key] -> (x, y)``: ``key`` is an index (deterministic eval transform) or a tuple
``(index, aug_seed)`` (training augmentation seeded by ``aug_seed`` when built with
``train=True``). ``x`` is a float32 tensor of ``cfg.sample_shape``; ``y`` an int label.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from nepa.registry import Registry
from nepa.schema import ComponentConfig


class DataConfig(ComponentConfig):
    """Base of every dataset config. ``kind`` names the registry entry."""

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one model input, e.g. (C, H, W); known from the config alone."""
        raise NotImplementedError


#: builder signature: ``fn(cfg, *, split: str, train: bool) -> torch.utils.data.Dataset``
DATASETS: Registry[Any] = Registry("dataset")


def build_dataset(cfg: DataConfig, *, split: str, train: bool) -> Dataset:
    """Build split ``split`` of the dataset named by ``cfg.kind``."""
    return DATASETS.get(cfg.kind)(cfg, split=split, train=train)
