"""The decoder registry: one entry per file extension, used by every reader; a user's module
adds an extension and the ImageFolder reader and the shard writer both accept it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from nepa.data.decode import (
    DECODERS,
    DecodeError,
    decode_bytes,
    decoder,
    exts_of,
    payload_exts,
)
from nepa.data.folder import read_image_folder
from nepa.data.shards.codecs import decode_field, payload_field
from nepa.data.shards.manifest import read_manifest
from nepa.data.shards.write import write_source
from nepa.registry import RegistryError


def _image(fmt: str, c: int = 3) -> bytes:
    px = np.arange(4 * 5 * c, dtype=np.uint8).reshape(4, 5, c)
    buf = io.BytesIO()
    Image.fromarray(px.squeeze(-1) if c == 1 else px).save(buf, format=fmt)
    return buf.getvalue()


def _audio(fmt: str) -> bytes:
    buf = io.BytesIO()
    wave = np.linspace(-0.5, 0.5, 160, dtype=np.float32)
    sf.write(buf, wave, 8000, format=fmt, subtype={"WAV": "PCM_16", "FLAC": "PCM_16"}.get(fmt))
    return buf.getvalue()


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.float32).reshape(2, 3), allow_pickle=False)
    return buf.getvalue()


# One good example per built-in extension: a new entry without one fails test_every_decoder.
GOOD = {
    "png": lambda: _image("PNG"),
    "jpg": lambda: _image("JPEG"),
    "jpeg": lambda: _image("JPEG"),
    "webp": lambda: _image("WEBP"),
    "gif": lambda: _image("GIF", c=1),
    "wav": lambda: _audio("WAV"),
    "flac": lambda: _audio("FLAC"),
    "ogg": lambda: _audio("OGG"),
    "npy": _npy,
    "json": lambda: b'{"a": [1, 2]}',
    "cls": lambda: b"7\n",
    "txt": lambda: "héllo".encode(),
}


@pytest.fixture
def user_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test are dropped afterwards."""
    monkeypatch.setattr(DECODERS, "_items", dict(DECODERS._items))


@pytest.mark.parametrize("ext", DECODERS.names())
def test_every_decoder(ext: str) -> None:
    assert ext in GOOD, f"add a good .{ext} example to GOOD"
    out = decode_bytes(ext, GOOD[ext]())
    modality = DECODERS.get(ext).modality
    if modality == "image":
        assert out.dtype == torch.uint8 and out.shape[1:] == (4, 5) and out.shape[0] in (1, 3)
    elif modality == "audio":
        wave, rate = out
        assert wave.shape == (160, 1) and wave.dtype == np.float32 and rate == 8000
        assert np.abs(wave).max() <= 1.0
    elif modality == "array":
        np.testing.assert_array_equal(out, np.arange(6, dtype=np.float32).reshape(2, 3))
    else:
        assert out == {"json": {"a": [1, 2]}, "cls": 7, "txt": "héllo"}[ext]
    with pytest.raises(DecodeError):
        decode_bytes(ext, b"\xff\xfe not a valid file \x00")


def test_kinds_of_the_built_ins() -> None:
    assert exts_of("image") == {"png", "jpg", "jpeg", "webp", "gif"}
    assert exts_of("audio") == {"wav", "flac", "ogg"} and exts_of("array") == {"npy"}
    assert payload_exts() == exts_of("image") | exts_of("audio") | exts_of("array")


def test_fields_without_a_decoder_stay_bytes_and_unknown_is_listed() -> None:
    assert decode_field("seg.raw", b"\x00\x01") == b"\x00\x01"
    assert decode_field("meta.JSON", b'{"k": 1}') == {"k": 1}
    with pytest.raises(RegistryError, match="known: .*png"):
        decode_bytes("raw", b"")


def test_npy_never_unpickles() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError, match="undecodable .npy"):
        decode_bytes("npy", buf.getvalue())


@pytest.mark.usefixtures("user_registry")
def test_registration_rules() -> None:
    with pytest.raises(RegistryError, match="already registered"):
        decoder("png", modality="image")(lambda data: data)
    for bad in ("PNG", ".png"):
        with pytest.raises(ValueError, match="lower case without a dot"):
            decoder(bad)(lambda data: data)
    with pytest.raises(ValueError, match="pickle"):
        decoder("pkl")(lambda data: data)


def _decode_bmp(data: bytes) -> torch.Tensor:
    try:
        img = np.asarray(Image.open(io.BytesIO(data), formats=["BMP"]))
    except OSError as e:
        raise DecodeError(f"undecodable .bmp ({e})") from None
    return torch.from_numpy(img.reshape(*img.shape[:2], -1).copy()).permute(2, 0, 1)


@pytest.mark.usefixtures("user_registry")
def test_user_extension_reaches_folder_reader_and_shard_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEPA_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    px = {
        f"cls{c}/im{i}": rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        for c in (0, 1)
        for i in (0, 1)
    }
    root = tmp_path / "tree"
    for stem, a in px.items():
        path = root / "train" / f"{stem}.bmp"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path, format="BMP")
    with pytest.raises(FileNotFoundError):  # no decoder for .bmp yet: no files seen
        read_image_folder(root, "train")

    decoder("bmp", modality="image")(_decode_bmp)
    assert "bmp" in exts_of("image")
    assert payload_field({"__key__": "k", "bmp": b"", "cls": b"1"}) == "bmp"
    got = read_image_folder(root, "train")
    assert got.classes == ["cls0", "cls1"] and got.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(got.images, np.stack(list(px.values())))
    info = write_source(str(root), tmp_path / "shards", shuffle_seed=None)
    manifest, _ = read_manifest(str(tmp_path / "shards"))
    assert info.samples == 4 and info.fields == ["bmp", "cls"] and manifest.modality == "image"
    pixels = np.stack(list(px.values())).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(info.mean, pixels.mean(0), rtol=1e-9)


def test_a_corrupt_png_carries_libpngs_message_and_prints_nothing(capfd) -> None:
    import torch
    from torchvision.io import encode_png

    from nepa.data.decode import DecodeError, decode_image_bytes

    good = encode_png(torch.zeros(3, 8, 8, dtype=torch.uint8)).numpy().tobytes()
    bad = good[:40] + b"x" * 20 + good[60:]
    with pytest.raises(DecodeError, match="libpng error"):
        decode_image_bytes(bad)
    assert decode_image_bytes(good).shape == (3, 8, 8)  # the next image decodes as usual
    out, err = capfd.readouterr()
    assert "libpng" not in err + out
