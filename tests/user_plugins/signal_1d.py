"""A USER's own file, outside the package: 1-D sensor signals through nepa, unchanged.

It registers
- a dataset kind ``toy_signal_1d``: windows of the UCI HAPT raw smartphone signals
  (``${NEPA_DATA_DIR}/hapt.npz``: ``signals (N, 6) float32``, ``label``, ``user``, ``session``),
  UCI HAR protocol: 128-sample windows that never cross a ``session``, label = the majority
  activity (1..6 kept, as 0..5; windows whose majority is a transition or unlabelled are
  skipped and counted), test subjects 2, 4, 9, 10, 12, 13, 18, 20, 24, train on the rest;
- an encoder kind ``conv1d_patch``: ``Conv1d`` patchify (kernel = stride = patch), one grid axis,
  coords ``(T, 1)``;
- a scan order ``user_reverse`` (last cell first) and an objective kind ``user_nepa_mse`` (NEPA
  with a squared distance between unit vectors, its own config type with a ``scale`` field);
- recipes ``tiny()`` (dataset + encoder) and ``tiny_custom()`` (also the scan and the objective):
  ``nepa train tests/user_plugins/signal_1d.py:tiny``.

No fallback: a missing data file is an error that says which file and which variable.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt
from torch import nn
from torch.utils.data import Dataset

from nepa.batch import FieldSpec, require_field
from nepa.config import EvalConfig, OptimConfig, RunConfig, TrainConfig
from nepa.data.base import DATASETS, DataConfig
from nepa.data.paths import resolve_path
from nepa.encoders.base import ENCODERS, Encoder, EncoderConfig
from nepa.encoders.scans import SCANS, scan_order
from nepa.objectives.base import OBJECTIVES
from nepa.objectives.nepa import Nepa, NepaConfig
from nepa.predictor.config import PredictorConfig
from nepa.tokens import Tokens

log = logging.getLogger(__name__)

TEST_SUBJECTS = frozenset({2, 4, 9, 10, 12, 13, 18, 20, 24})
ACTIVITIES = ["walking", "upstairs", "downstairs", "sitting", "standing", "laying"]


# ------------------------------------------------------------------------------ dataset


class Signal1dConfig(DataConfig):
    kind: Literal["toy_signal_1d"] = "toy_signal_1d"
    path: str = "${NEPA_DATA_DIR}/hapt.npz"
    length: PositiveInt = 128
    stride: PositiveInt = 64
    channels: PositiveInt = 6
    limit_train: PositiveInt | None = None
    limit_test: PositiveInt | None = None
    subset_seed: int = 0
    noise: float = Field(0.05, ge=0, description="train-time Gaussian jitter (in std units)")

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"signal": FieldSpec((self.channels, self.length)), "label": FieldSpec((), "int64")}


@lru_cache(maxsize=4)
def _windows(path: str, length: int, stride: int) -> dict[str, np.ndarray]:
    """All labelled windows of the file: starts (W,), labels 0..5 (W,), subject (W,)."""
    with np.load(path, allow_pickle=False) as f:
        signals, label, user, session = f["signals"], f["label"], f["user"], f["session"]
    cuts = np.flatnonzero(np.diff(session)) + 1
    bounds = zip(np.r_[0, cuts], np.r_[cuts, len(session)], strict=True)
    starts = np.concatenate([np.arange(a, b - length + 1, stride) for a, b in bounds])
    win = label[starts[:, None] + np.arange(length)]  # (W, L)
    values = np.arange(-1, 13)
    counts = np.stack([(win == v).sum(1) for v in values], axis=1)  # (W, 14)
    major = values[counts.argmax(1)]
    keep = (major >= 1) & (major <= 6)
    if (~keep).any():
        log.info(
            "toy_signal_1d: skipped %d of %d windows (majority not in 1..6)",
            (~keep).sum(),
            len(keep),
        )
    starts, major = starts[keep], major[keep]
    return {
        "signals": signals,
        "starts": starts,
        "labels": (major - 1).astype(np.int64),
        "subject": user[starts].astype(np.int64),
        "session": session[starts].astype(np.int64),
    }


class SignalWindows(Dataset):
    """``ds[i]`` or ``ds[(i, aug_seed)]`` -> {"signal": (C, L) float32, "label": 0..5}."""

    num_classes = len(ACTIVITIES)

    def __init__(self, cfg: Signal1dConfig, split: str, train: bool) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"toy_signal_1d has splits 'train' and 'test', not {split!r}")
        w = _windows(str(resolve_path(cfg.path)), cfg.length, cfg.stride)
        in_test = np.isin(w["subject"], list(TEST_SUBJECTS))
        idx = np.flatnonzero(in_test if split == "test" else ~in_test)
        limit = cfg.limit_train if split == "train" else cfg.limit_test
        if limit is not None and limit < len(idx):
            rng = np.random.default_rng([cfg.subset_seed, split == "test"])
            idx = np.sort(rng.choice(idx, size=limit, replace=False))
        train_idx = np.flatnonzero(~in_test)
        # Per-channel statistics over the train subjects' windows (fixed, whatever the split).
        sample = w["signals"][w["starts"][train_idx][:, None] + np.arange(cfg.length)]
        self.mean = sample.mean(axis=(0, 1)).astype(np.float32)
        self.std = sample.std(axis=(0, 1)).astype(np.float32)
        self.cfg, self.train = cfg, train
        self.signals = w["signals"]
        self.starts = w["starts"][idx]
        self.subjects = w["subject"][idx]
        self.sessions = w["session"][idx]
        self.labels = torch.as_tensor(w["labels"][idx])

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, key):
        index, aug_seed = (key, None) if isinstance(key, int | np.integer) else key
        s = self.starts[index]
        x = (self.signals[s : s + self.cfg.length] - self.mean) / self.std  # (L, C)
        if self.train and aug_seed is not None and self.cfg.noise:
            x = x + self.cfg.noise * np.random.default_rng(int(aug_seed)).standard_normal(x.shape)
        x_CL = torch.from_numpy(np.ascontiguousarray(x.T, dtype=np.float32))
        return {"signal": x_CL, "label": self.labels[index]}


@DATASETS.register("toy_signal_1d", config=Signal1dConfig)
def build_signal_1d(cfg: Signal1dConfig, *, split: str, train: bool) -> SignalWindows:
    return SignalWindows(cfg, split, train)


# ------------------------------------------------------------------------------ encoder


class Conv1dPatchConfig(EncoderConfig):
    kind: Literal["conv1d_patch"] = "conv1d_patch"
    patch_size: PositiveInt = 16
    scan: str = "raster"

    def check_fields(self, fields: dict[str, FieldSpec]) -> None:
        spec = require_field(fields, "signal", ndim=2, reader="encoder 'conv1d_patch' (C, L)")
        if spec.shape[1] % self.patch_size:
            raise ValueError(
                f"signal length {spec.shape[1]} is not divisible by encoder.patch_size={self.patch_size}"
            )
        if self.scan not in SCANS:
            raise ValueError(f"unknown scan order {self.scan!r}; known: {', '.join(SCANS.names())}")


@ENCODERS.register("conv1d_patch", config=Conv1dPatchConfig)
class Conv1dPatch(Encoder):
    """``batch["signal"]`` (B, C, L) -> Tokens: emb (B, L / patch, D) in scan order, coords (T, 1)."""

    n_axes = 1

    def __init__(self, cfg: Conv1dPatchConfig, *, dim: int, fields: dict[str, FieldSpec]) -> None:
        super().__init__()
        cfg.check_fields(fields)
        C, L = fields["signal"].shape
        self.proj = nn.Conv1d(C, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.grid = (L // cfg.patch_size,)
        order = torch.from_numpy(scan_order(cfg.scan, self.grid))
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("coords", order[:, None].clone(), persistent=False)  # (T, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> Tokens:
        emb = self.proj(batch["signal"]).transpose(1, 2)  # (B, T, D) in time order
        return Tokens(emb=emb[:, self.order], coords=self.coords, grid=self.grid)


# ------------------------------------------------------------------------------ scan, objective


@SCANS.register("user_reverse")
def user_reverse(grid: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Visit the cells in reverse row-major order (1-D and 2-D grids)."""
    if len(grid) not in (1, 2):
        raise ValueError(
            f"user_reverse supports 1-D and 2-D grids, not {len(grid)}-D; for 3-D grids use "
            "raster, snake, hilbert or random"
        )
    return np.arange(int(np.prod(grid)))[::-1].copy()


