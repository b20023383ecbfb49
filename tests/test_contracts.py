"""Contract tests over every registered objective and dataset: what the trainer, evaluation and
data rely on, checked for each registry entry (a new entry is tested without a new test)."""

from __future__ import annotations

import io
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from shard_synth import make_shards, take
from tiny_recipe import jepa_tiny, tiny, token_tiny

from nepa.batch import FieldSpec, batch_size, collate
from nepa.config import RunConfig, import_file
from nepa.data.base import DATASETS, DataConfig, build_dataset, sample_batches
from nepa.data.images import ImageFolderConfig, ImageNpzConfig
from nepa.data.shards.array import ArrayShardsConfig
from nepa.data.shards.image import ImageShardsConfig
from nepa.data.shards.write import write_shards
from nepa.objectives.base import OBJECTIVES
from nepa.train.build import build_objective

TESTS = Path(__file__).resolve().parent
EMA_PLUGIN = import_file(TESTS / "user_plugins" / "ema_views.py")  # registers user_* entries

# ---------------------------------------------------------------------- objectives

#: objectives whose defaults need a recipe of their own (other kinds run on tests' tiny recipe)
OBJECTIVE_RECIPES = {"user_ema_views": EMA_PLUGIN.tiny, "jepa": jepa_tiny, "token": token_tiny}


def _objective_cfg(kind: str) -> RunConfig:
    if kind in OBJECTIVE_RECIPES:
        return OBJECTIVE_RECIPES[kind]()
    data = tiny().model_dump()
    data["objective"] = {"kind": kind}
    return RunConfig.model_validate(data)


def _batch(cfg: RunConfig, n: int = 4) -> dict[str, torch.Tensor]:
    ds = build_dataset(cfg.data, split="train", train=True)
    return collate([ds[(i, 100 + i)] for i in range(n)])


@pytest.mark.parametrize("kind", OBJECTIVES.names())
def test_objective_contract(kind: str) -> None:
    cfg = _objective_cfg(kind)
    obj = build_objective(cfg).train()
    batch = _batch(cfg)
    obj.fit(partial(sample_batches, cfg.data))  # the trainer's lifecycle on a fresh run
    obj.on_train_start(10)
    obj.on_step_start(0, 123)
    obj.on_micro_batch(0)
    loss, metrics = obj(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
    loss.backward()
    for name, p in obj.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, f"frozen parameter {name} got a gradient"
    obj.on_step_end(1)
    assert isinstance(obj.monitor(1), dict)
    # the optimizer groups hold exactly the trainable parameters, once each
    grouped = [id(p) for g in obj.param_groups(cfg.optim) for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in obj.parameters() if p.requires_grad)
    # features: per-layer (B, T, D) tokens, a keep mask that fits, a summary per layer
    backbone = obj.backbone()
    feats = obj.eval().features(batch, layers=[1, backbone.depth])
    B = batch_size(batch)
    assert len(feats.layers) == 2
    T = feats.layers[0].shape[1]
    for h in feats.layers:
        assert h.shape == (B, T, backbone.dim) and torch.isfinite(h).all()
    assert feats.keep is None or feats.keep.shape == (B, T)
    assert feats.coords.shape[-2:] == (T, len(feats.grid))
    if feats.summary is not None:
        assert [s.shape for s in feats.summary] == [(B, backbone.dim)] * 2
    # layer groups cover the backbone's parameters once each, input embedding first
    groups = obj.layer_groups()
    names = [n for g in groups for n, _ in g]
    assert len(groups) >= 2 and groups[0] and len(names) == len(set(names))
    assert len(names) == len(list(backbone.parameters()))


# ---------------------------------------------------------------------- datasets


def _folder(tmp: Path) -> DataConfig:
    from torchvision.io import encode_png

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for c in ("a", "b"):
            d = tmp / "tree" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                px = torch.from_numpy(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8))
                (d / f"{i}.png").write_bytes(encode_png(px).numpy().tobytes())
    return ImageFolderConfig(root=str(tmp / "tree"), image_size=8, channels=3)


def _npz(tmp: Path) -> DataConfig:
    return ImageNpzConfig(
        path="nepa:assets/demo/demo.npz", image_size=28, channels=1, limit_train=64, limit_test=32
    )


def _image_shards(tmp: Path) -> DataConfig:
    for split in ("train", "test"):
        make_shards(tmp / "shards", [12, 12], split=split)
    return ImageShardsConfig(source=str(tmp / "shards"), image_size=8, channels=3)


