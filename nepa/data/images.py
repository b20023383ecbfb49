"""Image datasets: ``image_folder`` (a tree or tar archive of PNG/JPEG) and ``image_npz``.

Images stay in memory as uint8 CHW tensors and are converted on access: training samples get
``RandomResizedCrop`` + ``RandomHorizontalFlip`` seeded per sample, eval samples a resize (only
when the stored size differs) and a center crop. Both end with ``ToDtype`` + ``Normalize``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import PositiveInt, field_validator, model_validator
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from nepa.batch import LABEL, LABEL_FIELD, Batch, FieldSpec
from nepa.data.base import DATASETS
from nepa.data.cache import load_or_build
from nepa.data.folder import read_image_folder, source_key
from nepa.data.paths import file_fingerprint, resolve_path, stable_hash
from nepa.data.subset import SubsetConfig, subset_indices

log = logging.getLogger(__name__)

Images = np.ndarray | list[np.ndarray]  # (N, H, W, C) uint8, or N arrays (H, W, C) of mixed size
Key = int | tuple[int, int]


class ImageDataConfig(SubsetConfig):
    """Fields shared by image datasets.

    ``mean``/``std`` of None are computed per channel over the full train split and cached.
    ``limit_train`` applies to the split named "train", ``limit_test`` to any other split: a
    class-stratified random subset fixed by ``subset_seed``.
    """

    image_size: PositiveInt | tuple[PositiveInt, PositiveInt]
    channels: PositiveInt
    crop_scale: tuple[float, float] = (0.35, 1.0)
    hflip: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @field_validator("crop_scale")
    @classmethod
    def _check_crop_scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(
                f"crop_scale must satisfy 0 < min <= max <= 1 (fractions of the image area), "
                f"got {v}; e.g. crop_scale: [0.35, 1.0]"
            )
        return v

    @field_validator("std")
    @classmethod
    def _check_std(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and min(v) <= 0:
            raise ValueError(f"std values must be > 0, got {v}; or leave std unset to compute it")
        return v

    @model_validator(mode="after")
    def _check_stats_length(self) -> ImageDataConfig:
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.channels:
                raise ValueError(
                    f"{name} has {len(v)} value(s) but channels is {self.channels}: give one "
                    f"value per channel, or leave {name} unset to compute it from the train split"
                )
        return self

    @property
    def size_hw(self) -> tuple[int, int]:
        """Output (H, W) of every sample."""
        s = self.image_size
        return (s, s) if isinstance(s, int) else (s[0], s[1])

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"image": FieldSpec((self.channels, *self.size_hw)), LABEL: LABEL_FIELD}

    def input_transform(self, normalization: dict) -> Callable[[Any], Batch]:
        """An image (uint8 (C, H, W) tensor, (H, W, C) array or PIL image) -> ``{"image": x}``:
        resize to cover + centre crop to ``image_size``, normalised with the run's statistics."""
        mean = self.mean or normalization.get("mean")
        std = self.std or normalization.get("std")
        if mean is None or std is None:
            raise ValueError(
                "the run stored no image mean/std (a run from nepa 0.1.0?): set data.mean and "
                "data.std"
            )
        tf = eval_transform(self, tuple(mean), tuple(std))
        channels = self.channels

        def apply(image: Any) -> Batch:
            if isinstance(image, np.ndarray):
                img = torch.from_numpy(np.ascontiguousarray(image))
                img = img[None] if img.ndim == 2 else img.permute(2, 0, 1)
            elif isinstance(image, torch.Tensor):
                img = image if image.ndim == 3 else image[None]
            else:  # a PIL image
                img = TF.pil_to_tensor(image.convert("L" if channels == 1 else "RGB"))
            if img.dtype != torch.uint8 or img.shape[0] != channels:
                raise ValueError(
                    f"expected a uint8 image with {channels} channel(s), got {img.dtype} "
                    f"{tuple(img.shape)} (as (C, H, W))"
                )
            return {"image": tf(img)}

        return apply