class UserNepaMseConfig(NepaConfig):
    kind: Literal["user_nepa_mse"] = "user_nepa_mse"  # type: ignore[assignment]
    scale: float = Field(1.0, gt=0)


@OBJECTIVES.register("user_nepa_mse", config=UserNepaMseConfig)
class UserNepaMse(Nepa):
    """scale * mean ||normalize(p) - normalize(t)||^2 (= scale * (2 - 2 cos)), same shift and
    stop-gradient as NEPA."""

    def forward(self, batch):
        p, t, _ = self.pairs(batch)  # NEPA's pairing: shift and stop-gradient
        diff = nn.functional.normalize(p.float(), dim=-1) - nn.functional.normalize(
            t.float(), dim=-1
        )
        loss = self.cfg.scale * diff.pow(2).sum(-1).mean()
        self.collapse.observe(p)  # the collapse monitor, as NEPA's
        return loss, {
            "tokens": float(p.shape[0] * p.shape[1]),
            "cos": 1 - diff.pow(2).sum(-1).mean().detach() / 2,
        }


# ------------------------------------------------------------------------------ recipe


def tiny() -> RunConfig:
    """dim 32, depth 2, patch 16 (8 tokens of 2.56 s / 8), 10 steps of batch 32."""
    return RunConfig(
        name="signal-1d-tiny",
        data=Signal1dConfig(limit_train=512, limit_test=256),
        encoder=Conv1dPatchConfig(patch_size=16),
        predictor=PredictorConfig(dim=32, depth=2, heads=2, attn_backend="sdpa"),
        objective=NepaConfig(monitor_every=5),
        optim=OptimConfig(lr=2e-3, warmup=2),
        train=TrainConfig(
            steps=10, batch_size=32, precision="fp32", device="cpu", log_every=1, ckpt_every=5
        ),
        eval=EvalConfig(k=10, max_train=512, max_test=256, batch_size=256),
    )


def tiny_custom() -> RunConfig:
    """``tiny`` with the user's own scan order and objective."""
    cfg = tiny().model_dump()
    cfg["name"] = "signal-1d-custom"
    cfg["encoder"]["scan"] = "user_reverse"
    cfg["objective"] = {"kind": "user_nepa_mse", "scale": 0.5, "monitor_every": 5}
    cfg["train"]["steps"] = 4
    return RunConfig.model_validate(cfg)
