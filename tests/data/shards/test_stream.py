"""Shard streams: exactly-once epochs over ranks x workers, resampling, resume, bad data."""

from __future__ import annotations

import collections
import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest
import torch
from shard_synth import make_shards, take, truncate

from nepa.data.shards.codecs import PickleMemberError
from nepa.data.shards.health import BadData, BadDataError, DataHealth
from nepa.data.shards.image import ImageSample, ImageShardsConfig
from nepa.data.shards.manifest import ShardSourceError, resolve_shards
from nepa.data.shards.reader import read_shard
from nepa.data.shards.stream import ShardTrainData

COUNTS = [37, 50, 23, 41, 49]  # 200 samples in shards of uneven size
FIELDS = ["cls", "png"]


class Ident:
    """Sample function that returns the augmentation seed and the sample id (its .cls):
    ``{"seed": (1,), "label": ()}``; ``finish_batch`` marks the batch it was given."""

    def __call__(self, sample: dict, seed: int) -> dict[str, torch.Tensor]:
        return {
            "seed": torch.tensor([float(seed % 1009)]),
            "label": torch.tensor(int(sample["cls"])),
        }

    def finish_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**batch, "finished": torch.ones(len(batch["label"]))}


ident = Ident()


def data(source: str, sample_fn=ident, **fields) -> ShardTrainData:
    cfg = ImageShardsConfig(
        source=source, image_size=8, channels=3, **{"shuffle_buffer": 16, **fields}
    )
    return ShardTrainData(resolve_shards(source, "train"), sample_fn, cfg)


def take_xy(td: ShardTrainData, n: int, field: str = "seed", **kw) -> list:
    """The first ``n`` micro-batches as ``(batch[field], batch["label"], meta)``."""
    out = take(td, n, **kw)
    for batch, meta in out:
        assert isinstance(batch, dict) and isinstance(meta, dict)
        if td.sample_fn is ident and "fatal" not in meta:  # finish_batch saw the whole batch
            assert torch.equal(batch["finished"], torch.ones(len(batch["label"])))
    return [(batch[field], batch["label"], meta) for batch, meta in out]


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    return make_shards(tmp_path / "s", COUNTS)


def test_exact_epochs_once_per_epoch_over_2_ranks_x_2_workers(shards):
    td = data(str(shards))
    batch, accum, world = 20, 2, 2  # 200 samples: 10 steps per epoch, nothing dropped
    per_rank_epoch = 10 * accum
    epochs = [collections.Counter() for _ in range(2)]
    for rank in range(world):
        out = take_xy(
            td, 2 * per_rank_epoch, rank=rank, world=world, workers=2, batch=batch, accum=accum
        )
        for m, (x, y, meta) in enumerate(out):
            assert meta["micro"] == m and meta["epoch"] == m // per_rank_epoch
            assert x.shape == (5, 1) and meta["good"] == 5
            epochs[meta["epoch"]].update(y.tolist())
    for counter in epochs:
        assert sorted(counter) == list(range(200)) and set(counter.values()) == {1}
    # Both epochs see every sample once, in different orders.
    e0 = [y.tolist() for _, y, _ in take_xy(td, 10, batch=20)]
    e1 = [y.tolist() for _, y, _ in take_xy(td, 10, batch=20, start=10)]
    assert e0 != e1


def test_exact_epoch_drops_only_the_remainder(shards):
    td = data(str(shards))
    out = take_xy(td, 3 * 12, batch=16)  # 200 // 16 = 12 steps per epoch: 8 samples unused
    for e in range(3):
        ids = [i for _, y, _ in out[12 * e : 12 * (e + 1)] for i in y.tolist()]
        assert len(ids) == len(set(ids)) == 192


