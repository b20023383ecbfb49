"""Safe encoding and decoding of WebDataset sample fields, chosen by file extension.

Decoding never unpickles: images go through torchvision, audio through soundfile, ``.npy``
through ``np.load(allow_pickle=False)``, ``.json`` through :mod:`json`, text as UTF-8. Members
whose extension marks a Python pickle (``.pyd``, ``.pickle``, ``.pkl``, ``.pth``, ``.pt``) make a shard
refused unless the user opts in, and even then they are dropped, never unpickled.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, encode_png

IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "webp", "gif"})
AUDIO_EXTS = frozenset({"wav", "flac", "ogg"})
ARRAY_EXTS = frozenset({"npy"})
TEXT_EXTS = frozenset({"txt", "cls", "json"})
PICKLE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt"})
PAYLOAD_EXTS = IMAGE_EXTS | AUDIO_EXTS | ARRAY_EXTS


class PickleMemberError(ValueError):
    """A shard holds a member that only a pickle loader could read."""


class DecodeError(ValueError):
    """A field could not be decoded; ``kind`` says which check failed ("decode" or "shape")."""

    def __init__(self, message: str, kind: str = "decode") -> None:
        super().__init__(message)
        self.kind = kind


def field_ext(field: str) -> str:
    """The last extension of a sample field: ``"seg.png"`` -> ``"png"``."""
    return field.rsplit(".", 1)[-1].lower()


def pickle_fields(sample: dict[str, Any]) -> list[str]:
    return [k for k in sample if not k.startswith("__") and field_ext(k) in PICKLE_EXTS]


def check_pickles(sample: dict[str, Any], allow_pickle: bool, where: str) -> dict[str, Any]:
    """Refuse a sample with pickle members, or drop those members if the user opted in."""
    found = pickle_fields(sample)
    if not found:
        return sample
    if not allow_pickle:
        raise PickleMemberError(
            f"{where}: sample {sample.get('__key__')!r} has member(s) "
            f"{', '.join('.' + f for f in found)}, which only a pickle loader can read; nepa never "
            "unpickles data it did not write. Rewrite the shards with safe encodings "
            "(.npy/.json/.png/.flac), or set data.allow_pickle=true to read these shards while "
            "ignoring those members."
        )
    return {k: v for k, v in sample.items() if k not in found}


# ---------------------------------------------------------------- decoding


def decode_image_bytes(data: bytes) -> torch.Tensor:
    """Encoded image -> (C, H, W) uint8 with its own channel count."""
    try:
        img_CHW = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED
        )
    except (RuntimeError, ValueError) as e:
        raise DecodeError(f"undecodable image ({e})") from None
    if img_CHW.dtype != torch.uint8 or img_CHW.ndim != 3:
        raise DecodeError(f"expected one 8-bit image, got {img_CHW.dtype} {tuple(img_CHW.shape)}")
    return img_CHW


def decode_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Encoded audio -> ((frames, channels) float32 in [-1, 1], sample rate)."""
    import soundfile as sf

    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, TypeError, ValueError) as e:
        raise DecodeError(f"undecodable audio ({e})") from None
    if len(wave) == 0:
        raise DecodeError("audio has no frames")
    return wave, int(rate)


def decode_npy_bytes(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:  # also raised for object arrays, which would need pickle
        raise DecodeError(f"undecodable .npy ({e})") from None
    except (OSError, EOFError) as e:
        raise DecodeError(f"truncated or invalid .npy ({e})") from None


def decode_field(field: str, data: bytes) -> Any:
    """Decode one field by its extension; unknown extensions stay bytes."""
    ext = field_ext(field)
    if ext in IMAGE_EXTS:
        return decode_image_bytes(data)
    if ext in AUDIO_EXTS:
        return decode_audio_bytes(data)
    if ext in ARRAY_EXTS:
        return decode_npy_bytes(data)
    try:
        if ext == "json":
            return json.loads(data)
        if ext == "cls":
            return int(data.decode().strip())
        if ext == "txt":
            return data.decode("utf-8")
    except (UnicodeDecodeError, ValueError) as e:
        raise DecodeError(f"undecodable .{ext} ({e})") from None
    return data


def payload_field(sample: dict[str, Any], exts: frozenset[str] = PAYLOAD_EXTS) -> str:
    """The name of the sample's payload field (its image, audio or array)."""
    found = [k for k in sample if not k.startswith("__") and field_ext(k) in exts]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise DecodeError(
            f"sample has {what} payload field(s) with an extension in {sorted(exts)} "
            f"(fields: {sorted(k for k in sample if not k.startswith('__'))})",
            kind="missing",
        )
    return found[0]


# ---------------------------------------------------------------- encoding


def encode_field(ext: str, value: Any) -> bytes:
    """Encode one field for writing. ``bytes`` are stored as given (already encoded);
    arrays become ``.png`` (uint8 images) or ``.npy``; ints ``.cls``; str ``.txt``; dicts ``.json``.
    """
    ext = ext.lower()
    if ext in PICKLE_EXTS:
        raise ValueError(f".{ext} fields are pickles; nepa writes only safe encodings")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if ext == "png":
        return encode_png_array(np.asarray(value))
    if ext == "npy":
        arr = np.asarray(value)
        if arr.dtype == object:
            raise ValueError("object arrays need pickle; store numeric arrays in .npy")
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue()
    if ext == "cls":
        return str(int(value)).encode()
    if ext == "txt":
        return str(value).encode("utf-8")
    if ext == "json":
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    raise ValueError(
        f"don't know how to encode a {type(value).__name__} as .{ext}: pass encoded bytes, "
        "or use .png/.npy/.cls/.txt/.json"
    )


def encode_png_array(arr: np.ndarray) -> bytes:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> PNG bytes (lossless, deterministic)."""
    if (
        arr.dtype != np.uint8
        or arr.ndim not in (2, 3)
        or (arr.ndim == 3 and arr.shape[2] not in (1, 3))
    ):
        raise ValueError(f"PNG needs uint8 (H, W) or (H, W, 1|3), got {arr.dtype} {arr.shape}")
    hwc = arr[..., None] if arr.ndim == 2 else arr
    return (
        encode_png(torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))).numpy().tobytes()
    )
