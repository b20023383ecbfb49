"""``verify_shards`` / ``nepa shards verify``: good shards pass; each kind of damage is reported
with its kind, ``ok`` false and exit code 1."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nepa.cli import main
from nepa.data.shards.verify import verify_shards
from nepa.data.shards.write import write_shards


def _samples(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "__key__": f"s{i:03d}",
            "png": rng.integers(0, 256, (5, 5, 3), dtype=np.uint8),
            "cls": i % 2,
        }
        for i in range(n)
    ]


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """8 image samples in shards of 3 (3 + 3 + 2)."""
    out = tmp_path / "good"
    write_shards(_samples(8), out, classes=["a", "b"], shard_size=3)
    return out


def _wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(100, dtype=np.float32), 8000, format="WAV")
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> str:
    """A shard written member by member with tarfile (so it can hold what the writer refuses)."""
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def test_good_shards_ok(good: Path) -> None:
    report = verify_shards(str(good))
    assert report["ok"] is True
    assert (report["shards"], report["samples"], report["expected"]) == (3, 8, 8)
    assert report["bad"] == [] and report["bad_by_kind"] == {} and report["splits"] == ["train"]


def test_truncated_shard(good: Path) -> None:
    shard = good / "train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:3000])  # inside the 2nd sample (members are 512-byte blocks)
    report = verify_shards(str(good))
    assert report["ok"] is False
    # the 2nd sample is cut short and the 3rd lost: both truncated (a sample the tar broke in is
    # never handed out half-read); the file also differs from the manifest
    assert report["bad_by_kind"] == {"corrupt": 1, "truncated": 2}
    assert report["samples"] == 6 and report["expected"] == 8
    assert {b["shard"] for b in report["bad"]} == {"train-000001.tar"}
    corrupt = [b for b in report["bad"] if b["kind"] == "corrupt"]
    assert "bytes" in corrupt[0]["error"]


def test_changed_bytes_fail_checksum(good: Path) -> None:
    shard = good / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[-600] ^= 0xFF  # in the end-of-archive padding: every sample still decodes
    shard.write_bytes(bytes(data))
    report = verify_shards(str(good))
    assert report["samples"] == 8 and report["bad_by_kind"] == {"corrupt": 1}
    assert "sha256" in report["bad"][0]["error"] and not report["ok"]


@pytest.mark.parametrize(
    ("members", "kind", "error"),
    [
        ({"a.png": b"garbage bytes", "a.cls": b"1"}, "decode", "undecodable image"),
        ({"a.wav": b"RIFF\x00\x00not really a wav"}, "decode", "undecodable audio"),
        ({"a.npy": b"\x93NUMPY garbage"}, "decode", ".npy"),
        ({"a.cls": b"1", "a.json": b"{}"}, "missing", "no payload"),
        ({"a.wav": _wav(), "a.npy": _npy(np.zeros(2))}, "missing", "2 payload"),
        ({"a.wav": _wav(), "a.cls": b"one"}, "decode", "undecodable .cls"),
    ],
    ids=["png", "wav", "npy", "no-payload", "two-payloads", "cls"],
)
def test_bad_member_reported(
    tmp_path: Path, members: dict[str, bytes], kind: str, error: str
) -> None:
    good = {"b.wav": _wav(), "b.cls": b"0"}
    url = _tar(tmp_path / "s-000000.tar", {**members, **good})
    report = verify_shards(url)
    assert report["ok"] is False and report["samples"] == 1 and report["expected"] is None
    assert [(b["key"], b["kind"]) for b in report["bad"]] == [("a", kind)]
    assert error in report["bad"][0]["error"]


def test_pickle_member_reported(tmp_path: Path) -> None:
    members = {"a.wav": _wav(), "b.wav": _wav(), "b.pyd": b"\x80\x04K\x01.", "c.wav": _wav()}
    url = _tar(tmp_path / "p-000000.tar", members)
    report = verify_shards(url)
    assert report["bad_by_kind"] == {"pickle": 1} and report["samples"] == 1 and not report["ok"]
    assert ".pyd" in report["bad"][0]["error"] and "not read" in report["bad"][0]["error"]
    allowed = verify_shards(url, allow_pickle=True)  # the member is dropped, never unpickled
    assert allowed["ok"] and allowed["samples"] == 3


def test_bad_list_is_bounded(tmp_path: Path) -> None:
    url = _tar(tmp_path / "x-000000.tar", {f"k{i}.png": b"bad" for i in range(5)})
    report = verify_shards(url, max_listed=2)
    assert (
        len(report["bad"]) == 2
        and report["bad_entries"] == 5
        and report["bad_by_kind"] == {"decode": 5}
    )


def test_cli_exit_codes_and_json(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report.json"
    assert main(["shards", "verify", str(good), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["ok"] is True
    assert "8 good sample(s) of 8 expected: OK" in capsys.readouterr().out
    (good / "train-000002.tar").write_bytes(b"")
    assert main(["shards", "verify", str(good), "--json", "-"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["samples"] == 6
    assert report["bad_by_kind"]["truncated"] == 2
    assert main(["shards", "verify", str(good), "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
