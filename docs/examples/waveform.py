"""Raw waveforms as a new modality: a user's own file, outside the package.

It registers a dataset kind ``waveform_npz`` (fixed-length mono waveforms in an npz),
an encoder kind ``waveform_frames`` (a strided Conv1d over the raw samples, one token per
frame, a 1-D time grid) and a recipe ``tiny``. Train and evaluate it with the CLI:

    nepa train docs/examples/waveform.py:tiny --set data.path=waves.npz
    nepa eval knn runs/waveform-tiny-*
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from einops import rearrange
from pydantic import Field, PositiveInt
from torch import nn
from torch.utils.data import Dataset

from nepa.batch import LABEL, LABEL_FIELD, FieldSpec, require_field
from nepa.config import EvalConfig, OptimConfig, RunConfig, TrainConfig
from nepa.data.base import DATASETS, DataConfig
from nepa.data.paths import resolve_path
from nepa.encoders.base import ENCODERS, EncoderConfig
from nepa.encoders.patch import GridEncoder
from nepa.encoders.scans import check_scan
from nepa.objectives.nepa import NepaConfig
from nepa.predictor.config import PredictorConfig

# ---------------------------------------------------------------------------- the data


class WaveformNpzConfig(DataConfig):
    """An npz with ``x_train``/``x_test`` ``(N, samples)`` float and ``y_train``/``y_test``."""

    kind: Literal["waveform_npz"] = "waveform_npz"
    path: str = "waves.npz"
    samples: PositiveInt = Field(8000, description="samples per waveform")
    gain: float = Field(0.2, ge=0, description="train-time random gain, +-this fraction")

    @property
    def fields(self) -> dict[str, FieldSpec]:
        # what one sample holds: the config alone says it, so encoders are checked up front
        return {"wave": FieldSpec((1, self.samples)), LABEL: LABEL_FIELD}


class Waveforms(Dataset):
    def __init__(self, cfg: WaveformNpzConfig, split: str, train: bool) -> None:
        with np.load(resolve_path(cfg.path), allow_pickle=False) as f:
            x, y = f[f"x_{split}"].astype(np.float32), f[f"y_{split}"].astype(np.int64)
        if x.shape[1:] != (cfg.samples,):
            raise ValueError(f"{cfg.path}: x_{split} is {x.shape}, expected (N, {cfg.samples})")
        self.x = torch.from_numpy(x / (np.abs(x).max(1, keepdims=True) + 1e-8))  # peak 1
        self.labels = torch.from_numpy(y)  # evaluation reads every label at once
        self.num_classes = int(y.max()) + 1
        self.cfg, self.train = cfg, train

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        # training asks for (index, seed): the seed makes augmentation exact on resume
        index, seed = key if isinstance(key, tuple) else (key, None)
        wave = self.x[index]
        if self.train and seed is not None:
            g = torch.Generator().manual_seed(seed)
            wave = wave * (1 + self.cfg.gain * (2 * torch.rand((), generator=g) - 1))
        return {"wave": wave[None], LABEL: self.labels[index]}


@DATASETS.register("waveform_npz", config=WaveformNpzConfig)
def build_waveforms(cfg: WaveformNpzConfig, *, split: str, train: bool) -> Waveforms:
    return Waveforms(cfg, split, train)


# ---------------------------------------------------------------------------- the encoder


class WaveformFramesConfig(EncoderConfig):
    kind: Literal["waveform_frames"] = "waveform_frames"
    frame: PositiveInt = Field(400, description="samples per token (25 ms at 16 kHz)")
    scan: str = "raster"

    def check_fields(self, fields: dict[str, FieldSpec]) -> None:
        # runs when the RunConfig is validated: a mismatch is a config error, not a crash
        spec = require_field(fields, "wave", ndim=2, reader="encoder 'waveform_frames'")
        if spec.shape[1] % self.frame:
            raise ValueError(
                f"{spec.shape[1]} samples are not divisible by encoder.frame={self.frame}"
            )
        check_scan(self.scan)


@ENCODERS.register("waveform_frames", config=WaveformFramesConfig)
class WaveformFrames(GridEncoder):
    """(B, 1, samples) -> one token per frame on a (time,) grid; no position in the tokens
    (the predictor's RoPE gets it from the coordinates)."""

    def __init__(self, cfg: WaveformFramesConfig, *, dim: int, fields: dict[str, FieldSpec]):
        super().__init__()
        cfg.check_fields(fields)
        self.proj = nn.Conv1d(1, dim, kernel_size=cfg.frame, stride=cfg.frame)
        self.norm = nn.LayerNorm(dim)
        self.set_grid((fields["wave"].shape[1] // cfg.frame,), cfg.scan, seed=0)

    def forward(self, batch: dict[str, torch.Tensor]):
        emb = rearrange(self.proj(batch["wave"]), "b d t -> b t d")  # (B, T, D), time order
        return self.scanned(self.norm(emb))  # Tokens in scan order, with their coordinates


# ---------------------------------------------------------------------------- the recipe


def tiny() -> RunConfig:
    return RunConfig(
        name="waveform-tiny",
        data=WaveformNpzConfig(),
        encoder=WaveformFramesConfig(frame=400),
        predictor=PredictorConfig(dim=64, depth=2, heads=4),
        objective=NepaConfig(),
        optim=OptimConfig(lr=1e-3, warmup=0.1),
        train=TrainConfig(steps=200, batch_size=32, log_every=20, ckpt_every=100),
        eval=EvalConfig(pool="mean"),
    )
