"""Image datasets: decoding, caching, transforms, determinism, config errors, real data."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torch.utils.data import DataLoader

import nepa.data.folder as folder
from nepa.batch import FieldSpec, collate
from nepa.data.base import DATASETS, build_dataset
from nepa.data.images import ImageFolderConfig, ImageNpzConfig
from nepa.data.paths import resolve_path
from nepa.data.sampler import StepBatchSampler
from nepa.data.subset import subset_indices

CLASSES = ["a_cls", "b_cls", "c_cls"]
DATA_DIR = os.environ.get("NEPA_DATA_DIR")
USER_CACHE = os.environ.get("NEPA_CACHE_DIR")  # before the autouse fixture points it to tmp
needs_data = pytest.mark.skipif(
    not DATA_DIR, reason="real data: set NEPA_DATA_DIR to the folder with mnist.npz etc."
)


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEPA_CACHE_DIR", str(tmp_path / "cache"))


def _png(rng: np.random.Generator, hw: tuple[int, int] = (8, 8), c: int = 3) -> bytes:
    px = rng.integers(0, 256, size=(*hw, c), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px.squeeze(-1) if c == 1 else px).save(buf, format="PNG")
    return buf.getvalue()


def _make_tar(
    path: Path,
    n_per_class: dict[str, int],
    corrupt: int = 0,
    sizes: list[tuple[int, int]] | None = None,
) -> Path:
    """A .tar.gz with ``<split>/<class>/<i>.png`` (8x8 RGB unless ``sizes``) and ``corrupt``
    undecodable PNGs in train/a_cls."""
    rng = np.random.default_rng(0)
    members: dict[str, bytes] = {}
    for split, n in n_per_class.items():
        for cls in reversed(CLASSES):  # archive order must not matter
            for i in range(n):
                hw = sizes[i % len(sizes)] if sizes else (8, 8)
                members[f"{split}/{cls}/{i:03d}.png"] = _png(rng, hw)
    for i in range(corrupt):
        members[f"train/a_cls/bad{i}.png"] = b"\x89PNG\r\n\x1a\n this is not a png"
    members["README.txt"] = b"not an image"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return _make_tar(tmp_path / "tiny.tar.gz", {"train": 6, "test": 2}, corrupt=1)


@pytest.fixture
def npz_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "gray.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
        y_train=np.arange(40) % 4,
        x_test=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
        y_test=np.arange(12) % 4,
    )
    return path


def _folder(root: Path, **kw) -> ImageFolderConfig:
    return ImageFolderConfig(root=str(root), **{"image_size": 8, "channels": 3, **kw})


def _npz(path: Path, **kw) -> ImageNpzConfig:
    return ImageNpzConfig(path=str(path), **{"image_size": 8, "channels": 1, **kw})


# ---------------------------------------------------------------- decoding and caching


def test_registered_kinds() -> None:
    assert {"image_folder", "image_npz"} <= set(DATASETS.names())
    assert DATASETS.config_class("image_npz") is ImageNpzConfig


def test_archive_shapes_labels_and_counted_skip(archive: Path, caplog) -> None:
    cfg = _folder(archive, image_size=(8, 6))
    with caplog.at_level(logging.WARNING, logger="nepa.data.folder"):
        ds = build_dataset(cfg, split="train", train=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 undecodable image(s) of 19" in warnings[0]
    assert "bad0.png" in warnings[0]
    assert len(ds) == 18 and ds.num_classes == 3 and ds.classes == CLASSES
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert cfg.fields == {"image": FieldSpec((3, 8, 6)), "label": FieldSpec((), "int64")}
    for key in (0, (5, 123)):
        sample = ds[key]
        assert set(sample) == {"image", "label"}
        x, y = sample["image"], sample["label"]
        assert x.dtype == torch.float32 and tuple(x.shape) == cfg.fields["image"].shape
        index = key[0] if isinstance(key, tuple) else key
        assert y.dtype == torch.int64 and y.shape == () and int(y) == int(ds.labels[index])
        assert torch.isfinite(x).all()
    test = build_dataset(cfg, split="test", train=False)
    assert len(test) == 6 and test.classes == CLASSES


def test_all_corrupt_raises(tmp_path: Path) -> None:
    path = _make_tar(tmp_path / "bad.tar", {"train": 0}, corrupt=2)
    with pytest.raises(ValueError, match="all 2 images of split 'train'"):
        build_dataset(_folder(path, mean=(0.5,) * 3, std=(0.5,) * 3), split="train", train=False)


def test_root_must_be_folder_or_tar(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"PK nonsense")
    with pytest.raises(ValueError, match="neither a folder nor a .tar"):
        build_dataset(_folder(tmp_path / "x.zip"), split="train", train=False)


def test_unknown_split_lists_found(archive: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"splits found: \['test', 'train'\]"):
        build_dataset(_folder(archive), split="val", train=False)


def test_directory_equals_archive(archive: Path, tmp_path: Path) -> None:
    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "tree", filter="data")
    stats = {"mean": (0.5,) * 3, "std": (0.25,) * 3}
    a = build_dataset(_folder(archive, **stats), split="train", train=False)
    d = build_dataset(_folder(tmp_path / "tree", **stats), split="train", train=False)
    assert torch.equal(a.images, d.images) and torch.equal(a.labels, d.labels)


def test_cache_reused_and_invalidated(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _folder(archive, mean=(0.5,) * 3, std=(0.5,) * 3)
    first = build_dataset(cfg, split="train", train=False)

    def boom(data: bytes, ext: str = "png") -> np.ndarray:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(folder, "decode", boom)
    again = build_dataset(cfg, split="train", train=False)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    os.utime(archive, ns=(1, 1))  # a changed archive (new mtime) must be decoded again
    with pytest.raises(AssertionError, match="decoded again"):
        build_dataset(cfg, split="train", train=False)


def test_cache_is_npy_without_pickle(archive: Path, tmp_path: Path) -> None:
    build_dataset(_folder(archive), split="train", train=False)
    files = list((tmp_path / "cache").rglob("*.npy"))
    assert any(f.name == "pixels.npy" for f in files) and any(f.name == "stats.npy" for f in files)
    for f in files:
        np.load(f, allow_pickle=False)


def test_mixed_sizes_kept_per_image(tmp_path: Path) -> None:
    path = _make_tar(tmp_path / "mixed.tar", {"train": 4}, sizes=[(8, 8), (10, 6)])
    cfg = _folder(path, image_size=8)
    for train in (False, True):
        ds = build_dataset(cfg, split="train", train=train)
        assert isinstance(ds.images, list) and {tuple(im.shape) for im in ds.images} == {
            (3, 8, 8),
            (3, 10, 6),
        }
        assert all(tuple(ds[(i, i)]["image"].shape) == (3, 8, 8) for i in range(len(ds)))


# ---------------------------------------------------------------- transforms


def test_eval_normalised_with_computed_stats(npz_path: Path) -> None:
    ds = build_dataset(_npz(npz_path), split="train", train=False)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])  # (N, 1, 8, 8)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-4


def test_eval_resizes_only_when_needed(npz_path: Path) -> None:
    stats = {"mean": (0.0,), "std": (1.0,)}
    same = build_dataset(_npz(npz_path, **stats), split="test", train=False)
    no_resampling = same.images[3].float() / 255
    assert torch.allclose(same[3]["image"], no_resampling, atol=1e-6)
    big = build_dataset(_npz(npz_path, image_size=(16, 12), **stats), split="test", train=False)
    assert tuple(big[3]["image"].shape) == (1, 16, 12)


def test_train_aug_is_seeded_and_leaves_global_rng(
    npz_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = build_dataset(_npz(npz_path), split="train", train=True)
    torch.manual_seed(7)

    def reseed_gpus(seed: int) -> None:
        raise AssertionError("a sample reseeded the GPU RNG")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseed_gpus)
    state = torch.get_rng_state()
    a, b, c = ds[(3, 11)]["image"], ds[(3, 11)]["image"], ds[(3, 12)]["image"]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(ds[3]["image"], ds[3]["image"])  # an int key: the deterministic eval path
    eval_ds = build_dataset(_npz(npz_path), split="train", train=False)
    assert torch.equal(eval_ds[(3, 11)]["image"], eval_ds[3]["image"])


def test_train_aug_same_in_another_process(npz_path: Path, tmp_path: Path) -> None:
    ds = build_dataset(_npz(npz_path, image_size=6), split="train", train=True)
    code = (
        "import sys, torch; from nepa.data.images import ImageNpzConfig; "
        "from nepa.data.base import build_dataset; "
        "cfg = ImageNpzConfig(path=sys.argv[1], image_size=6, channels=1); "
        "torch.save(build_dataset(cfg, split='train', train=True)[(5, 99)]['image'], sys.argv[2])"
    )
    out = tmp_path / "x.pt"
    subprocess.run([sys.executable, "-c", code, str(npz_path), str(out)], check=True)
    assert torch.equal(torch.load(out), ds[(5, 99)]["image"])


def test_works_as_dataloader_with_step_sampler(npz_path: Path) -> None:
    ds = build_dataset(_npz(npz_path), split="train", train=True)
    sampler = StepBatchSampler(len(ds), global_batch=8, accum=2, seed=0)
    batch = next(iter(DataLoader(ds, batch_sampler=sampler, collate_fn=collate)))
    x, y = batch["image"], batch["label"]
    assert x.shape == (4, 1, 8, 8) and y.shape == (4,) and y.dtype == torch.int64
    assert y.tolist() == [int(ds.labels[i]) for i, _ in sampler.micro(0)]


# ---------------------------------------------------------------- subsets and errors


def test_limit_is_stratified_and_fixed(npz_path: Path) -> None:
    cfg = _npz(npz_path, limit_train=20, limit_test=5, subset_seed=3)
    a = build_dataset(cfg, split="train", train=False)
    b = build_dataset(cfg, split="train", train=False)
    assert len(a) == 20 and torch.equal(a.images, b.images)
    assert torch.bincount(a.labels).tolist() == [5, 5, 5, 5]
    assert len(build_dataset(cfg, split="test", train=False)) == 5
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    idx = subset_indices(labels, 10, seed=0, split="train")
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2] and len(set(idx)) == 10


@pytest.mark.parametrize(
    ("kw", "key", "words"),
    [
        ({"crop_scale": (0.9, 0.1)}, "crop_scale", "0 < min <= max <= 1"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale", "0 < min <= max <= 1"),
        ({"mean": (0.5, 0.5)}, "mean has 2 value(s) but channels is 1", "leave mean unset"),
        ({"std": (0.0,)}, "std", "must be > 0"),
        ({"image_size": 0}, "image_size", "greater than 0"),
        ({"x_key": "x_{part}"}, "x_key", "{split}"),
        ({"shuffle": True}, "shuffle", "Extra inputs"),
    ],
)
def test_config_errors_name_the_key(kw: dict, key: str, words: str) -> None:
    with pytest.raises(ValidationError) as e:
        ImageNpzConfig(**{"path": "x.npz", "image_size": 8, "channels": 1, **kw})
    assert key in str(e.value) and words in str(e.value)


def test_channels_mismatch(npz_path: Path, archive: Path) -> None:
    with pytest.raises(ValueError, match="config says 3 but .* 1 channel.*set channels: 1"):
        build_dataset(_npz(npz_path, channels=3), split="train", train=False)
    with pytest.raises(ValueError, match="config says 1 but .* 3 channel.*set channels: 3"):
        build_dataset(_folder(archive, channels=1), split="train", train=False)


def test_npz_errors(npz_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no array 'x_val' .*arrays: x_train, y_train"):
        build_dataset(_npz(npz_path), split="val", train=False)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 2, -1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        build_dataset(_npz(bad, mean=(0.5,), std=(0.5,)), split="train", train=False)
    np.savez(bad, x_train=np.zeros((4, 8, 8), np.float32), y_train=np.arange(4))
    with pytest.raises(ValueError, match="must be uint8"):
        build_dataset(_npz(bad), split="train", train=False)


def test_missing_file_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEPA_TEST_UNSET_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="NEPA_TEST_UNSET_DIR are unset") as e:
        build_dataset(_npz("${NEPA_TEST_UNSET_DIR}/mnist.npz"), split="train", train=False)
    assert "resolves to" in str(e.value)
    with pytest.raises(FileNotFoundError, match=f"resolves to {tmp_path}/nope.npz"):
        resolve_path(str(tmp_path / "nope.npz"))
    monkeypatch.setenv("NEPA_TEST_SET_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "f.npz").touch()
    assert (
        resolve_path("${NEPA_TEST_SET_DIR}/f.npz") == resolve_path("~/f.npz") == tmp_path / "f.npz"
    )


def test_nepa_prefix_finds_shipped_demo() -> None:
    path = resolve_path("nepa:assets/demo/demo.npz")
    assert path.is_file() and (path.parent / "PROVENANCE.json").is_file()
    assert sum(p.stat().st_size for p in path.parent.iterdir()) <= 5_000_000
    cfg = ImageNpzConfig(
        path="nepa:assets/demo/demo.npz", image_size=28, channels=1, limit_test=100
    )
    ds = build_dataset(cfg, split="test", train=False)
    assert len(ds) == 100 and ds.num_classes == 10 and ds[0]["image"].shape == (1, 28, 28)


# ---------------------------------------------------------------- real data


@needs_data
def test_real_mnist(tmp_path: Path) -> None:
    cfg = ImageNpzConfig(
        path="${NEPA_DATA_DIR}/mnist.npz", image_size=28, channels=1, limit_train=600
    )
    ds = build_dataset(cfg, split="train", train=False)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert x.shape == (600, 1, 28, 28) and ds.num_classes == 10
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert torch.bincount(ds.labels).min() >= 50  # stratified over the 10 digits


@needs_data
def test_real_cifar10_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    # The persistent user cache, so only the first run decodes the 10k test PNGs (seconds).
    if USER_CACHE:
        monkeypatch.setenv("NEPA_CACHE_DIR", USER_CACHE)
    else:
        monkeypatch.delenv("NEPA_CACHE_DIR")
    cfg = ImageFolderConfig(
        root="${NEPA_DATA_DIR}/cifar10-png.tar.gz",
        image_size=32,
        channels=3,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        limit_test=500,
    )
    ds = build_dataset(cfg, split="test", train=True)
    assert len(ds) == 500 and ds.num_classes == 10 and ds.classes[0] == "airplane"
    assert torch.bincount(ds.labels).tolist() == [50] * 10
    x = torch.stack([ds[(i, i)]["image"] for i in range(0, 500, 5)])
    assert x.shape == (100, 3, 32, 32) and abs(x.mean().item()) < 0.3
