"""Audio: the fbank front end, the audio folder dataset (FSDD naming, resampling, counted skips)
and the spectrogram encoder (patches on a (time, freq) grid, padding honoured)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from nepa.batch import FieldSpec
from nepa.config import ConfigError, apply_overrides, load_recipe
from nepa.data import fbank
from nepa.data.audio import AudioFolderConfig
from nepa.data.base import build_dataset
from nepa.data.fbank import crop_or_pad, front_end
from nepa.encoders.audio import SpectrogramEncoderConfig
from nepa.encoders.base import build_encoder
from nepa.eval.features import pool_features
from nepa.objectives.backbone import TokenBackbone
from nepa.predictor.config import PredictorConfig
from nepa.predictor.transformer import Predictor

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
FSDD = Path(os.environ.get("NEPA_DATA_DIR", "/nonexistent")) / "fsdd-recordings.tar.gz"


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEPA_CACHE_DIR", str(tmp_path / "cache"))


def _tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_front_end_is_the_audio_ssl_fbank() -> None:
    fb16 = front_end(_tone(1.0, 16000), 16000)
    assert fb16.shape == (98, 128)  # 25 ms windows every 10 ms over 1 s
    fb8 = front_end(_tone(1.0, 8000), 8000)  # resampled to 16 kHz first
    assert fb8.shape == (98, 128)
    # the tone's energy sits in the same mel bins either way
    assert fb8.mean(0).argmax() == fb16.mean(0).argmax()


def test_crop_or_pad() -> None:
    fb = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
    short = crop_or_pad(fb[:10], 32, None)
    assert short["length"] == 10 and (short["fbank"][10:] == 0).all()
    assert torch.equal(crop_or_pad(fb, 32, 7)["fbank"], crop_or_pad(fb, 32, 7)["fbank"])
    assert torch.equal(crop_or_pad(fb, 32, None)["fbank"], torch.from_numpy(fb[:32]))
    assert crop_or_pad(fb, 32, 7)["length"] == 32


def test_a_folder_with_bad_clips_counts_them(tmp_path: Path, caplog, monkeypatch) -> None:
    root = tmp_path / "rec"
    root.mkdir()
    for digit in range(3):
        for i in range(6):
            rate = 8000 if i % 2 else 16000
            sf.write(root / f"{digit}_ann_{i}.wav", _tone(0.5, rate, 300 + 100 * digit), rate)
    sf.write(root / "1_ann_9.wav", _tone(0.05, 8000), 8000)  # shorter than min_frames
    (root / "2_ann_8.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE")  # truncated
    (root / "readme.wav").write_bytes(b"")  # not named by the rule
    caplog.set_level(logging.INFO, logger="nepa.data")
    monkeypatch.setattr(fbank, "_logged_rates", set())  # each rate is logged once per process
    cfg = AudioFolderConfig(root=str(root), target_frames=32)
    train, test = (build_dataset(cfg, split=s, train=False) for s in ("train", "test"))
    assert (len(train), len(test)) == (3, 15)  # recordings 0-4 are the official test set
    text = caplog.text
    assert "resampling 8000 Hz clips to 16000 Hz" in text
    assert "'undecodable': 1" in text and "'shorter than 16 frames': 1" in text
    assert "'not named by the rule': 1" in text
    s = test[0]
    assert s["fbank"].shape == (32, 128) and s["length"] == 32 and s["label"] == 0
    assert set(cfg.fields) == {"fbank", "length", "label"}


@pytest.mark.parametrize("attn", ["causal", "bidirectional"])
def test_a_padded_clip_embeds_like_the_unpadded_one(attn: str) -> None:
    torch.manual_seed(0)
    cfg = SpectrogramEncoderConfig(patch_time=8, patch_freq=16)
    long = {"fbank": FieldSpec((64, 32)), "length": FieldSpec((), "int64")}
    short = {"fbank": FieldSpec((24, 32)), "length": FieldSpec((), "int64")}
    enc_long = build_encoder(cfg, dim=16, fields=long)
    enc_short = build_encoder(cfg, dim=16, fields=short)
    enc_short.load_state_dict(enc_long.state_dict())
    pred = Predictor(PredictorConfig(dim=16, depth=2, heads=2, attn=attn), n_axes=2)
    x = torch.randn(1, 24, 32)
    padded = {
        "fbank": torch.cat([x, 100 * torch.randn(1, 40, 32)], 1),
        "length": torch.tensor([24]),
    }
    a = TokenBackbone(enc_long, pred).eval()(padded, layers=[2])
    b = TokenBackbone(enc_short, pred).eval()(
        {"fbank": x, "length": torch.tensor([24])}, layers=[2]
    )
    assert a.keep.sum() == 3 * 2 and b.keep.all()
    for pool in ("mean", "last"):
        torch.testing.assert_close(pool_features(a, 0, pool), pool_features(b, 0, pool))


def test_scans_read_time_major_or_frequency_major() -> None:
    fields = {"fbank": FieldSpec((32, 32))}
    rows = build_encoder(SpectrogramEncoderConfig(), dim=8, fields=fields).coords
    cols = build_encoder(SpectrogramEncoderConfig(scan="column"), dim=8, fields=fields).coords
    assert rows[:2].tolist() == [[0, 0], [0, 1]] and cols[:2].tolist() == [[0, 0], [1, 0]]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.target_frames=100", "100 frames are not divisible by encoder.patch_time=16"),
        ("encoder.patch_freq=48", "128 mel bins are not divisible by encoder.patch_freq=48"),
    ],
)
def test_config_errors_name_both_numbers(override: str, message: str) -> None:
    cfg, _ = load_recipe(f"{RECIPES / 'fsdd.py'}:tiny")
    with pytest.raises(ConfigError, match=message):
        apply_overrides(cfg, [override])


@pytest.mark.skipif(not FSDD.is_file(), reason="needs ${NEPA_DATA_DIR}/fsdd-recordings.tar.gz")
def test_fsdd_official_and_speaker_splits() -> None:
    official = AudioFolderConfig()
    test = build_dataset(official, split="test", train=False)
    train = build_dataset(official, split="train", train=True)
    assert len(test) + len(train) == 3000 - 13  # 13 clips shorter than 16 frames, counted
    assert 290 <= len(test) <= 300 and test.num_classes == 10
    held_out = build_dataset(AudioFolderConfig(split_by="speaker"), split="test", train=False)
    assert set(held_out.speakers.tolist()) == {"theo"}
    crops = [train[(0, s)]["fbank"] for s in (1, 1, 2)]
    assert torch.equal(crops[0], crops[1])


def test_cached_resampler_equals_torchaudio_resample() -> None:
    x = torch.from_numpy(_tone(0.7, 8000))
    want = torchaudio.functional.resample(x, 8000, 16000)
    torch.testing.assert_close(fbank.resampler(8000, 16000)(x), want, rtol=0, atol=1e-5)
    assert fbank.resampler(8000, 16000) is fbank.resampler(8000, 16000)
