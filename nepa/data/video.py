"""Video: ``moving_mnist``, Moving MNIST generated from MNIST digits the standard way.

Srivastava et al. (2015): two 28 x 28 digits bounce inside a 64 x 64 frame for 20 frames. Each
digit starts at a uniform position, moves at ``speed`` pixels per frame in a uniform direction,
and reflects off the walls; the frame is the pixel-wise maximum of the digits. The train split
draws its digits from MNIST's train images, the test split from MNIST's test images, so no test
digit image is ever seen in training. Video ``i`` of a split is a pure function of
``(seed, split, i)``: generated on demand in the loader workers, identical across runs,
processes and machines.

Labels for evaluation (``label``):

- ``pair``: the unordered pair of digit classes, ``{a, b}`` with ``a <= b``: 55 classes
  (``"0+0"``, ``"0+1"``, ..., ``"9+9"``).
- ``direction``: the first digit's initial direction of motion, to the nearest of 8 compass
  directions on the screen (``E, NE, N, NW, W, SW, S, SE``; north is up). The first digit is
  the one further left in the first frame (the higher one on a tie), so the label is visible in
  the video: "the first digit drawn" would not be, as both are drawn alike.

A sample is ``{"video": (1, frames, size, size) float32, "label": () int64}``, pixels scaled to
[0, 1] and standardised by the mean and std of the first 256 train videos (stored in the run
directory). ``nepa shards write mnist.npz OUT --kind moving_mnist --split train`` writes the
videos as ``.npy`` uint8 ``(frames, size, size)`` for streaming with ``array_shards``
(``shape: [20, 64, 64], view: [1, 20, 64, 64], field: video``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from functools import lru_cache
from itertools import combinations_with_replacement
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from torch.utils.data import Dataset

from nepa.batch import LABEL, LABEL_FIELD, Batch, FieldSpec
from nepa.data.base import DATASETS
from nepa.data.paths import resolve_path
from nepa.data.shards.sources import Source, source
from nepa.data.subset import SubsetConfig

DIGIT = 28
PAIRS = [f"{a}+{b}" for a, b in combinations_with_replacement(range(10), 2)]  # 55 classes
DIRECTIONS = ["E", "NE", "N", "NW", "W", "SW", "S", "SE"]
STATS_VIDEOS = 256  # train videos the normalisation statistics are computed over


class MovingMnistConfig(SubsetConfig):
    kind: Literal["moving_mnist"] = "moving_mnist"
    path: str = Field("${NEPA_DATA_DIR}/mnist.npz", description="MNIST as x_train/x_test arrays")
    frames: PositiveInt = 20
    size: PositiveInt = Field(64, description="frame height and width in pixels")
    digits: PositiveInt = 2
    speed: PositiveFloat = Field(3.6, description="pixels per frame (0.1 of the free range)")
    train_videos: PositiveInt = 10000
    test_videos: PositiveInt = 2000
    label: Literal["pair", "direction"] = "pair"
    seed: int = Field(0, description="which videos: video i of a split is fixed by (seed, i)")

    @model_validator(mode="after")
    def _check(self) -> MovingMnistConfig:
        if self.size <= DIGIT:
            raise ValueError(
                f"size={self.size} leaves an MNIST digit ({DIGIT} pixels) no room to move: "
                f"use a size above {DIGIT}"
            )
        if self.speed >= self.size - DIGIT:
            raise ValueError(
                f"speed={self.speed} pixels per frame is not below the room a digit has to move "
                f"in ({self.size - DIGIT} = size - {DIGIT}): lower the speed or raise the size"
            )
        if self.label == "pair" and self.digits != 2:
            raise ValueError(f"label 'pair' needs digits=2, got digits={self.digits}")
        return self

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"video": FieldSpec((1, self.frames, self.size, self.size)), LABEL: LABEL_FIELD}

    def input_transform(self, normalization: dict) -> Callable[[Any], Batch]:
        """A raw uint8 ``(frames, size, size)`` video -> a sample."""
        mean, std = normalization["mean"], normalization["std"]
        shape = (self.frames, self.size, self.size)

        def apply(x: Any) -> Batch:
            x = torch.as_tensor(np.asarray(x))
            if tuple(x.shape) != shape:
                raise ValueError(f"expected a {shape} uint8 video, got {tuple(x.shape)}")
            return {"video": ((x.float() / 255 - mean) / std)[None]}

        return apply


@lru_cache(maxsize=2)
def mnist_digits(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N, 28, 28) uint8 and labels (N,) of one split, read without pickle."""
    with np.load(path, allow_pickle=False) as f:
        keys = (f"x_{split}", f"y_{split}")
        missing = [k for k in keys if k not in f.files]
        if missing:
            raise ValueError(
                f"{path} lacks {missing}: expected MNIST as x_train/y_train/x_test/y_test"
            )
        x, y = f[keys[0]], f[keys[1]]
    if x.ndim != 3 or x.shape[1:] != (DIGIT, DIGIT) or x.dtype != np.uint8:
        raise ValueError(f"{path}: {keys[0]} is {x.dtype}{x.shape}, expected uint8 (N, 28, 28)")
    return x, y.astype(np.int64)


