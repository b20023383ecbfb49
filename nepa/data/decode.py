"""Decoders of encoded files, one registry entry per file extension: the one place where nepa
turns the bytes of an image, a recording, an array or a label into data.

Used by the ImageFolder reader (:mod:`nepa.data.folder`), the shard writer and verifier, and the
shard streams. Decoding never unpickles: images go through torchvision, audio through soundfile,
``.npy`` through ``np.load(allow_pickle=False)``, ``.json`` through :mod:`json`, text as UTF-8.

An entry's ``modality`` marks payload extensions (the sample's data: ``image``, ``audio``,
``array``) apart from metadata (``cls``, ``json``, ``txt``: ``modality=None``). A user's own
module adds an extension, and every reader of image folders and shards then accepts it::

    from nepa.data.decode import DecodeError, decoder

    @decoder("bmp", modality="image")
    def decode_bmp(data: bytes) -> torch.Tensor:  # (C, H, W) uint8, like the built-in images
        ...  # raise DecodeError for bad bytes: readers count and report it
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from nepa.registry import Registry


class DecodeError(ValueError):
    """A field could not be decoded; ``kind`` says which check failed (see
    ``nepa.data.shards.health.KINDS``: "decode", "shape", "short", "nonfinite", ...)."""

    def __init__(self, message: str, kind: str = "decode") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class FieldDecoder:
    """``decode(bytes) -> data``, raising :class:`DecodeError` for bad bytes; ``modality`` is
    the payload kind of the extension, or None for metadata."""

    decode: Callable[[bytes], Any]
    modality: str | None = None


DECODERS: Registry[FieldDecoder] = Registry("decoder (file extension)")
# Python pickles: never decoded (shard readers refuse or drop them, see nepa.data.shards.codecs).
PICKLE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt"})


def decoder(*exts: str, modality: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(bytes) -> data`` for each extension (lower case, no dot)."""

    def deco(fn: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        for ext in exts:
            if ext != ext.lower() or ext.startswith("."):
                raise ValueError(f"register extensions in lower case without a dot, not {ext!r}")
            if ext in PICKLE_EXTS:
                raise ValueError(f".{ext} is a Python pickle: nepa never decodes one")
            DECODERS.register(ext)(FieldDecoder(fn, modality))
        return fn

    return deco


def decode_bytes(ext: str, data: bytes) -> Any:
    """Decode ``data`` by its extension; raises :class:`DecodeError` for bad bytes and
    :class:`~nepa.registry.RegistryError` (listing the known ones) for an unknown extension."""
    return DECODERS.get(ext).decode(data)


def exts_of(modality: str) -> frozenset[str]:
    """The registered extensions of one payload modality, e.g. ``exts_of("image")``."""
    return frozenset(e for e in DECODERS.names() if DECODERS.get(e).modality == modality)


def payload_exts() -> frozenset[str]:
    """Every registered extension that holds a sample's data (any modality)."""
    return frozenset(e for e in DECODERS.names() if DECODERS.get(e).modality is not None)


# ---------------------------------------------------------------- built-in decoders


# A private temp file per process (a forked loader worker opens its own: an inherited one would
# share its file offset with the parent and the other workers).
_stderr_fd: int | None = None
_stderr_pid: int | None = None


@contextmanager
def _c_stderr_captured() -> Iterator[list[str]]:
    """Capture what C libraries write to file descriptor 2 (libpng prints its error there and
    raises only "Internal error."): yields a list that holds the text afterwards. A few
    system calls when nothing is written (about 5 us per image)."""
    global _stderr_fd, _stderr_pid
    if _stderr_fd is None or _stderr_pid != os.getpid():
        _stderr_pid = os.getpid()
        _stderr_fd, name = tempfile.mkstemp(prefix="nepa-decoder-stderr-")
        os.unlink(name)  # anonymous: gone with the process
    saved = os.dup(2)
    os.dup2(_stderr_fd, 2)
    text: list[str] = []
    try:
        yield text
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        n = os.lseek(_stderr_fd, 0, os.SEEK_CUR)
        if n:  # the decoder said something: keep it for the error, start the file afresh
            text.append(os.pread(_stderr_fd, n, 0).decode(errors="replace").strip())
            os.ftruncate(_stderr_fd, 0)
            os.lseek(_stderr_fd, 0, os.SEEK_SET)


@decoder("png", "jpg", "jpeg", "webp", "gif", modality="image")
def decode_image_bytes(data: bytes) -> torch.Tensor:
    """Encoded image -> (C, H, W) uint8 with its own channel count (gray stays C=1). A bad
    image is a DecodeError carrying the decoder's own message (not printed on stderr)."""
    try:
        with _c_stderr_captured() as said:
            img_CHW = decode_image(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED
            )
    except (RuntimeError, ValueError) as e:
        detail = "; ".join(x for x in [*said, str(e).strip()] if x)
        raise DecodeError(f"undecodable image ({detail})") from None
    if img_CHW.dtype != torch.uint8 or img_CHW.ndim != 3:
        raise DecodeError(f"expected one 8-bit image, got {img_CHW.dtype} {tuple(img_CHW.shape)}")
    return img_CHW


@decoder("wav", "flac", "ogg", modality="audio")
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


@decoder("npy", modality="array")
def decode_npy_bytes(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:  # also raised for object arrays, which would need pickle
        raise DecodeError(f"undecodable .npy ({e})") from None
    except (OSError, EOFError) as e:
        raise DecodeError(f"truncated or invalid .npy ({e})") from None


@decoder("json")
def decode_json_bytes(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:  # also UnicodeDecodeError
        raise DecodeError(f"undecodable .json ({e})") from None


@decoder("cls")
def decode_cls_bytes(data: bytes) -> int:
    try:
        return int(data.decode().strip())
    except ValueError as e:
        raise DecodeError(f"undecodable .cls ({e})") from None


@decoder("txt")
def decode_txt_bytes(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except ValueError as e:
        raise DecodeError(f"undecodable .txt ({e})") from None


# The built-in extensions by kind (the registry may hold more: use exts_of / payload_exts).
IMAGE_EXTS = exts_of("image")
AUDIO_EXTS = exts_of("audio")
ARRAY_EXTS = exts_of("array")
TEXT_EXTS = frozenset({"txt", "cls", "json"})
PAYLOAD_EXTS = payload_exts()
