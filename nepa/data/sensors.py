"""Sensor streams: ``hapt``, UCI HAPT's raw smartphone signals in windows by the UCI HAR protocol.

``${NEPA_DATA_DIR}/hapt.npz`` holds 50 Hz signals ``(N, 6)`` (acc x, y, z in g; gyro x, y, z in
rad/s) with a label, a user and a recording session per step. Windows of ``window`` steps
(128 = 2.56 s) every ``stride`` steps (64: 50% overlap) never cross a session; a window's label
is its majority activity, kept when it is 1-6 (walking, upstairs, downstairs, sitting, standing,
laying -> 0..5); windows whose majority is a postural transition or unlabelled, and windows with
a non-finite value, are skipped, counted and logged. The test subjects are UCI HAR's (2, 4, 9, 10,
12, 13, 18, 20, 24); train is the other 21. Channels are standardised with the train subjects'
statistics (stored in the run directory); training may add seeded Gaussian jitter.

A sample is ``{"signal": (6, window) float32, "length": () int64, "label": () int64}``; every
HAPT window is whole, so ``length`` is always ``window`` (it is there for the sensor encoder's
padding contract, which variable-length sources use).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt
from torch.utils.data import Dataset

from nepa.batch import LABEL, LABEL_FIELD, Batch, FieldSpec
from nepa.data.base import DATASETS
from nepa.data.paths import resolve_path
from nepa.data.subset import SubsetConfig

log = logging.getLogger(__name__)

ACTIVITIES = ("walking", "upstairs", "downstairs", "sitting", "standing", "laying")
UCI_HAR_TEST_SUBJECTS = (2, 4, 9, 10, 12, 13, 18, 20, 24)


class HaptConfig(SubsetConfig):
    kind: Literal["hapt"] = "hapt"
    path: str = "${NEPA_DATA_DIR}/hapt.npz"
    window: PositiveInt = Field(128, description="steps per window (2.56 s at 50 Hz)")
    stride: PositiveInt = Field(64, description="steps between window starts (64: 50% overlap)")
    test_subjects: tuple[int, ...] = UCI_HAR_TEST_SUBJECTS
    jitter: float = Field(0.0, ge=0, description="train-time Gaussian noise, in channel stds")

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {
            "signal": FieldSpec((6, self.window)),
            "length": FieldSpec((), "int64"),
            LABEL: LABEL_FIELD,
        }

    def input_transform(self, normalization: dict) -> Callable[[Any], Batch]:
        """A raw ``(window, 6)`` or ``(6, window)`` array in the file's units -> a sample."""
        mean = torch.tensor(normalization["mean"])[:, None]
        std = torch.tensor(normalization["std"])[:, None]

        def apply(x: Any) -> Batch:
            x = torch.as_tensor(np.asarray(x, dtype=np.float32))
            if x.shape == (self.window, 6):
                x = x.T
            if x.shape != (6, self.window):
                raise ValueError(f"expected a ({self.window}, 6) window, got {tuple(x.shape)}")
            return {"signal": (x - mean) / std, "length": torch.tensor(self.window)}

        return apply


@lru_cache(maxsize=4)
def hapt_windows(path: str, window: int, stride: int) -> dict[str, np.ndarray]:
    """Every labelled, finite window of the file: start (W,), label 0..5, subject, session."""
    with np.load(path, allow_pickle=False) as f:
        missing = {"signals", "label", "user", "session"} - set(f.files)
        if missing:
            raise ValueError(f"{path} lacks the array(s) {sorted(missing)} of a HAPT file")
        signals, label, user, session = f["signals"], f["label"], f["user"], f["session"]
    cuts = np.flatnonzero(np.diff(session)) + 1
    bounds = zip(np.r_[0, cuts], np.r_[cuts, len(session)], strict=True)
    starts = np.concatenate([np.arange(a, b - window + 1, stride) for a, b in bounds])
    steps = starts[:, None] + np.arange(window)  # (W, window)
    votes = np.stack([(label[steps] == v).sum(1) for v in range(-1, 13)], axis=1)
    major = votes.argmax(1) - 1  # the majority label (ties: the smaller)
    finite = np.isfinite(signals[steps]).all(axis=(1, 2))
    keep = (major >= 1) & (major <= 6) & finite
    log.info(
        "hapt: %d windows of %d steps; skipped %d whose majority is a transition or unlabelled "
        "and %d with a non-finite value",
        keep.sum(),
        window,
        ((major < 1) | (major > 6)).sum(),
        (~finite).sum(),
    )
    return {
        "signals": signals,
        "start": starts[keep],
        "label": (major[keep] - 1).astype(np.int64),
        "subject": user[starts[keep]].astype(np.int64),
        "session": session[starts[keep]].astype(np.int64),
    }


@lru_cache(maxsize=4)
def train_statistics(
    path: str, window: int, stride: int, test_subjects: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (6,) float32 over the train subjects' windows."""
    w = hapt_windows(path, window, stride)
    train = w["start"][~np.isin(w["subject"], test_subjects)]
    values = w["signals"][train[:, None] + np.arange(window)].reshape(-1, 6).astype(np.float64)
    return values.mean(0).astype(np.float32), values.std(0).astype(np.float32)


class SensorWindows(Dataset):
    """``ds[i]`` or ``ds[(i, aug_seed)]`` -> ``{"signal", "length", "label"}``."""

    classes = list(ACTIVITIES)
    num_classes = len(ACTIVITIES)

    def __init__(self, cfg: HaptConfig, split: str, train: bool) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"hapt has the splits 'train' and 'test', not {split!r}")
        path = str(resolve_path(cfg.path))
        w = hapt_windows(path, cfg.window, cfg.stride)
        in_test = np.isin(w["subject"], cfg.test_subjects)
        idx = np.flatnonzero(in_test if split == "test" else ~in_test)
        idx = idx[cfg.pick(w["label"][idx], split)]
        # the train subjects' statistics, whatever the split (computed once for both)
        self.mean, self.std = train_statistics(path, cfg.window, cfg.stride, cfg.test_subjects)
        self.normalization = {
            "field": "signal",
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }
        self.cfg, self.train = cfg, train
        self.signals = w["signals"]
        self.starts, self.subjects = w["start"][idx], w["subject"][idx]
        self.sessions = w["session"][idx]
        self.labels = torch.as_tensor(w["label"][idx])

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, key: int | tuple[int, int]) -> Batch:
        index, aug_seed = (key, None) if isinstance(key, int | np.integer) else key
        s = self.starts[index]
        x = (self.signals[s : s + self.cfg.window] - self.mean) / self.std  # (window, 6)
        if self.train and aug_seed is not None and self.cfg.jitter:
            noise = np.random.default_rng(int(aug_seed)).standard_normal(x.shape)
            x = x + self.cfg.jitter * noise
        return {
            "signal": torch.from_numpy(np.ascontiguousarray(x.T, dtype=np.float32)),
            "length": torch.tensor(self.cfg.window),
            LABEL: self.labels[index],
        }


@DATASETS.register("hapt", config=HaptConfig)
def build_hapt(cfg: HaptConfig, *, split: str, train: bool) -> SensorWindows:
    return SensorWindows(cfg, split, train)
