"""``nepa shards write / verify / ls`` through the command line entry point."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nepa.cli import main
from nepa.data.shards.manifest import read_manifest


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def cifar_like(tmp_path: Path) -> Path:
    """A .tar.gz like cifar10-png.tar.gz: ``{train,test}/<class>/<name>.png``, 4x4 flat colours."""
    path = tmp_path / "imgs.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for split, n in (("train", 3), ("test", 1)):
            for c, cls in enumerate(("cat", "dog")):
                for i in range(n):
                    data = _png(40 * c + 10 * i)
                    info = tarfile.TarInfo(f"{split}/{cls}/{cls}_{i}.png")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return path


def test_write_ls_verify(cifar_like: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "shards"
    assert main(["shards", "write", str(cifar_like), str(out), "--shard-size", "4"]) == 0
    assert main(["shards", "write", str(cifar_like), str(out), "--split", "test"]) == 0
    assert "split 'test', 2 samples in 1 shard(s)" in capsys.readouterr().out
    manifest, _ = read_manifest(str(out))
    assert manifest.classes == ["cat", "dog"]
    assert {k: v.samples for k, v in manifest.splits.items()} == {"train": 6, "test": 2}
    made = manifest.created["splits"]["train"]
    assert made == {
        "nepa_version": made["nepa_version"],
        "source": str(cifar_like),
        "source_kind": "image_folder",
        "shard_size": 4,
        "shuffle_seed": 0,
    }
    # flat colours 0, 10, 20 (cat) and 40, 50, 60 (dog): mean 30/255 in every channel
    np.testing.assert_allclose(manifest.splits["train"].mean, [30 / 255] * 3, rtol=1e-12)

    assert main(["shards", "ls", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{out}: image, 2 classes"
    assert lines[1].startswith("test: 2 samples in 1 shard(s)")
    assert lines[3].startswith("train: 6 samples in 2 shard(s)")
    assert main(["shards", "verify", str(out), "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["samples"] == report["expected"] == 8


def test_no_shuffle_keeps_sorted_order(cifar_like: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    assert main(["shards", "write", str(cifar_like), str(out), "--no-shuffle"]) == 0
    with tarfile.open(out / "train-000000.tar") as tf:
        keys = [m.name.split(".")[0] for m in tf.getmembers() if m.name.endswith(".png")]
    assert keys == ["cat_cat_0", "cat_cat_1", "cat_cat_2", "dog_dog_0", "dog_dog_1", "dog_dog_2"]
    assert read_manifest(str(out))[0].created["splits"]["train"]["shuffle_seed"] is None


@pytest.mark.parametrize(
    ("source", "args", "message"),
    [
        ("text", [], "supported sources"),
        ("missing", [], "does not exist"),
        ("tar", ["--split", "val"], "splits found: ['test', 'train']"),
        ("npz", ["--split", "val"], "no array 'x_val'"),
    ],
)
def test_write_errors(
    cifar_like: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    source: str,
    args: list[str],
    message: str,
) -> None:
    src = {"tar": cifar_like, "npz": tmp_path / "d.npz", "text": tmp_path / "a.txt"}.get(
        source, tmp_path / "nothing"
    )
    if source == "npz":
        np.savez(src, x_train=np.zeros((2, 3, 3), np.uint8), y_train=np.zeros(2, np.int64))
    elif source == "text":
        src.write_text("hi")
    assert main(["shards", "write", str(src), str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nepa shards write: error:") and message in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_shards_without_subcommand_prints_usage(capsys: pytest.CaptureFixture) -> None:
    assert main(["shards"]) == 2
    assert "write" in capsys.readouterr().err
