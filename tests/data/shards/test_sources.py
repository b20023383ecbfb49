"""Sources of ``nepa shards write`` as a registry: recognition, ``--kind``, a user's own kind,
naming rules (FSDD's lives in its own module), and one ImageFolder walker for both readers."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from shard_synth import write_tree

from nepa.cli import main
from nepa.data.folder import list_folder, read_image_folder, scan, split_layout
from nepa.data.shards.fsdd import fsdd
from nepa.data.shards.manifest import read_manifest
from nepa.data.shards.naming import NAMING_RULES, Named
from nepa.data.shards.sources import (
    SOURCES,
    Source,
    audio_source,
    detect_kind,
    image_folder_source,
    open_source,
    source,
    sources_help,
)
from nepa.data.shards.write import write_source
from nepa.registry import RegistryError


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((3, 2, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _wav(n: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(n, np.float32), 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture
def user_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test are dropped afterwards."""
    for reg in (SOURCES, NAMING_RULES):
        monkeypatch.setattr(reg, "_items", dict(reg._items))


def test_built_in_kinds_and_recognition(tmp_path: Path) -> None:
    assert {"image_folder", "npz", "audio"} <= set(SOURCES.names())
    assert "fsdd" in NAMING_RULES
    imgs = write_tree(tmp_path / "imgs", {"train/a/x.png": _png(1)})
    audio = write_tree(tmp_path / "audio", {"train/a/x.wav": _wav(10)})
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 3), np.float32))
    with tarfile.open(tmp_path / "audio.tar", "w") as tf:
        tf.add(audio, arcname="audio")
    kinds = {
        p.name: detect_kind(p) for p in (imgs, audio, tmp_path / "d.npz", tmp_path / "audio.tar")
    }
    assert kinds == {"imgs": "image_folder", "audio": "audio", "d.npz": "npz", "audio.tar": "audio"}
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(ValueError, match="supported sources: .*npz"):
        detect_kind(tmp_path / "a.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no audio or image files"):
        detect_kind(tmp_path / "empty")
    for name in SOURCES.names():
        assert SOURCES.get(name).help in sources_help()