class Trajectories:
    """The random draws of every video of one split (digits, starts, directions): cheap to keep,
    so labels are known without rendering. ``render(i)`` draws video ``i``."""

    def __init__(self, cfg: MovingMnistConfig, split: str) -> None:
        self.x, y = mnist_digits(str(resolve_path(cfg.path)), split)
        n = cfg.train_videos if split == "train" else cfg.test_videos
        free = cfg.size - DIGIT
        draws = [np.random.default_rng([cfg.seed, zlib.crc32(split.encode()), i]) for i in range(n)]
        self.digit = np.stack([r.integers(0, len(self.x), cfg.digits) for r in draws])  # (N, K)
        self.start = np.stack([r.uniform(0, free, (cfg.digits, 2)) for r in draws])  # (N, K, 2)
        self.angle = np.stack([r.uniform(0, 2 * np.pi, cfg.digits) for r in draws])  # (N, K)
        self.cfg, self.free = cfg, free
        classes = y[self.digit]  # (N, K)
        lo, hi = classes.min(1), classes.max(1)
        # index of (lo, hi) among combinations_with_replacement(range(10), 2)
        self.pairs = lo * 10 - lo * (lo - 1) // 2 + (hi - lo)
        # the first digit: leftmost in frame 0 (start column), then the higher one (row)
        first = np.lexsort((self.start[:, :, 0].T, self.start[:, :, 1].T), axis=0)[0]
        angle = self.angle[np.arange(n), first]
        self.directions = np.round(angle / (np.pi / 4)).astype(np.int64) % 8
        self.labels = self.pairs if cfg.label == "pair" else self.directions

    def __len__(self) -> int:
        return len(self.digit)

    def render(self, i: int) -> np.ndarray:
        """Video ``i``: uint8 (frames, size, size)."""
        cfg = self.cfg
        video = np.zeros((cfg.frames, cfg.size, cfg.size), np.uint8)
        for k in range(cfg.digits):
            # screen coordinates (row, col); north is up, so the row velocity is -sin
            a = self.angle[i, k]
            pos = self.start[i, k].copy()
            vel = cfg.speed * np.array([-math.sin(a), math.cos(a)])
            digit = self.x[self.digit[i, k]]
            for t in range(cfg.frames):
                r, c = np.round(pos).astype(int)
                view = video[t, r : r + DIGIT, c : c + DIGIT]
                np.maximum(view, digit, out=view)
                pos += vel
                for ax in range(2):  # reflect off the walls
                    if pos[ax] < 0 or pos[ax] > self.free:
                        pos[ax] = -pos[ax] if pos[ax] < 0 else 2 * self.free - pos[ax]
                        vel[ax] = -vel[ax]
        return video


@lru_cache(maxsize=4)
def train_statistics(cfg: MovingMnistConfig) -> tuple[float, float]:
    """Mean and std of the pixels (scaled to [0, 1]) of the first 256 train videos."""
    traj = Trajectories(cfg.model_copy(update={"train_videos": STATS_VIDEOS}), "train")
    v = np.stack([traj.render(i) for i in range(len(traj))]).astype(np.float64) / 255
    return float(v.mean()), float(v.std())


class MovingMnist(Dataset):
    """``ds[i]`` (or ``ds[(i, aug_seed)]``: no augmentation) -> ``{"video", "label"}``."""

    def __init__(self, cfg: MovingMnistConfig, split: str) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"moving_mnist has the splits 'train' and 'test', not {split!r}")
        self.traj = Trajectories(cfg, split)
        self.idx = cfg.pick(self.traj.labels, split)
        self.labels = torch.as_tensor(self.traj.labels[self.idx])
        self.classes = PAIRS if cfg.label == "pair" else DIRECTIONS
        self.num_classes = len(self.classes)
        self.mean, self.std = train_statistics(cfg)
        self.normalization = {"field": "video", "mean": self.mean, "std": self.std}

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, key: int | tuple[int, int]) -> Batch:
        index = key[0] if isinstance(key, tuple) else key
        video = torch.from_numpy(self.traj.render(int(self.idx[index])))
        x = (video.float() / 255 - self.mean) / self.std
        return {"video": x[None], LABEL: self.labels[index]}


@DATASETS.register("moving_mnist", config=MovingMnistConfig)
def build_moving_mnist(cfg: MovingMnistConfig, *, split: str, train: bool) -> MovingMnist:
    return MovingMnist(cfg, split)


@source(
    "moving_mnist",
    help="moving_mnist: Moving MNIST generated from an MNIST npz (x_train/y_train/x_test/"
    "y_test) with the default moving_mnist settings, written as .npy uint8 (frames, size, size) "
    "with the digit pair as .cls and both labels in .json",
)
def moving_mnist_source(path: Path, split: str) -> Source:
    cfg = MovingMnistConfig(path=str(path))
    traj = Trajectories(cfg, split)
    pairs, directions = traj.pairs, traj.directions

    def samples() -> Iterator[dict[str, Any]]:
        for i in range(len(traj)):
            yield {
                "__key__": f"{split}_{i:06d}",
                "npy": traj.render(i),
                "cls": int(pairs[i]),
                "json": {"pair": PAIRS[pairs[i]], "direction": DIRECTIONS[directions[i]]},
            }

    return Source("moving_mnist", "array", list(PAIRS), samples())