@pytest.mark.parametrize("mode", ["exact", "resampled"])
@pytest.mark.parametrize("start", [3, 7, 24, 29])
def test_resume_continues_exactly(shards, mode, start):
    td = data(str(shards), epochs=mode)
    kw = dict(rank=1, world=2, workers=2, batch=16, accum=2)  # 24 micro-batches per epoch
    full = take_xy(td, 40, **kw)
    resumed = take_xy(td, 40 - start, start=start, **kw)
    for (xa, ya, ma), (xb, yb, mb) in zip(full[start:], resumed, strict=True):
        assert ma["micro"] == mb["micro"]
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_main_process_reading_equals_one_worker(shards):
    td = data(str(shards))
    a = [y for _, y, _ in take_xy(td, 15, workers=0)]
    b = [y for _, y, _ in take_xy(td, 15, workers=1)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_resampled_reproducible_from_seed(shards):
    td = data(str(shards), epochs="resampled", epoch_steps=5)
    a = [y for _, y, _ in take_xy(td, 12)]
    b = [y for _, y, _ in take_xy(td, 12)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    ids = torch.cat(a).tolist()
    assert len(set(ids)) < len(ids)  # drawn with replacement: 192 draws from 200 repeat some
    other = ShardTrainData(td.shards, ident, td.options)
    loader = other.make_train_loader(
        global_batch=16,
        accum=1,
        rank=0,
        world=1,
        workers=0,
        seed=8,
        start_micro=0,
        pin_memory=False,
    )
    batch, meta = next(iter(loader))
    assert meta["micro"] == 0 and not torch.equal(batch["label"], a[0])


def test_pattern_without_manifest(shards, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in shards.glob("*.tar"):
        shutil.copy(p, plain / p.name)
    pattern = str(plain / "{split}-{000000..000004}.tar")
    with pytest.raises(ValueError, match="exact epochs need per-shard sample counts"):
        take_xy(data(pattern), 1)
    with pytest.raises(ValueError, match="set data.epoch_steps"):
        take_xy(data(pattern, epochs="resampled"), 1)
    out = take_xy(data(pattern, epochs="resampled", epoch_steps=3), 6)
    assert all(y.shape == (16,) for _, y, _ in out)


real_images = ImageSample(3, None)  # decode and check, no augmentation or normalisation


def health_of(out) -> DataHealth:
    h = DataHealth(max_bad_fraction=1.0)
    for _, _, meta in out:
        h.update(meta["good"], meta["bad"])
    return h


def test_truncated_shard_is_counted_and_batches_stay_full(shards):
    truncate(shards / "train-000001.tar", 0.5)  # 50 samples, about half lost
    out = take_xy(data(str(shards)), 10, workers=2, batch=20)  # one epoch, nothing dropped
    assert all(x.shape[0] == 20 for x, _, _ in out)  # topped up: every rank keeps its steps
    h = health_of(out)
    assert set(h.by_kind()) == {"truncated"}
    assert 20 <= h.n_bad <= 30 and h.good + h.n_bad == 200
    ids = [i for _, y, _ in out for i in y.tolist()]
    assert len(set(ids)) == h.good  # each surviving sample once; repeats only fill the gap


def test_bad_samples_counted_by_kind(tmp_path):
    bad = {3: "decode", 77: "decode", 120: "shape", 199: "missing"}
    src = make_shards(tmp_path / "bad", COUNTS, bad=bad)
    out = take_xy(data(str(src), sample_fn=real_images), 10, "image", workers=2, batch=20)
    h = health_of(out)
    assert h.by_kind() == {"decode": 2, "shape": 1, "missing": 1} and h.good == 196
    assert all(x.shape == (20, 3, 8, 8) for x, _, _ in out)
    labels = {i for _, y, _ in out for i in y.tolist()}
    assert labels == set(range(200)) - set(bad)


def test_all_bad_range_flags_a_fatal_batch(tmp_path):
    # A loader must not raise on one rank only (the others would wait forever in a collective):
    # it hands out placeholder batches flagged "fatal", which the trainer shares across ranks.
    src = make_shards(tmp_path / "gray", [40], bad={i: "shape" for i in range(40)})
    [(batch, meta)] = take(data(str(src), sample_fn=real_images), 1, batch=20)
    assert "no decodable sample" in meta["fatal"]
    assert meta["good"] == 0
    # a placeholder of every declared field: zeros of the right shape and dtype
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (20, 3, 8, 8) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (20,) and batch["label"].dtype == torch.int64
    assert not batch["image"].any() and not batch["label"].any()


def test_pickle_members_refused_unless_opted_in(tmp_path):
    src = make_shards(tmp_path / "p", COUNTS, extra={150: {"pyd": b"\x80\x04K\x01."}})
    out = take(data(str(src), shuffle_buffer=0), 10, batch=20)  # one epoch reads every shard
    fatal = [meta["fatal"] for _, meta in out if "fatal" in meta]
    assert fatal and "never unpickles" in fatal[0]
    assert "fatal" not in out[0][1]  # the batches before the pickle member are real
    assert out[0][0]["seed"].shape == (20, 1)
    ok = take_xy(data(str(src), shuffle_buffer=0, allow_pickle=True), 10, batch=20)
    assert all(meta["good"] == 20 and "fatal" not in meta for _, _, meta in ok)


def test_health_limit_and_totals():
    h = DataHealth(max_bad_fraction=0.1, min_samples=100)
    h.update(50, {"decode\ts0.tar": 6, "shape\ts1.tar": 4})
    totals = DataHealth.totals(h.vector())
    assert (totals.good, totals.n_bad, totals.fraction) == (50, 10, 10 / 60)
    assert totals.metrics() == {
        "data/good": 50,
        "data/bad": 10,
        "data/bad_decode": 6,
        "data/bad_shape": 4,
    }
    h.check(totals)  # 60 < min_samples: not judged yet
    with pytest.raises(BadDataError, match="max_bad_fraction"):
        h.check(totals, force=True)  # at an epoch's end it is
    assert (
        h.end_epoch() == {"s0.tar": 6, "s1.tar": 4}
        and DataHealth.totals(h.vector()).epoch_bad["decode"] == 0
    )
    # Totals from a checkpoint add to the run counts (on one rank), not to the epoch's.
    fresh = DataHealth(0.1)
    fresh.restore({"good": totals.good, "bad": totals.bad})
    assert DataHealth.totals(fresh.vector()).bad == totals.bad


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def http_root(shards):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    handler = functools.partial(_QuietHandler, directory=str(shards))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_pipe_url_from_local_http_server(shards, http_root):
    source = f"pipe:curl -sf {http_root}/{{name}}"
    remote = [y for _, y, _ in take_xy(data(source), 12, workers=2)]
    local = [y for _, y, _ in take_xy(data(str(shards)), 12, workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(remote, local, strict=True))


def test_reader_never_returns_a_half_sample(tmp_path):
    src = make_shards(tmp_path / "r", [12])
    whole = (src / "train-000000.tar").read_bytes()
    for cut in range(512, len(whole), 512):  # every member boundary, where tar ends "cleanly"
        (src / "train-000000.tar").write_bytes(whole[:cut])
        for start, stop in [(0, 12), (0, 5), (5, 12)]:
            bad = BadData()
            shard = str(src / "train-000000.tar")
            got = list(read_shard(shard, bad, expected=12, start=start, stop=stop, fields=FIELDS))
            assert all({"png", "cls"} <= set(s) for s in got)
            assert len(got) + bad.total == stop - start


def test_manifest_names_cannot_inject_shell(tmp_path):
    src = make_shards(tmp_path / "m", [4])
    text = (src / "manifest.json").read_text().replace("train-000000.tar", "x.tar; touch pwned")
    (src / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match="not a nepa shard manifest"):
        resolve_shards(str(src), "train")


def test_preflight_fails_before_training(tmp_path):
    src = make_shards(tmp_path / "p0", [8], extra={0: {"pyd": b"\x80\x04K\x01."}})
    with pytest.raises(PickleMemberError, match="never unpickles"):
        data(str(src))  # the first sample already shows it: refused at build time
    data(str(src), allow_pickle=True)
    gone = make_shards(tmp_path / "gone", [8])
    (gone / "train-000000.tar").unlink()
    with pytest.raises(ValueError, match="cannot read the first shard"):
        data(str(gone))


def test_missing_source_says_how_to_make_it(tmp_path, capsys):
    from nepa.cli import main

    with pytest.raises(ShardSourceError, match="nepa shards write SOURCE"):
        resolve_shards(str(tmp_path / "nowhere"), "train")
    src = make_shards(tmp_path / "s", [4])
    with pytest.raises(ShardSourceError, match="has no split 'test'"):
        resolve_shards(str(src), "test")
    recipe = f"{Path(__file__).resolve().parents[3] / 'recipes' / 'cifar10.py'}:shards"
    out = ["--out", str(tmp_path / "run")]
    assert main(["train", recipe, *out, "--set", f"data.source={tmp_path / 'nowhere'}"]) == 1
    assert "no shard folder at" in capsys.readouterr().err
