"""Safe encoding and decoding of WebDataset sample fields, chosen by file extension.

Decoding goes through the decoder registry of :mod:`nepa.data.decode` (one entry per extension;
it never unpickles). Members whose extension marks a Python pickle (``.pyd``, ``.pickle``,
``.pkl``, ``.pth``, ``.pt``) make a shard refused unless the user opts in, and even then they
are dropped, never unpickled.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from torchvision.io import encode_png

from nepa.data.decode import (
    ARRAY_EXTS,
    AUDIO_EXTS,
    DECODERS,
    IMAGE_EXTS,
    PAYLOAD_EXTS,
    PICKLE_EXTS,
    TEXT_EXTS,
    DecodeError,
    decode_audio_bytes,
    decode_bytes,
    decode_image_bytes,
    decode_npy_bytes,
    payload_exts,
)

__all__ = [
    "ARRAY_EXTS",
    "AUDIO_EXTS",
    "IMAGE_EXTS",
    "PAYLOAD_EXTS",
    "PICKLE_EXTS",
    "TEXT_EXTS",
    "DecodeError",
    "PickleMemberError",
    "check_pickles",
    "decode_audio_bytes",
    "decode_field",
    "decode_image_bytes",
    "decode_npy_bytes",
    "encode_field",
    "encode_png_array",
    "field_ext",
    "payload_field",
    "pickle_fields",
]


class PickleMemberError(ValueError):
    """A shard holds a member that only a pickle loader could read."""


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


def decode_field(field: str, data: bytes) -> Any:
    """Decode one field by its extension (see :data:`nepa.data.decode.DECODERS`); fields with
    an extension no decoder is registered for stay bytes."""
    ext = field_ext(field)
    return decode_bytes(ext, data) if ext in DECODERS else data


def payload_field(sample: dict[str, Any], exts: frozenset[str] | None = None) -> str:
    """The name of the sample's payload field: the one field with an extension in ``exts``
    (default: every registered payload extension, image, audio, array or a user's own)."""
    exts = payload_exts() if exts is None else exts
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


def label_of(sample: dict[str, Any]) -> int:
    """The sample's ``.cls`` label, or -1 without one; DecodeError if it is not an integer."""
    label = sample.get("cls")
    try:
        return int(label.decode()) if label is not None else -1
    except ValueError:
        raise DecodeError(f".cls is not an integer: {label[:20]!r}") from None
