"""One image for the pictures: a PNG/JPEG file, or item N of a split of the run's data.

Files are decoded with torchvision, converted to the run's ``data.channels``, then go through
the run's own eval transform (resize to cover + centre crop to ``data.image_size``, normalise
with the run's mean/std), exactly what evaluation feeds the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from nepa.data.base import build_dataset
from nepa.data.images import ImageDataConfig, ImageDataset, eval_transform
from nepa.viz.model import VizError

Transform = Callable[[torch.Tensor], torch.Tensor]  # uint8 (C, H, W) -> float32 (C, *size_hw)

#: ``test:3``, ``train:0``: item N of a split (when no file of that name exists)
SPLIT_ITEM = re.compile(r"([A-Za-z_][\w-]*):(\d+)")
_MODES = {
    1: ImageReadMode.GRAY,
    2: ImageReadMode.GRAY_ALPHA,
    3: ImageReadMode.RGB,
    4: ImageReadMode.RGB_ALPHA,
}


@dataclass
class ImageInput:
    """x_CHW: the normalised model input (C, H, W); show_HW3: the same pixels in [0, 1] for
    display (H, W, 3; one channel repeated for grey images); name: where it came from."""

    x_CHW: torch.Tensor
    show_HW3: torch.Tensor
    name: str


def load_image_input(spec: str, cfg: ImageDataConfig) -> ImageInput:
    """``spec``: an image file path, or ``SPLIT:N`` (e.g. ``test:0``) for item N of that split
    of the run's dataset (eval transform). Bad input raises VizError; unreadable files OSError."""
    match = SPLIT_ITEM.fullmatch(spec)
    if match and not Path(spec).exists():
        return _split_item(cfg, match[1], int(match[2]))
    return _image_file(cfg, Path(spec))


def _image_file(cfg: ImageDataConfig, path: Path) -> ImageInput:
    if not path.is_file():
        raise VizError(
            f"image file not found: {path} (or give SPLIT:N, e.g. test:0, for an item of the "
            "run's data)"
        )
    if cfg.channels not in _MODES:
        raise VizError(f"cannot convert an image file to {cfg.channels} channels (1 to 4 only)")
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    try:
        img_CHW = decode_image(data, mode=_MODES[cfg.channels])
    except RuntimeError as e:
        raise VizError(f"cannot decode {path} as an image: {e}") from None
    if img_CHW.ndim == 4:  # an animated GIF: (frames, C, H, W); its first frame
        img_CHW = img_CHW[0]
    img_CHW = TF.to_dtype(img_CHW, torch.uint8, scale=True)  # 16-bit PNGs -> uint8 like the data
    img_CHW = _to_channels(img_CHW, cfg.channels)
    transform = run_eval_transform(cfg)
    x_CHW = transform(img_CHW)
    return ImageInput(x_CHW, display_pixels(x_CHW, transform), path.name)


def _to_channels(img_CHW: torch.Tensor, channels: int) -> torch.Tensor:
    """Some decoders (GIF) ignore the requested mode: convert to the run's channel count."""
    c = img_CHW.shape[0]
    if c == channels:
        return img_CHW
    if c in (2, 4):  # drop alpha
        img_CHW, c = img_CHW[: c - 1], c - 1
    if c == 3 and channels == 1:
        return TF.rgb_to_grayscale(img_CHW)
    if c == 1 and channels == 3:
        return TF.grayscale_to_rgb(img_CHW)
    if c == channels:
        return img_CHW
    raise VizError(f"cannot convert a {c}-channel image to the run's {channels} channels")


def _split_item(cfg: ImageDataConfig, split: str, index: int) -> ImageInput:
    try:
        ds = build_dataset(cfg, split=split, train=False)
    except (ValueError, FileNotFoundError) as e:
        raise VizError(f"cannot load split {split!r} of the run's data: {e}") from None
    if not 0 <= index < len(ds):
        raise VizError(f"{split}:{index} is out of range: split {split!r} has {len(ds)} items")
    item = ds[index]
    x_CHW, label = item["image"], int(item["label"])
    return ImageInput(
        x_CHW,
        display_pixels(x_CHW, run_eval_transform(cfg, ds)),
        f"{split}:{index} (label {label})",
    )


def run_eval_transform(cfg: ImageDataConfig, dataset: Dataset | None = None) -> Transform:
    """The run's eval transform. With mean/std in the config it is built from them; otherwise
    they were computed from the train split (and cached) when the dataset was built, and only
    the built dataset holds them, so its transform is used (``dataset`` or the test split)."""
    if cfg.mean is not None and cfg.std is not None:
        return eval_transform(cfg, cfg.mean, cfg.std)
    if dataset is None:
        try:
            dataset = build_dataset(cfg, split="test", train=False)
        except (ValueError, FileNotFoundError) as e:
            raise VizError(f"cannot load the run's data for its mean/std: {e}") from None
    if not isinstance(dataset, ImageDataset):
        raise VizError(
            f"data {cfg.kind!r} has no mean/std in its config and its dataset is not an "
            "ImageDataset: set data.mean and data.std"
        )
    return dataset._eval_tf  # the transform with the dataset's computed statistics


def display_pixels(x_CHW: torch.Tensor, transform: Transform) -> torch.Tensor:
    """Undo the normalisation for display: (C, H, W) -> (H, W, 3) in [0, 1].

    The transform is per-channel affine on constant images (resize/crop leave them constant),
    so black and white through it give each channel's offset and scale exactly.
    """
    C, H, W = x_CHW.shape
    lo = transform(torch.zeros(C, H, W, dtype=torch.uint8))
    hi = transform(torch.full((C, H, W), 255, dtype=torch.uint8))
    pixels = ((x_CHW - lo) / (hi - lo)).clamp(0, 1)
    rgb = pixels[:3] if C >= 3 else pixels[:1].expand(3, H, W)
    return rgb.permute(1, 2, 0).contiguous()