class ImageFolderConfig(ImageDataConfig):
    """``root``: a folder or .tar/.tar.gz with ``<split>/<class>/<image>``."""

    kind: Literal["image_folder"] = "image_folder"
    root: str


class ImageNpzConfig(ImageDataConfig):
    """``path``: an .npz with uint8 images (N, H, W) or (N, H, W, C) and int labels (N,).

    Key names are formatted with the split (``x_{split}`` -> ``x_train``); an optional
    ``classes`` array gives the class names.
    """

    kind: Literal["image_npz"] = "image_npz"
    path: str
    x_key: str = "x_{split}"
    y_key: str = "y_{split}"

    @field_validator("x_key", "y_key")
    @classmethod
    def _check_key(cls, v: str) -> str:
        try:
            v.format(split="train")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"{v!r} is not a valid key pattern ({e!r}); the only placeholder is {{split}}, "
                "e.g. 'x_{split}'"
            ) from None
        return v


# ---------------------------------------------------------------- dataset


class ImageDataset(Dataset):
    """In-memory images; ``ds[i]`` or ``ds[(i, aug_seed)]`` ->
    ``{"image": (C, H, W) float32, "label": () int64}``."""

    def __init__(
        self,
        images: torch.Tensor | list[torch.Tensor],
        labels: torch.Tensor,
        classes: list[str],
        augment: CropFlip,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        eval_transform: Callable[[torch.Tensor], torch.Tensor],
        train: bool,
        normalization: dict | None = None,
    ) -> None:
        self.images = images  # (N, C, H, W) uint8, or N tensors (C, H, W)
        self.labels = labels  # (N,) int64
        self.classes = classes
        self.num_classes = len(classes)
        self.train = train
        self._augment, self._normalize = augment, normalize
        self._eval_tf = eval_transform
        self._extra: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.normalization = normalization or {}

    def augmented(
        self, extra: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> ImageDataset:
        """A training view of the same images (shared, not copied): ``view[(i, aug_seed)]`` is
        the seeded crop/flip, then ``extra`` on the uint8 (C, H, W) crop (e.g. RandAugment for
        fine-tuning), then normalisation."""
        view = copy.copy(self)
        view.train, view._extra = True, extra
        return view

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: Key) -> Batch:
        index, aug_seed = (key, None) if isinstance(key, int | np.integer) else key
        img_CHW = self.images[index]
        if not self.train or aug_seed is None:
            x = self._eval_tf(img_CHW)
        else:
            img_CHW = self._augment(img_CHW, aug_seed)
            x = self._normalize(img_CHW if self._extra is None else self._extra(img_CHW))
        return {"image": x, LABEL: self.labels[index]}