def test_kind_chosen_by_name_on_the_command_line(tmp_path: Path, capsys) -> None:
    src = write_tree(
        tmp_path / "imgs", {f"train/{c}/x{i}.png": _png(i) for c in "ab" for i in range(2)}
    )
    assert main(["shards", "write", str(src), str(tmp_path / "auto")]) == 0
    assert (
        main(["shards", "write", str(src), str(tmp_path / "named"), "--kind", "image_folder"]) == 0
    )
    for name in ("manifest.json", "train-000000.tar"):
        assert (tmp_path / "auto" / name).read_bytes() == (tmp_path / "named" / name).read_bytes()
    capsys.readouterr()
    assert main(["shards", "write", str(src), str(tmp_path / "bad"), "--kind", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown shard source kind 'nope'" in err and "image_folder" in err


@pytest.mark.usefixtures("user_registries")
def test_user_source_kind(tmp_path: Path) -> None:
    """A new kind is one registered function; ``nepa shards write`` finds it by suffix."""

    @source("csv_rows", suffixes=("csv",), help="a .csv of numbers, one sample per row")
    def csv_rows(path: Path, split: str) -> Source:
        rows = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        samples = ({"__key__": f"{split}_{i:03d}", "npy": r} for i, r in enumerate(rows))
        return Source("csv_rows", "array", None, samples)

    path = tmp_path / "rows.csv"
    path.write_text("1,2,3\n4,5,6\n")
    assert detect_kind(path) == "csv_rows" and "one sample per row" in sources_help()
    info = write_source(str(path), tmp_path / "out", shuffle_seed=None)
    manifest, _ = read_manifest(str(tmp_path / "out"))
    assert info.samples == 2 and manifest.modality == "array"
    assert manifest.created["splits"]["train"]["source_kind"] == "csv_rows"
    with pytest.raises(RegistryError, match="already registered"):
        source("npz", help="again")(csv_rows)


def test_fsdd_rule() -> None:
    assert fsdd("recordings/7_jackson_4.wav") == Named(
        "test", "7", {"speaker": "jackson", "index": 4}
    )
    assert fsdd("7_theo_49.wav") == Named("train", "7", {"speaker": "theo", "index": 49})
    assert fsdd("train/yes/a0.wav") is None and fsdd("7_jackson.wav") is None


def _parity(rel: str) -> Named | None:
    """A user's naming: ``n<number>.wav``, even numbers train, odd test; label = number % 3."""
    stem = Path(rel).stem
    if not (stem.startswith("n") and stem[1:].isdecimal()):
        return None
    n = int(stem[1:])
    return Named("test" if n % 2 else "train", str(n % 3), {"n": n})


@pytest.mark.usefixtures("user_registries")
@pytest.mark.parametrize("registered", [False, True], ids=["parameter", "registered"])
def test_user_naming_rule(tmp_path: Path, registered: bool) -> None:
    src = write_tree(tmp_path / "rec", {f"n{n}.wav": _wav(20 + n) for n in range(12)})
    if registered:
        NAMING_RULES.register("parity")(_parity)
        got = open_source(str(src), "test")
    else:
        got = audio_source(src, "test", naming=_parity)
    assert (got.kind, got.modality, got.classes) == ("audio", "audio", ["0", "1", "2"])
    samples = list(got.samples)
    assert [s["__key__"] for s in samples] == [f"n{n}" for n in (1, 11, 3, 5, 7, 9)]  # by path
    for s in samples:
        n = int(s["__key__"][1:])
        assert s["cls"] == n % 3 and s["wav"] == _wav(20 + n)
        assert s["json"] == {"path": f"n{n}.wav", "n": n, "sample_rate": 8000}


def test_audio_files_in_no_layout_are_refused(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "rec", {"a/x.wav": _wav(10), "b/y.wav": _wav(10)})
    with pytest.raises(ValueError, match="follow a naming rule .*fsdd.*<split>/<class>/<file>"):
        audio_source(src, "train")


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
def test_one_walker_for_the_folder_reader_and_the_shard_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_tar: bool
) -> None:
    """Both readers see the same split: classes (over all splits of the prefix, even one
    missing from this split), files in the same order, skipping non-images."""
    monkeypatch.setenv("NEPA_CACHE_DIR", str(tmp_path / "cache"))
    files = {
        "data/train/b/z.png": _png(1),
        "data/train/a/y.png": _png(2),
        "data/train/a/x.png": _png(3),
        "data/train/a-2/w.png": _png(4),  # "a" < "a-2" as classes, but "a-2/" < "a/" as paths
        "data/test/c/v.png": _png(5),
        "data/train/a/notes.txt": b"not an image",
    }
    root = write_tree(tmp_path / "tree", files)
    if as_tar:
        with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as tf:
            tf.add(root / "data", arcname="./data")
        root = tmp_path / "tree.tar.gz"
    else:
        root = root / "data"
    decoded = read_image_folder(root, "train")
    src = image_folder_source(root, "train")
    samples = list(src.samples)
    assert decoded.classes == src.classes == ["a", "a-2", "b", "c"]
    # the folder reader orders by class, the shard source by path (then shuffles with a seed)
    assert decoded.labels.tolist() == [0, 0, 1, 2]
    assert [s["cls"] for s in samples] == [1, 0, 0, 2]
    assert [s["__key__"] for s in samples] == ["a-2_w", "a_x", "a_y", "b_z"]
    assert decoded.images[:, 0, 0, 0].tolist() == [3, 2, 4, 1]
    rels, taken = scan(root, {"png"}, lambda rel: rel.endswith("v.png"), lambda rel, load: load())
    prefix = "data/" if as_tar else ""  # a tar member's leading "./" is dropped
    assert taken == {f"{prefix}test/c/v.png": _png(5)}
    layout = split_layout(root, rels, "test")
    assert layout.classes == ["a", "a-2", "b", "c"]
    assert layout.files == [(f"{prefix}test/c/v.png", "c")]
    if not as_tar:
        assert [rel for rel, _ in list_folder(root, {"png"})] == rels  # sorted


def test_split_under_several_prefixes_is_refused(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "t", {"x/train/a/1.png": _png(1), "y/train/a/2.png": _png(2)})
    for read in (read_image_folder, image_folder_source):
        with pytest.raises(ValueError, match="appears under several folders"):
            read(root, "train")


def test_fsdd_json_metadata(tmp_path: Path) -> None:
    src = write_tree(
        tmp_path / "rec", {f"{d}_ann_{i}.wav": _wav(30) for d in (0, 1) for i in (4, 5)}
    )
    out = tmp_path / "out"
    write_source(str(src), out, split="test", shuffle_seed=None)
    manifest, _ = read_manifest(str(out))
    assert manifest.created["splits"]["test"]["source_kind"] == "audio"
    with tarfile.open(out / "test-000000.tar") as tf:
        meta = json.loads(tf.extractfile("0_ann_4.json").read())
    assert meta == {"index": 4, "path": "0_ann_4.wav", "sample_rate": 8000, "speaker": "ann"}
