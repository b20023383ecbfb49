"""The sensor encoder (1-D patches, channel-mixing or channel-independent, RevIN, padding) and
the HAPT windows dataset."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nepa.batch import FieldSpec
from nepa.config import ConfigError
from nepa.encoders.base import build_encoder
from nepa.encoders.sensor import SensorEncoderConfig, revin
from nepa.eval.features import pool_features
from nepa.objectives.backbone import TokenBackbone
from nepa.predictor.config import PredictorConfig
from nepa.predictor.transformer import Predictor

FIELDS = {"signal": FieldSpec((3, 64)), "length": FieldSpec((), "int64")}
HAPT = Path(os.environ.get("NEPA_DATA_DIR", "/nonexistent")) / "hapt.npz"


def _enc(**kw):
    torch.manual_seed(0)
    return build_encoder(SensorEncoderConfig(**kw), dim=16, fields=FIELDS)


def _batch(B=2, L=64, length=None):
    x = torch.randn(B, 3, L, generator=torch.Generator().manual_seed(1))
    return {"signal": x, "length": torch.full((B,), L if length is None else length)}


@pytest.mark.parametrize(
    ("kw", "grid", "T"),
    [
        ({}, (7,), 7),  # (64 - 16) / 8 + 1
        ({"channels": "independent"}, (3, 7), 21),
        ({"patch": 8, "stride": 8, "channels": "independent", "scan": "column"}, (3, 8), 24),
    ],
)
def test_shapes_coords_and_gradients(kw, grid, T) -> None:
    enc = _enc(**kw)
    tok = enc(_batch())
    assert tok.emb.shape == (2, T, 16) and tok.grid == grid and enc.n_axes == len(grid)
    assert sorted(map(tuple, tok.coords.tolist())) == sorted(
        map(tuple, torch.cartesian_prod(*(torch.arange(n) for n in grid)).reshape(T, -1).tolist())
    )
    tok.emb.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_independent_scans_read_channel_major_or_time_major() -> None:
    raster = _enc(channels="independent", scan="raster")(_batch()).coords
    column = _enc(channels="independent", scan="column")(_batch()).coords
    assert raster[:7, 0].tolist() == [0] * 7  # all of channel 0 first
    assert column[:3, 1].tolist() == [0, 0, 0] and column[:3, 0].tolist() == [0, 1, 2]


def test_channel_independence_shares_one_projection() -> None:
    enc = _enc(channels="independent", revin=False)
    b = _batch()
    b["signal"][:, 1] = b["signal"][:, 0]  # two identical channels
    tok = enc(b)
    by_channel = tok.emb[:, tok.coords[:, 0].argsort(stable=True)].reshape(2, 3, 7, 16)
    torch.testing.assert_close(by_channel[:, 0], by_channel[:, 1])


def test_revin_normalises_real_steps_only() -> None:
    x = torch.randn(2, 3, 10) * 5 + 3
    out = revin(x, None)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 3), atol=1e-5, rtol=0)
    real = torch.arange(10)[None] < torch.tensor([[10], [6]])
    padded = revin(
        torch.cat(
            [
                x[1:],
            ],
            0,
        ).clone(),
        None,
    )
    masked = revin(x, real)
    torch.testing.assert_close(masked[1, :, :6], revin(x[1:, :, :6], None)[0])
    assert (masked[1, :, 6:] == 0).all() and padded.shape == (1, 3, 10)


@pytest.mark.parametrize("channels", ["mixing", "independent"])
@pytest.mark.parametrize("attn", ["causal", "bidirectional"])
@pytest.mark.parametrize("use_revin", [False, True])
def test_a_padded_series_embeds_like_the_unpadded_one(
    channels: str, attn: str, use_revin: bool
) -> None:
    """Length 40 of 64 steps: patches past 40 are padding; the real ones equal the 40-step run."""
    torch.manual_seed(0)
    cfg = SensorEncoderConfig(channels=channels, revin=use_revin)
    enc64 = build_encoder(cfg, dim=16, fields=FIELDS)
    fields40 = {"signal": FieldSpec((3, 40)), "length": FieldSpec((), "int64")}
    enc40 = build_encoder(cfg, dim=16, fields=fields40)
    enc40.load_state_dict(enc64.state_dict())
    pred = Predictor(PredictorConfig(dim=16, depth=2, heads=2, attn=attn), n_axes=enc64.n_axes)
    full = _batch(B=1)
    padded = {"signal": full["signal"].clone(), "length": torch.tensor([40])}
    padded["signal"][..., 40:] = 1e3  # junk that must not count
    short = {"signal": full["signal"][..., :40], "length": torch.tensor([40])}
    a = TokenBackbone(enc64, pred).eval()(padded, layers=[2])
    b = TokenBackbone(enc40, pred).eval()(short, layers=[2])
    assert a.keep.sum() == b.layers[0].shape[1]
    for pool in ("mean", "last"):
        torch.testing.assert_close(pool_features(a, 0, pool), pool_features(b, 0, pool))


def test_causality_in_time() -> None:
    torch.manual_seed(0)
    enc = _enc(revin=False)
    pred = Predictor(PredictorConfig(dim=16, depth=2, heads=2), n_axes=1).eval()
    bb = TokenBackbone(enc, pred)
    b = _batch(B=1)
    c = {**b, "signal": b["signal"].clone()}
    c["signal"][..., 48:] += 5.0  # only the last two patches (starts 40, 48) see it
    ha, hc = bb(b, layers=[2]).layers[0], bb(c, layers=[2]).layers[0]
    torch.testing.assert_close(ha[:, :5], hc[:, :5])
    assert not torch.allclose(ha[:, 5:], hc[:, 5:])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("encoder.patch=200", "series length 128 is not covered by patches of encoder.patch=200"),
        ("encoder.stride=5", "encoder.patch=16 every encoder.stride=5"),
        ("encoder.scan=peano", "unknown scan order 'peano'"),
        ("encoder.field=acc", "reads field 'acc'"),
    ],
)
def test_config_errors_name_the_numbers(override: str, message: str) -> None:
    from nepa.config import apply_overrides, load_recipe

    cfg, _ = load_recipe(f"{Path(__file__).resolve().parents[2] / 'recipes' / 'hapt.py'}:tiny")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(cfg, [override])


@pytest.mark.skipif(not HAPT.is_file(), reason="needs ${NEPA_DATA_DIR}/hapt.npz")
def test_hapt_windows_follow_the_uci_har_protocol() -> None:
    from nepa.data.base import build_dataset
    from nepa.data.sensors import UCI_HAR_TEST_SUBJECTS, HaptConfig

    cfg = HaptConfig(jitter=0.1)
    train, test = (build_dataset(cfg, split=s, train=s == "train") for s in ("train", "test"))
    assert set(test.subjects.tolist()) == set(UCI_HAR_TEST_SUBJECTS)
    assert not set(train.subjects.tolist()) & set(UCI_HAR_TEST_SUBJECTS)
    with np.load(HAPT) as f:
        session, label = f["session"], f["label"]
    for ds in (train, test):
        assert ds.labels.min() == 0 and ds.labels.max() == 5
        for i in range(0, len(ds), 97):
            s = ds.starts[i]
            assert session[s] == session[s + 127]  # never across two recordings
            values, counts = np.unique(label[s : s + 128], return_counts=True)
            assert values[counts.argmax()] == ds.labels[i] + 1
    x = torch.stack([train[i]["signal"] for i in range(0, len(train), 50)])
    assert abs(x.mean()) < 0.2 and 0.7 < x.std() < 1.3  # standardised with train statistics
    assert torch.equal(train[(3, 7)]["signal"], train[(3, 7)]["signal"])
    assert not torch.equal(train[(3, 7)]["signal"], train[(3, 8)]["signal"])


@pytest.mark.skipif(
    importlib.util.find_spec("sktime") is None, reason="UEA sets ship inside sktime"
)
def test_basic_motions_from_sktime_offline() -> None:
    from nepa.data.base import build_dataset
    from nepa.data.uea import UeaConfig

    cfg = UeaConfig(name="BasicMotions", pad_to=104)
    train, test = (build_dataset(cfg, split=s, train=s == "train") for s in ("train", "test"))
    assert (len(train), len(test)) == (40, 40) and train.num_classes == 4
    assert train.classes == ["badminton", "running", "standing", "walking"]
    s = test[0]
    assert s["signal"].shape == (6, 104) and int(s["length"]) == 100
    assert (s["signal"][:, 100:] == 0).all()  # padding, which the encoder masks
    x = torch.stack([train[i]["signal"][:, :100] for i in range(40)])
    torch.testing.assert_close(x.mean(dim=(0, 2)), torch.zeros(6), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not one sktime ships"):
        _ = UeaConfig(name="Epilepsy").fields