class CropFlip:
    """RandomResizedCrop + horizontal flip with the randomness fixed by a per-sample seed.

    uint8 (C, H, W) -> uint8 (C, *size_hw), via torchvision's ``resized_crop``. The crop is drawn
    as torchvision's RandomResizedCrop draws it (area fraction uniform in ``scale``, log aspect
    ratio uniform in [3/4, 4/3], 10 tries, then a centre crop), but from a ``random.Random``
    seeded per sample: torchvision's sampler takes the global torch generator, and forking and
    seeding that per sample cost more than the crop itself at 32x32 (``nepa bench loader``).
    The model's RNG is never touched.
    """

    def __init__(self, size_hw: tuple[int, int], scale: tuple[float, float], hflip: bool) -> None:
        self.size, self.scale, self.hflip = list(size_hw), scale, hflip
        self.log_ratio = (math.log(3 / 4), math.log(4 / 3))

    def params(self, rng: random.Random, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop."""
        area = height * width
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        lo, hi = 3 / 4, 4 / 3  # fallback: the largest centred crop within the ratio range
        if width / height < lo:
            w, h = width, round(width / lo)
        elif width / height > hi:
            w, h = round(height * hi), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img_CHW: torch.Tensor, seed: int) -> torch.Tensor:
        rng = random.Random(int(seed))
        top, left, h, w = self.params(rng, *img_CHW.shape[-2:])
        out = TF.resized_crop(img_CHW, top, left, h, w, self.size, antialias=True)
        return out.flip(-1) if self.hflip and rng.random() < 0.5 else out


def train_augment(cfg: ImageDataConfig) -> CropFlip:
    return CropFlip(cfg.size_hw, cfg.crop_scale, cfg.hflip)


def normalizer(mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """uint8 (..., C, H, W) -> float32 scaled to [0, 1] and normalised per channel."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def eval_transform(
    cfg: ImageDataConfig, mean: tuple[float, ...], std: tuple[float, ...]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, H, W) -> float32 (C, *size_hw): resize to cover + center crop when sizes
    differ, then normalise."""
    size = cfg.size_hw
    tail = normalizer(mean, std)

    def apply(img_CHW: torch.Tensor) -> torch.Tensor:
        h, w = img_CHW.shape[-2:]
        if (h, w) != size:
            scale = max(size[0] / h, size[1] / w)
            cover = [max(size[0], round(h * scale)), max(size[1], round(w * scale))]
            img_CHW = TF.center_crop(TF.resize(img_CHW, cover, antialias=True), list(size))
        return tail(img_CHW)

    return apply


# ---------------------------------------------------------------- helpers


def channel_stats(images: Images) -> np.ndarray:
    """Per-channel mean and std of uint8 pixels scaled to [0, 1]: (2, C) float64."""
    chunks = [images[i : i + 1024] for i in range(0, len(images), 1024)]
    c = chunks[0][0].shape[-1]
    n, s, s2 = 0, np.zeros(c), np.zeros(c)
    for chunk in chunks:
        for px in (chunk,) if isinstance(chunk, np.ndarray) else chunk:
            flat = px.reshape(-1, c).astype(np.float64) / 255.0
            n, s, s2 = n + len(flat), s + flat.sum(0), s2 + (flat**2).sum(0)
    mean = s / n
    return np.stack([mean, np.sqrt(np.maximum(s2 / n - mean**2, 0.0))])


def _check_data(
    cfg: ImageDataConfig, images: Images, labels: np.ndarray, classes: list[str], source: str
) -> None:
    """Raise, saying what to change, if the data does not fit the config or its classes."""
    if len(labels) == 0:
        raise ValueError(f"{source} has no images in this split")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(
            f"{source}: labels must lie in [0, {len(classes)}) (one per class), "
            f"found {labels.min()}..{labels.max()}"
        )
    found = sorted(
        {a.shape[-1] for a in ([images[0]] if isinstance(images, np.ndarray) else images)}
    )
    if found != [cfg.channels]:
        raise ValueError(
            f"channels: the config says {cfg.channels} but {source} has images with "
            f"{' and '.join(map(str, found))} channel(s); set channels: {found[0]}"
        )


def _to_tensors(images: Images) -> torch.Tensor | list[torch.Tensor]:
    """HWC numpy -> CHW uint8 tensors (contiguous, so each sample is read in one block)."""
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in images]


def make_dataset(
    cfg: ImageDataConfig,
    *,
    split: str,
    train: bool,
    images: Images,
    labels: np.ndarray,
    classes: list[str],
    source: str,
    train_stats: Callable[[], np.ndarray],
) -> ImageDataset:
    """Check, subset and wrap decoded images; ``train_stats`` is called only if mean/std are unset."""
    _check_data(cfg, images, labels, classes, source)
    limit = cfg.limit_for(split)
    if limit is not None and limit < len(labels):
        idx = subset_indices(labels, limit, cfg.subset_seed, split)
        images = images[idx] if isinstance(images, np.ndarray) else [images[i] for i in idx]
        labels = labels[idx]
    elif limit is not None:
        log.warning(
            "limit %d >= %d samples in split %r of %s: using all", limit, len(labels), split, source
        )
    mean, std = cfg.mean, cfg.std
    if mean is None or std is None:
        stats = train_stats()
        mean = tuple(float(v) for v in stats[0]) if mean is None else mean
        std = tuple(float(v) for v in stats[1]) if std is None else std
    return ImageDataset(
        _to_tensors(images),
        torch.as_tensor(labels, dtype=torch.int64),
        classes,
        train_augment(cfg),
        normalizer(mean, std),
        eval_transform(cfg, mean, std),
        train,
        image_normalization(mean, std),
    )


def image_normalization(mean: tuple[float, ...], std: tuple[float, ...]) -> dict:
    """What the run directory stores so that ``nepa.load_run`` rebuilds the eval transform."""
    return {"field": "image", "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _cached_stats(key: str, compute: Callable[[], Images]) -> np.ndarray:
    """(2, C) train-split mean/std, computed once per source and cached."""
    arrays = load_or_build(f"stats-{key}", ("stats",), lambda: {"stats": channel_stats(compute())})
    return arrays["stats"]


# ---------------------------------------------------------------- builders


@DATASETS.register("image_folder", config=ImageFolderConfig)
def build_image_folder(cfg: ImageFolderConfig, *, split: str, train: bool) -> ImageDataset:
    root = resolve_path(cfg.root)
    data = read_image_folder(root, split)

    def stats() -> np.ndarray:
        key = stable_hash(source_key(root, "train"), "folder-stats")
        return _cached_stats(key, lambda: read_image_folder(root, "train").images)

    return make_dataset(
        cfg,
        split=split,
        train=train,
        images=data.images,
        labels=data.labels,
        classes=data.classes,
        source=str(root),
        train_stats=stats,
    )


@DATASETS.register("image_npz", config=ImageNpzConfig)
def build_image_npz(cfg: ImageNpzConfig, *, split: str, train: bool) -> ImageDataset:
    path = resolve_path(cfg.path)
    with np.load(path, allow_pickle=False) as f:
        x, y = _npz_split(f, cfg, split, path)
        classes = _npz_classes(f, cfg, y)
    train_key = cfg.x_key.format(split="train")

    def stats() -> np.ndarray:
        def load() -> np.ndarray:
            with np.load(path, allow_pickle=False) as f:
                return _npz_split(f, cfg, "train", path)[0]

        return _cached_stats(file_fingerprint(path, train_key, "npz-stats"), load)

    return make_dataset(
        cfg,
        split=split,
        train=train,
        images=x,
        labels=y,
        classes=classes,
        source=str(path),
        train_stats=stats,
    )


def _npz_split(
    f: np.lib.npyio.NpzFile, cfg: ImageNpzConfig, split: str, path: object
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) uint8 and labels (N,) int64 of one split."""
    xk, yk = cfg.x_key.format(split=split), cfg.y_key.format(split=split)
    for k in (xk, yk):
        if k not in f.files:
            raise ValueError(
                f"{path} has no array {k!r} (split {split!r}); arrays: {', '.join(f.files)}"
            )
    x, y = f[xk], f[yk]
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) != len(y):
        raise ValueError(
            f"{path}: {xk!r} must be uint8 (N, H, W) or (N, H, W, C) with one label per image in "
            f"{yk!r}; got {x.dtype} {x.shape} and {y.shape} labels"
        )
    return (x[..., None] if x.ndim == 3 else x), y.astype(np.int64)


def _npz_classes(f: np.lib.npyio.NpzFile, cfg: ImageNpzConfig, y: np.ndarray) -> list[str]:
    if "classes" in f.files:
        return [str(c) for c in f["classes"]]
    n = int(y.max(initial=-1)) + 1
    for split in ("train", "test"):
        yk = cfg.y_key.format(split=split)
        if yk in f.files:
            n = max(n, int(f[yk].max(initial=-1)) + 1)
    return [str(i) for i in range(n)]