def _array_shards(tmp: Path) -> DataConfig:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        samples = (
            {
                "__key__": f"s{i:04d}",
                "npy": rng.standard_normal((2, 16)).astype(np.float32),
                "cls": i % 3,
            }
            for i in range(24)
        )
        write_shards(
            samples,
            tmp / "arrays",
            split=split,
            shard_size=12,
            modality="array",
            classes=["a", "b", "c"],
        )
    return ArrayShardsConfig(source=str(tmp / "arrays"), shape=(2, 16))


def _hapt(tmp: Path) -> DataConfig:
    from nepa.data.sensors import HaptConfig

    path = Path(os.environ.get("NEPA_DATA_DIR", "/nonexistent")) / "hapt.npz"
    if not path.is_file():
        pytest.skip("needs ${NEPA_DATA_DIR}/hapt.npz")
    return HaptConfig(limit_train=64, limit_test=32, jitter=0.05)


def _fsdd(tmp: Path) -> DataConfig:
    from nepa.data.audio import AudioFolderConfig

    path = Path(os.environ.get("NEPA_DATA_DIR", "/nonexistent")) / "fsdd-recordings.tar.gz"
    if not path.is_file():
        pytest.skip("needs ${NEPA_DATA_DIR}/fsdd-recordings.tar.gz")
    return AudioFolderConfig(limit_train=64, limit_test=32)


def _moving_mnist(tmp: Path) -> DataConfig:
    from nepa.data.video import MovingMnistConfig

    return MovingMnistConfig(
        path="nepa:assets/demo/demo.npz", train_videos=16, test_videos=8, frames=4, size=32
    )


def _audio_shards(tmp: Path) -> DataConfig:
    import soundfile as sf

    from nepa.data.shards.audio import AudioShardsConfig

    rate = 8000
    for split, n in (("train", 12), ("test", 6)):
        t = np.arange(rate // 2) / rate
        samples = []
        for i in range(n):
            buf = io.BytesIO()
            sf.write(buf, np.sin(2 * np.pi * (200 + 50 * i) * t), rate, format="WAV")
            samples.append({"__key__": f"c{i:03d}", "wav": buf.getvalue(), "cls": i % 2})
        write_shards(iter(samples), tmp / "audio", split=split, shard_size=6, modality="audio")
    return AudioShardsConfig(source=str(tmp / "audio"), target_frames=32)


def _uea(tmp: Path) -> DataConfig:
    from nepa.data.uea import UeaConfig

    pytest.importorskip("sktime", reason="the uea sets ship inside sktime (nepa[timeseries])")
    return UeaConfig(name="BasicMotions", pad_to=104, jitter=0.1, limit_test=20)


def _two_views(tmp: Path) -> DataConfig:
    return EMA_PLUGIN.TwoViewsConfig(limit_train=64, limit_test=32)


#: a small instance of every registered dataset kind; a new kind must add one here
DATASET_FACTORIES = {
    "image_folder": _folder,
    "image_npz": _npz,
    "image_shards": _image_shards,
    "array_shards": _array_shards,
    "user_two_views": _two_views,
    "hapt": _hapt,
    "audio_folder": _fsdd,
    "moving_mnist": _moving_mnist,
    "audio_shards": _audio_shards,
    "uea": _uea,
}


def _check_sample(sample: dict, fields: dict[str, FieldSpec], lead: tuple[int, ...] = ()) -> None:
    assert set(sample) == set(fields), (sorted(sample), sorted(fields))
    for name, spec in fields.items():
        v = sample[name]
        assert v.dtype == spec.torch_dtype, (name, v.dtype, spec)
        want = lead + tuple(spec.shape)
        assert len(v.shape) == len(want), (name, tuple(v.shape), spec)
        assert all(w is None or w == s for w, s in zip(want, v.shape, strict=True)), name


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", DATASETS.names())
def test_dataset_contract(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEPA_CACHE_DIR", str(tmp_path / "cache"))
    if kind not in DATASET_FACTORIES:
        pytest.fail(f"dataset {kind!r} has no factory in DATASET_FACTORIES: add a small instance")
    cfg = DATASET_FACTORIES[kind](tmp_path)
    fields = cfg.fields
    test = build_dataset(cfg, split="test", train=False)
    _check_sample(test[0], fields)
    assert _equal(test[0], test[0])
    assert len(test.labels) == len(test) and test.num_classes >= 1
    train = build_dataset(cfg, split="train", train=True)
    if hasattr(train, "make_train_loader"):  # a stream: the same seed gives the same batches
        (a, meta), (b, _) = take(train, 1, batch=4)[0], take(train, 1, batch=4)[0]
        _check_sample(a, fields, lead=(4,))
        assert meta["good"] == 4 and _equal(a, b)
    else:
        _check_sample(train[(1, 5)], fields)
        assert _equal(train[(1, 5)], train[(1, 5)])
