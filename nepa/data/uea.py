"""``uea``: a UEA multivariate time-series classification set, read offline from ``.ts`` files.

sktime ships some UEA sets inside its wheel (BasicMotions: 6 channels, accelerometer and
gyroscope, 100 steps, 4 activities, 40 train / 40 test series); ``path`` may instead name a
folder holding ``<name>_TRAIN.ts`` and ``<name>_TEST.ts`` from the archive. Files are parsed by
``sktime.datasets.load_from_tsfile``; nothing is downloaded. (aeon ships the same files, but
its numba pin does not install beside this project's numpy.)

Series are standardised per channel with the train split's statistics (stored in the run
directory) and zero-padded to ``pad_to`` steps when given (``length`` marks the real steps, so
the sensor encoder treats the rest as padding). A series holding NaN or inf is skipped, counted
and logged. A sample is ``{"signal": (C, L) float32, "length": () int64, "label": () int64}``.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt
from torch.utils.data import Dataset

from nepa.batch import LABEL, LABEL_FIELD, Batch, FieldSpec
from nepa.data.base import DATASETS
from nepa.data.paths import resolve_path
from nepa.data.subset import SubsetConfig

log = logging.getLogger(__name__)

#: (channels, steps) of the sets sktime ships, so fields are known from the config alone
SHIPPED = {"BasicMotions": (6, 100)}


class UeaConfig(SubsetConfig):
    kind: Literal["uea"] = "uea"
    name: str = "BasicMotions"
    path: str | None = Field(
        None, description="folder with <name>_TRAIN.ts / _TEST.ts; None: sktime's"
    )
    channels: PositiveInt | None = Field(None, description="None: known for the shipped sets")
    steps: PositiveInt | None = Field(None, description="series length; None: known if shipped")
    pad_to: PositiveInt | None = Field(None, description="zero-pad series to this many steps")
    jitter: float = Field(0.0, ge=0, description="train-time Gaussian noise, in channel stds")

    @property
    def series(self) -> tuple[int, int]:
        """(channels, steps) of every series in the files."""
        c, n = SHIPPED.get(self.name, (self.channels, self.steps))
        c, n = self.channels or c, self.steps or n
        if c is None or n is None:
            raise ValueError(
                f"UEA set {self.name!r} is not one sktime ships ({', '.join(SHIPPED)}): set "
                "data.channels and data.steps (and data.path to its .ts files)"
            )
        return c, n

    @property
    def shape(self) -> tuple[int, int]:
        """(channels, steps after padding) of one sample."""
        c, n = self.series
        if self.pad_to is not None and self.pad_to < n:
            raise ValueError(f"data.pad_to={self.pad_to} is shorter than the {n}-step series")
        return c, self.pad_to or n

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {
            "signal": FieldSpec(self.shape),
            "length": FieldSpec((), "int64"),
            LABEL: LABEL_FIELD,
        }


def ts_file(cfg: UeaConfig, split: str) -> Path:
    if cfg.path is not None:
        folder = resolve_path(cfg.path)
    else:
        try:
            import sktime.datasets
        except ImportError:
            raise ValueError(
                "data kind 'uea' reads sktime's shipped sets: pip install 'nepa[timeseries]' "
                "(or set data.path to a folder of .ts files)"
            ) from None
        folder = Path(sktime.datasets.__file__).parent / "data" / cfg.name
    path = folder / f"{cfg.name}_{split.upper()}.ts"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: data.path must hold {cfg.name}_TRAIN.ts and _TEST.ts"
        )
    return path


@lru_cache(maxsize=8)
def read_split(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(series (N, C, L) float32, string labels (N,)) of one .ts file."""
    from sktime.datasets import load_from_tsfile

    try:
        x, y = load_from_tsfile(path, return_data_type="numpy3D")
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: cannot read it as equal-length .ts series ({e})") from None
    return np.asarray(x, np.float32), np.asarray(y).astype(str)


class UeaSeries(Dataset):
    """``ds[i]`` or ``ds[(i, aug_seed)]`` -> ``{"signal", "length", "label"}``."""

    def __init__(self, cfg: UeaConfig, split: str, train: bool) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"uea has the splits 'train' and 'test', not {split!r}")
        x_train, y_train = read_split(str(ts_file(cfg, "train")))
        x, y = (x_train, y_train) if split == "train" else read_split(str(ts_file(cfg, split)))
        if x.shape[1:] != cfg.series:
            raise ValueError(
                f"{cfg.name} {split}: series are {x.shape[1:]}, the config declares "
                f"{cfg.series}; set data.channels and data.steps"
            )
        finite = np.isfinite(x).all(axis=(1, 2))
        if (~finite).any():
            log.warning(
                "uea %s %s: skipped %d series holding NaN or inf", cfg.name, split, (~finite).sum()
            )
        self.classes = sorted(set(y_train.tolist()))
        unknown = set(y.tolist()) - set(self.classes)
        if unknown:
            raise ValueError(
                f"{cfg.name} {split} has labels {sorted(unknown)} not in its train split"
            )
        labels = np.array([self.classes.index(v) for v in y], np.int64)
        idx = np.flatnonzero(finite)
        idx = idx[cfg.pick(labels[idx], split)]
        ok = x_train[np.isfinite(x_train).all(axis=(1, 2))].astype(np.float64)
        self.mean = ok.mean(axis=(0, 2)).astype(np.float32)[:, None]  # (C, 1)
        std = ok.std(axis=(0, 2))
        if (std == 0).any():
            raise ValueError(
                f"{cfg.name}: channel(s) {np.flatnonzero(std == 0).tolist()} are constant over "
                "the train split: nothing to standardise them by; drop them from the files"
            )
        self.std = std.astype(np.float32)[:, None]
        self.normalization = {
            "field": "signal",
            "mean": self.mean[:, 0].tolist(),
            "std": self.std[:, 0].tolist(),
        }
        self.x, self.labels = x[idx], torch.as_tensor(labels[idx])
        self.num_classes = len(self.classes)
        self.cfg, self.train, self.pad = cfg, train, cfg.shape[1]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: int | tuple[int, int]) -> Batch:
        index, aug_seed = (key, None) if isinstance(key, int | np.integer) else key
        x = (self.x[index] - self.mean) / self.std  # (C, steps)
        if self.train and aug_seed is not None and self.cfg.jitter:
            x = x + self.cfg.jitter * np.random.default_rng(int(aug_seed)).standard_normal(x.shape)
        out = np.zeros((x.shape[0], self.pad), np.float32)
        out[:, : x.shape[1]] = x
        return {
            "signal": torch.from_numpy(out),
            "length": torch.tensor(x.shape[1]),
            LABEL: self.labels[index],
        }


@DATASETS.register("uea", config=UeaConfig)
def build_uea(cfg: UeaConfig, *, split: str, train: bool) -> UeaSeries:
    return UeaSeries(cfg, split, train)
