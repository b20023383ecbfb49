"""Shards for every modality: audio (fbank statistics in the manifest, the front end in the
stream, short and broken clips counted), sensor arrays (NaN and inf windows counted) and Moving
MNIST videos (written as uint8 .npy, read back equal to the generated dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from shard_synth import take

from nepa.data.audio import AudioFolderConfig, read_clips, train_statistics
from nepa.data.base import build_dataset
from nepa.data.fbank import stats_name
from nepa.data.shards.array import ArrayShardsConfig
from nepa.data.shards.audio import AudioShardsConfig
from nepa.data.shards.health import DataHealth
from nepa.data.shards.verify import verify_shards
from nepa.data.shards.write import write_shards, write_source
from nepa.data.video import MovingMnist, MovingMnistConfig


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEPA_CACHE_DIR", str(tmp_path / "cache"))


def _tone(seconds: float, rate: int, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _recordings(root: Path, broken: bool = False) -> Path:
    """FSDD-named tones: digits 0-2, recordings 0-7 (0-4 are the official test split)."""
    root.mkdir(parents=True)
    for digit in range(3):
        for i in range(8):
            rate = 8000 if i % 2 else 16000
            wave = _tone(0.3 + 0.05 * i, rate, 300 + 150 * digit)
            sf.write(root / f"{digit}_ann_{i}.wav", wave, rate)
    if broken:
        sf.write(root / "1_ann_9.wav", _tone(0.05, 8000, 300), 8000)  # 3 frames: too short
        (root / "2_ann_10.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE")  # truncated
    return root


def _write_audio(src: Path, out: Path) -> Path:
    for split in ("train", "test"):
        write_source(str(src), out, split=split, shard_size=4)
    return out


def test_audio_manifest_holds_the_train_fbank_statistics(tmp_path: Path) -> None:
    src = _recordings(tmp_path / "rec")
    out = _write_audio(src, tmp_path / "shards")
    train = json.loads((out / "manifest.json").read_text())["splits"]["train"]
    assert train["stats"] == stats_name(16000, 128) and train["samples"] == 9
    folder = AudioFolderConfig(root=str(src))
    mean, std = train_statistics(folder, read_clips(folder))
    np.testing.assert_allclose([train["mean"][0], train["std"][0]], [mean, std], rtol=1e-5)


def test_audio_shards_equal_the_audio_folder(tmp_path: Path) -> None:
    src = _recordings(tmp_path / "rec")
    out = _write_audio(src, tmp_path / "shards")
    cfg = AudioShardsConfig(source=str(out), target_frames=32)
    shards = build_dataset(cfg, split="test", train=False)
    folder = build_dataset(
        AudioFolderConfig(root=str(src), target_frames=32), split="test", train=False
    )
    assert len(shards) == len(folder) == 15

    unmatched = [folder[i] for i in range(15)]
    for i in range(15):  # the writer shuffles: find each clip's twin (same label and fbank)
        x = shards[i]
        twin = next(
            j
            for j, y in enumerate(unmatched)
            if x["label"] == y["label"]
            and x["length"] == y["length"]
            and torch.allclose(x["fbank"], y["fbank"], rtol=1e-4, atol=1e-4)
        )
        unmatched.pop(twin)
    assert shards.normalization["field"] == "fbank"


def test_audio_stream_counts_short_and_broken_clips(tmp_path: Path) -> None:
    src = _recordings(tmp_path / "rec", broken=True)
    out = tmp_path / "shards"
    samples = [
        {"__key__": p.stem, "wav": p.read_bytes(), "cls": int(p.stem[0])}
        for p in sorted(src.iterdir())
    ]
    write_shards(iter(samples[:3]), out, split="test", shard_size=8, modality="audio")
    with pytest.raises(ValueError, match="2_ann_10.*undecodable audio"):  # the writer decodes
        write_shards(iter(samples), out, split="train", shard_size=8, modality="audio")
    good = [s for s in samples if s["__key__"] != "2_ann_10"]
    write_shards(iter(good), out, split="train", shard_size=8, modality="audio")
    data = build_dataset(
        AudioShardsConfig(source=str(out), target_frames=32), split="train", train=True
    )
    health = DataHealth(1.0)
    for batch, meta in take(data, 2, batch=12):
        assert batch["fbank"].shape == (12, 32, 128) and torch.isfinite(batch["fbank"]).all()
        health.update(meta["good"], meta["bad"])
    assert health.by_kind() == {"short": 1} and health.good == 23  # 24 read, 1 short


def test_audio_shards_without_matching_statistics_say_what_to_set(tmp_path: Path) -> None:
    out = _write_audio(_recordings(tmp_path / "rec"), tmp_path / "shards")
    with pytest.raises(ValueError, match="stores no fbank 16000 Hz 64 mel bins statistics"):
        build_dataset(AudioShardsConfig(source=str(out), mel_bins=64), split="test", train=False)
    cfg = AudioShardsConfig(source=str(out), mel_bins=64, target_frames=32, mean=-8.0, std=4.0)
    assert build_dataset(cfg, split="test", train=False)[0]["fbank"].shape == (32, 64)


def test_sensor_windows_with_nan_or_inf_are_counted_skips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(32, 3, 16)).astype(np.float32)
    xs[4, 1, 7], xs[20, 0, 0] = np.nan, np.inf
    samples = ({"__key__": f"w{i:03d}", "npy": xs[i], "cls": i % 2} for i in range(32))
    write_shards(samples, tmp_path / "arr", split="train", shard_size=16, modality="array")
    info = json.loads((tmp_path / "arr" / "manifest.json").read_text())["splits"]["train"]
    finite = np.delete(xs, [4, 20], axis=0).astype(np.float64)
    np.testing.assert_allclose(info["mean"], finite.mean(axis=(0, 2)), rtol=1e-9)
    np.testing.assert_allclose(info["std"], finite.std(axis=(0, 2)), rtol=1e-9)
    cfg = ArrayShardsConfig(source=str(tmp_path / "arr"), shape=(3, 16), mean=(0.0,), std=(1.0,))
    health = DataHealth(1.0)
    for batch, meta in take(build_dataset(cfg, split="train", train=True), 2, batch=15):
        assert torch.isfinite(batch["signal"]).all()
        health.update(meta["good"], meta["bad"])
    assert health.by_kind() == {"nonfinite": 2} and health.good == 28  # 30 read, 2 bad


def test_moving_mnist_shards_read_back_as_the_generated_videos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    mnist = tmp_path / "mnist.npz"
    np.savez(
        mnist,
        x_train=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        y_train=np.arange(50) % 10,
        x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        y_test=np.arange(20) % 10,
    )
    out = tmp_path / "mm"
    import nepa.data.video as video

    cfg = MovingMnistConfig(path=str(mnist), test_videos=6)
    monkeypatch.setattr(video, "MovingMnistConfig", lambda path: cfg)  # 6 test videos
    write_source(str(mnist), out, split="test", kind="moving_mnist", shard_size=4)
    report = verify_shards(str(out))
    assert report["ok"] is True and report["samples"] == 6
    ds = MovingMnist(cfg, "test")
    mean, std = ds.mean * 255, ds.std * 255
    arrays = ArrayShardsConfig(
        source=str(out),
        shape=(20, 64, 64),
        view=(1, 20, 64, 64),
        field="video",
        mean=(mean,),
        std=(std,),
    )
    read = build_dataset(arrays, split="test", train=False)
    assert len(read) == 6 and read.classes == video.PAIRS
    # the writer shuffles; match each read video to its generated one by label and content
    by_label = {}
    for i in range(6):
        by_label.setdefault(int(ds[i]["label"]), []).append(ds[i]["video"])
    for i in range(6):
        s = read[i]
        assert any(torch.allclose(s["video"], v, atol=1e-5) for v in by_label[int(s["label"])])


def test_a_nan_clip_does_not_poison_the_fbank_statistics(tmp_path: Path) -> None:
    import io

    rate = 16000
    samples = []
    for i in range(4):
        wave = _tone(0.4, rate, 300 + 50 * i)
        if i == 2:
            wave[100] = np.nan
        buf = io.BytesIO()
        sf.write(buf, wave, rate, format="WAV", subtype="FLOAT")
        samples.append({"__key__": f"c{i}", "wav": buf.getvalue(), "cls": i % 2})
    write_shards(iter(samples), tmp_path / "a", split="train", shard_size=4, modality="audio")
    info = json.loads((tmp_path / "a" / "manifest.json").read_text())["splits"]["train"]
    assert np.isfinite(info["mean"][0]) and np.isfinite(info["std"][0])
