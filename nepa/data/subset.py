"""Class-stratified subsets: the ``limit_train`` / ``limit_test`` fields datasets share."""

from __future__ import annotations

import zlib

import numpy as np
from pydantic import PositiveInt

from nepa.data.base import DataConfig


def subset_indices(labels: np.ndarray, limit: int, seed: int, split: str) -> np.ndarray:
    """A class-stratified random subset of ``limit`` indices (sorted), fixed by (seed, split)."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * limit / len(labels)
    take = np.floor(quota).astype(int)
    extra = np.argsort(-(quota - take), kind="stable")[: limit - take.sum()]  # largest remainders
    take[extra] += 1
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


class SubsetConfig(DataConfig):
    """``limit_train`` applies to the split named "train", ``limit_test`` to any other split: a
    class-stratified random subset fixed by ``subset_seed``."""

    limit_train: PositiveInt | None = None
    limit_test: PositiveInt | None = None
    subset_seed: int = 0

    def limit_for(self, split: str) -> int | None:
        return self.limit_train if split == "train" else self.limit_test

    def pick(self, labels: np.ndarray, split: str) -> np.ndarray:
        """Positions (sorted) of the samples of ``split`` to use, given their labels."""
        limit = self.limit_for(split)
        if limit is None or limit >= len(labels):
            return np.arange(len(labels))
        return subset_indices(labels, limit, self.subset_seed, split)
