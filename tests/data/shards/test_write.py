"""Writing shards: round trips for every built-in source and the Python API, determinism,
several splits in one folder, and refusals that say what to fix."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from shard_synth import write_tree

from nepa.data.images import channel_stats
from nepa.data.shards.codecs import decode_image_bytes, decode_npy_bytes
from nepa.data.shards.health import BadData
from nepa.data.shards.manifest import MANIFEST, read_manifest, resolve_shards
from nepa.data.shards.reader import read_shard
from nepa.data.shards.sources import open_source
from nepa.data.shards.write import write_shards

CLASSES = ["bird", "cat", "dog"]
DATA_DIR = os.environ.get("NEPA_DATA_DIR")


def _png(rng: np.random.Generator, c: int = 3) -> bytes:
    px = rng.integers(0, 256, size=(6, 5, c), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px.squeeze(-1) if c == 1 else px).save(buf, format="PNG")
    return buf.getvalue()


def _wav(rng: np.random.Generator, n: int) -> bytes:
    buf = io.BytesIO()
    sf.write(
        buf, rng.uniform(-0.5, 0.5, n).astype(np.float32), 8000, format="WAV", subtype="PCM_16"
    )
    return buf.getvalue()


def _tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for rel, data in reversed(list(files.items())):  # archive order must not matter
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def image_files() -> dict[str, bytes]:
    """``<split>/<class>/<name>.png``: 2 train and 1 test image per class, 6x5 RGB."""
    rng = np.random.default_rng(0)
    return {
        f"{split}/{cls}/im{i}.png": _png(rng)
        for split, n in (("train", 2), ("test", 1))
        for cls in CLASSES
        for i in range(n)
    }


@pytest.fixture(scope="module")
def fsdd_files() -> dict[str, bytes]:
    """FSDD-named recordings: digits 0-2, two speakers, indices 0..6 (0-4 test, 5-6 train)."""
    rng = np.random.default_rng(1)
    return {
        f"recordings/{d}_{spk}_{i}.wav": _wav(rng, 400 + 10 * i)
        for d in range(3)
        for spk in ("ann", "bob")
        for i in range(7)
    }


def _read_back(out: Path, split: str) -> dict[str, dict]:
    """key -> raw sample of every shard of ``split``; each key must occur once."""
    shards = resolve_shards(str(out), split)
    samples: dict[str, dict] = {}
    bad = BadData()
    for url, count in zip(shards.urls, shards.counts, strict=True):
        got = list(read_shard(url, bad, expected=count))
        assert len(got) == count
        for s in got:
            assert s["__key__"] not in samples, f"key {s['__key__']} written twice"
            samples[s["__key__"]] = s
    assert bad.total == 0
    return samples


def _write(source: str, out: Path, split: str, **kw) -> None:
    src = open_source(source, split)
    write_shards(
        src.samples,
        out,
        split=split,
        modality=src.modality,
        classes=src.classes,
        created={"source": source, "source_kind": src.kind},
        **kw,
    )


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
def test_image_folder_round_trip(
    tmp_path: Path, image_files: dict[str, bytes], as_tar: bool
) -> None:
    src = (
        _tar_gz(tmp_path / "imgs.tar.gz", image_files)
        if as_tar
        else write_tree(tmp_path / "imgs", image_files)
    )
    out = tmp_path / "shards"
    _write(str(src), out, "train", shard_size=4, shuffle_seed=0)
    got = _read_back(out, "train")
    train = {rel: data for rel, data in image_files.items() if rel.startswith("train/")}
    assert len(got) == len(train) == 6
    by_key = {f"{rel.split('/')[1]}_{Path(rel).stem}": rel for rel in train}
    assert set(got) == set(by_key)  # the key is <class>_<file stem>
    for key, s in got.items():
        rel = by_key[key]
        assert s["png"] == train[rel]  # original bytes, not re-encoded
        assert int(s["cls"]) == CLASSES.index(rel.split("/")[1])
        assert set(s) - {"__key__", "__url__"} == {"png", "cls"}
    manifest, _ = read_manifest(str(out))
    info = manifest.splits["train"]
    assert (manifest.modality, manifest.classes) == ("image", CLASSES)
    assert [s.samples for s in info.shards] == [4, 2] and info.samples == 6
    assert info.fields == ["cls", "png"]
    pixels = np.stack([decode_image_bytes(b).permute(1, 2, 0).numpy() for b in train.values()])
    np.testing.assert_allclose([info.mean, info.std], channel_stats(pixels), rtol=1e-9)
    assert manifest.created["splits"]["train"]["source_kind"] == "image_folder"


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(7, 4, 3), dtype=np.uint8)  # (N, H, W) gray
    y = rng.integers(0, 4, size=7)
    feats = rng.normal(size=(5, 2, 3)).astype(np.float32)  # not an image -> .npy
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y, x_test=feats, y_test=np.arange(5))
    _write(str(path), tmp_path / "img", "train", shard_size=3, shuffle_seed=0)
    got = _read_back(tmp_path / "img", "train")
    assert sorted(got) == [f"train_{i:06d}" for i in range(7)]
    for key, s in got.items():
        i = int(key.split("_")[1])
        np.testing.assert_array_equal(decode_image_bytes(s["png"])[0].numpy(), x[i])
        assert int(s["cls"]) == y[i]
    manifest, _ = read_manifest(str(tmp_path / "img"))
    assert manifest.modality == "image" and manifest.classes == ["0", "1", "2", "3", "4"]

    _write(str(path), tmp_path / "arr", "test", shuffle_seed=None)
    got = _read_back(tmp_path / "arr", "test")
    assert list(got) == [f"test_{i:06d}" for i in range(5)]  # --no-shuffle keeps source order
    for i, s in enumerate(got.values()):
        np.testing.assert_array_equal(decode_npy_bytes(s["npy"]), feats[i])
    assert read_manifest(str(tmp_path / "arr"))[0].modality == "array"


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
def test_fsdd_audio_round_trip(tmp_path: Path, fsdd_files: dict[str, bytes], as_tar: bool) -> None:
    src = (
        _tar_gz(tmp_path / "rec.tar.gz", fsdd_files)
        if as_tar
        else write_tree(tmp_path / "fsdd", fsdd_files) / "recordings"
    )
    out = tmp_path / "shards"
    for split in ("test", "train"):
        _write(str(src), out, split, shard_size=10, shuffle_seed=0)
    manifest, _ = read_manifest(str(out))
    assert manifest.modality == "audio" and manifest.classes == ["0", "1", "2"]
    for split, indices in (("test", range(5)), ("train", range(5, 7))):
        got = _read_back(out, split)
        assert manifest.splits[split].samples == len(got) == 3 * 2 * len(indices)
        for key, s in got.items():
            digit, speaker, index = key.split("_")
            meta = json.loads(s["json"])
            assert int(index) in indices and int(s["cls"]) == int(digit)
            assert meta == {
                "speaker": speaker,
                "index": int(index),
                "sample_rate": 8000,
                "path": meta["path"],
            }
            assert s["wav"] == fsdd_files[f"recordings/{key}.wav"]


def test_audio_split_class_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    files = {
        f"{sp}/{c}/a{i}.wav": _wav(rng, 300)
        for sp in ("train", "val")
        for c in ("no", "yes")
        for i in range(2)
    }
    src = write_tree(tmp_path / "audio", files)
    _write(str(src), tmp_path / "out", "val")
    got = _read_back(tmp_path / "out", "val")
    assert sorted(got) == ["no_a0", "no_a1", "yes_a0", "yes_a1"]
    for key, s in got.items():
        assert s["wav"] == files[f"val/{key.replace('_', '/')}.wav"]
        assert int(s["cls"]) == ["no", "yes"].index(key.split("_")[0])


def test_deterministic_and_shuffled(tmp_path: Path, image_files: dict[str, bytes]) -> None:
    src = str(_tar_gz(tmp_path / "imgs.tar.gz", image_files))
    for name in ("a", "b"):
        _write(src, tmp_path / name, "train", shard_size=4, shuffle_seed=0)
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == [MANIFEST, "train-000000.tar", "train-000001.tar"]
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    _write(src, tmp_path / "sorted", "train", shuffle_seed=None)
    sorted_keys = list(_read_back(tmp_path / "sorted", "train"))
    shuffled_keys = list(_read_back(tmp_path / "a", "train"))
    assert sorted_keys == sorted(sorted_keys) and shuffled_keys != sorted_keys
    assert sorted(shuffled_keys) == sorted_keys


def test_second_split_kept_and_rewrite_replaces(
    tmp_path: Path, image_files: dict[str, bytes]
) -> None:
    src = str(write_tree(tmp_path / "imgs", image_files))
    out = tmp_path / "shards"
    _write(src, out, "train", shard_size=2)
    train_tar = (out / "train-000000.tar").read_bytes()
    _write(src, out, "test")
    manifest, _ = read_manifest(str(out))
    assert sorted(manifest.splits) == ["test", "train"]
    assert (manifest.splits["train"].samples, manifest.splits["test"].samples) == (6, 3)
    assert (out / "train-000000.tar").read_bytes() == train_tar
    _write(src, out, "train", shard_size=5)  # re-write: 3 old shards -> 2 new ones
    manifest, _ = read_manifest(str(out))
    assert [s.samples for s in manifest.splits["train"].shards] == [5, 1]
    assert sorted(p.name for p in out.glob("train-*.tar")) == [
        "train-000000.tar",
        "train-000001.tar",
    ]
    assert manifest.splits["test"].samples == 3 and len(_read_back(out, "test")) == 3
    assert sorted(manifest.created["splits"]) == ["test", "train"]


def test_split_with_other_classes_refused(tmp_path: Path, image_files: dict[str, bytes]) -> None:
    _write(str(write_tree(tmp_path / "imgs", image_files)), tmp_path / "out", "train")
    other = {k.replace("bird", "fish"): v for k, v in image_files.items()}
    with pytest.raises(ValueError, match="classes"):
        _write(str(write_tree(tmp_path / "other", other)), tmp_path / "out", "test")
    with pytest.raises(ValueError, match="holds image data"):
        write_shards(
            [{"__key__": "a", "npy": np.zeros(3)}],
            tmp_path / "out",
            split="x",
            modality="array",
            classes=CLASSES,
        )


def _user_samples(n: int) -> list[dict]:
    rng = np.random.default_rng(4)
    return [
        {
            "__key__": f"img{i:05d}",
            "png": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
            "cls": i % 2,
            "json": {"id": i},
        }
        for i in range(n)
    ]


def test_api_user_samples(tmp_path: Path) -> None:
    samples = _user_samples(5)
    info = write_shards(iter(samples), tmp_path / "mine", classes=["even", "odd"], shard_size=2)
    assert info.samples == 5 and [s.samples for s in info.shards] == [2, 2, 1]
    got = _read_back(tmp_path / "mine", "train")
    for s in samples:
        g = got[s["__key__"]]
        np.testing.assert_array_equal(
            decode_image_bytes(g["png"]).permute(1, 2, 0).numpy(), s["png"]
        )
        assert int(g["cls"]) == s["cls"] and json.loads(g["json"]) == s["json"]
    np.testing.assert_allclose(
        [info.mean, info.std], channel_stats(np.stack([s["png"] for s in samples]))
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"__key__": "img00000"}, "duplicate sample key"),
        ({"__key__": "a.b"}, "contains '.' or '/'"),
        ({"__key__": "a/b"}, "contains '.' or '/'"),
        ({"pyd": b"\x80\x04K\x01."}, "pickle"),
        ({"png": b"not a png"}, "undecodable image"),
        ({"png": None, "cls": 1}, "no payload"),
        ({"cls": 7}, r"outside \[0, 2\)"),
    ],
)
def test_api_refuses_bad_samples(tmp_path: Path, change: dict, match: str) -> None:
    out = tmp_path / "mine"
    write_shards(_user_samples(3), out, split="test", classes=["even", "odd"])
    before = (out / MANIFEST).read_bytes()
    bad = {**_user_samples(4)[3], **change}
    if bad.get("png", 0) is None:
        del bad["png"]
    with pytest.raises(ValueError, match=match):
        write_shards(_user_samples(3) + [bad], out, classes=["even", "odd"], shard_size=1)
    # the failed write left nothing behind and did not touch the other split
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "test-000000.tar"]
    assert (out / MANIFEST).read_bytes() == before


def test_unlisted_shard_files_not_deleted(tmp_path: Path) -> None:
    (tmp_path / "train-000000.tar").write_bytes(b"someone else's shard")
    with pytest.raises(FileExistsError, match="does not list"):
        write_shards(_user_samples(2), tmp_path)
    assert (tmp_path / "train-000000.tar").read_bytes() == b"someone else's shard"


def _real(name: str) -> Path:
    path = Path(DATA_DIR or "/nonexistent") / name
    if not path.is_file():
        pytest.skip(f"real data: set NEPA_DATA_DIR to the folder with {name}")
    return path


def test_real_fsdd_and_mnist_test_splits(tmp_path: Path) -> None:
    fsdd, mnist = _real("fsdd-recordings.tar.gz"), _real("mnist.npz")
    _write(str(fsdd), tmp_path / "fsdd", "test", shard_size=128, shuffle_seed=0)
    _write(str(mnist), tmp_path / "mnist", "test", shuffle_seed=0)
    m_fsdd, _ = read_manifest(str(tmp_path / "fsdd"))
    assert m_fsdd.splits["test"].samples == 300 and [
        s.samples for s in m_fsdd.splits["test"].shards
    ] == [128, 128, 44]
    assert m_fsdd.classes == [str(d) for d in range(10)]
    m_mnist, _ = read_manifest(str(tmp_path / "mnist"))
    assert m_mnist.splits["test"].samples == 10000 and len(m_mnist.splits["test"].shards) == 10
    assert m_mnist.splits["test"].fields == ["cls", "png"]
    with np.load(mnist) as f:
        x = f["x_test"]
    np.testing.assert_allclose(m_mnist.splits["test"].mean, [x.mean() / 255], rtol=1e-9)
