"""Video: Moving MNIST generation (bouncing digits, seeded, split-disjoint digits, labels) and
the tubelet encoder (Conv3d by hand, 3-D grid and RoPE, padding honoured, config errors)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nepa.batch import FieldSpec
from nepa.config import ConfigError, apply_overrides, load_recipe
from nepa.data.base import build_dataset
from nepa.data.video import DIGIT, PAIRS, MovingMnistConfig, Trajectories
from nepa.encoders.base import build_encoder
from nepa.encoders.video import VideoEncoderConfig
from nepa.eval.features import pool_features
from nepa.objectives.backbone import TokenBackbone
from nepa.predictor.config import PredictorConfig
from nepa.predictor.transformer import Predictor

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture
def mnist(tmp_path: Path) -> Path:
    """A small MNIST-shaped npz: digit image i is a solid square of value 1 + i % 250 (so each
    rendered digit is identifiable) with label i % 10; the test split's values differ."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n, base in (("train", 40, 1), ("test", 20, 120)):
        x = np.zeros((n, DIGIT, DIGIT), np.uint8)
        x[:, 6:22, 6:22] = (base + np.arange(n))[:, None, None]
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = rng.permutation(np.arange(n) % 10)
    path = tmp_path / "mnist.npz"
    np.savez(path, **arrays)
    return path


def _cfg(mnist: Path, **kw) -> MovingMnistConfig:
    return MovingMnistConfig(path=str(mnist), train_videos=30, test_videos=12, **kw)


def test_videos_are_seeded_bounded_and_bounce(mnist: Path) -> None:
    cfg = _cfg(mnist)
    a, b = Trajectories(cfg, "train"), Trajectories(cfg, "train")
    other = Trajectories(cfg.model_copy(update={"seed": 1}), "train")
    assert all(np.array_equal(a.render(i), b.render(i)) for i in range(5))
    assert not np.array_equal(a.render(0), other.render(0))
    v = a.render(3)
    assert v.shape == (20, 64, 64) and v.dtype == np.uint8
    one = Trajectories(_cfg(mnist, digits=1, label="direction"), "train")
    bounced = 0
    for i in range(len(one)):
        v = one.render(i)
        value = one.x[one.digit[i, 0], 10, 10]
        pos = np.array([np.argwhere(f == value).min(0) for f in v])  # (frames, 2) corner
        assert (pos >= 6).all() and (pos + 16 <= 64 - 6).all()  # inside the frame
        assert np.abs(np.diff(pos, axis=0)).max() <= math.ceil(cfg.speed) + 1  # speed px/frame
        moves = np.sign(np.diff(pos, axis=0))  # (frames - 1, 2)
        bounced += int((moves[1:] * moves[:-1] < 0).any())  # a reversal: a wall
    assert bounced > 0


def test_train_and_test_draw_their_own_digits(mnist: Path) -> None:
    cfg = _cfg(mnist)
    train, test = Trajectories(cfg, "train"), Trajectories(cfg, "test")
    train_values = {int(v) for i in range(len(train)) for v in np.unique(train.render(i))} - {0}
    test_values = {int(v) for i in range(len(test)) for v in np.unique(test.render(i))} - {0}
    assert train_values <= set(range(1, 41)) and test_values <= set(range(120, 140))


def test_pair_and_direction_labels(mnist: Path) -> None:
    cfg = _cfg(mnist)
    with np.load(mnist) as f:
        y = f["y_train"]
    t = Trajectories(cfg, "train")
    assert len(PAIRS) == 55
    for i in range(len(t)):
        a, b = sorted(y[t.digit[i]])
        assert PAIRS[t.labels[i]] == f"{a}+{b}"
    d = Trajectories(
        MovingMnistConfig(path=str(mnist), train_videos=200, digits=1, label="direction"), "train"
    )
    checked = 0
    for i in range(len(d)):
        # the digit's move over the first 3 frames, in screen terms (row down, column right)
        value = d.x[d.digit[i, 0], 10, 10]
        v = d.render(i)
        (r0, c0), (r1, c1) = (np.argwhere(v[f] == value).mean(0) for f in (0, 3))
        measured = math.atan2(-(r1 - r0), c1 - c0) % (2 * math.pi)
        start, free = d.start[i, 0], 64 - DIGIT
        octant = measured / (math.pi / 4)
        no_bounce = min(start.min(), free - start.max()) > 3 * cfg.speed + 1
        if no_bounce and abs(octant - round(octant)) < 0.4:  # not at an octant's edge
            assert d.labels[i] == round(octant) % 8, (i, math.degrees(measured))
            checked += 1
    assert checked >= 10


def test_dataset_samples_and_normalisation(mnist: Path) -> None:
    cfg = _cfg(mnist, limit_test=10)
    test = build_dataset(cfg, split="test", train=False)
    s = test[0]
    assert s["video"].shape == (1, 20, 64, 64) and s["video"].dtype == torch.float32
    assert len(test) == 10 and test.num_classes == 55
    raw = test.traj.render(int(test.idx[0]))
    transform = cfg.input_transform(test.normalization)
    torch.testing.assert_close(transform(raw)["video"], s["video"])
    with pytest.raises(ValueError, match=r"expected a \(20, 64, 64\) uint8 video"):
        transform(raw[:5])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"size": 20}, "size=20 leaves an MNIST digit"),
        ({"size": 28}, "size=28 leaves an MNIST digit"),
        ({"size": 32, "speed": 4.0}, "speed=4.0 pixels per frame is not below"),
        ({"digits": 3}, "label 'pair' needs digits=2"),
    ],
)
def test_bad_configs(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MovingMnistConfig(**kw)


def test_missing_arrays_name_the_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"x.npz lacks \['x_train', 'y_train'\]"):
        Trajectories(MovingMnistConfig(path=str(tmp_path / "x.npz")), "train")


# ------------------------------------------------------------------------------ tubelet encoder

FIELDS = {"video": FieldSpec((2, 8, 12, 16)), "length": FieldSpec((), "int64")}


def test_tubelet_embedding_by_hand_and_3d_coords() -> None:
    torch.manual_seed(0)
    enc = build_encoder(VideoEncoderConfig(tubelet=(2, 4, 4)), dim=5, fields=FIELDS)
    x = torch.randn(2, 2, 8, 12, 16)
    tok = enc({"video": x, "length": torch.tensor([8, 8])})
    assert tok.grid == (4, 3, 4) and enc.n_axes == 3 and tok.coords.shape == (48, 3)
    W = enc.proj.weight.reshape(5, -1)
    for i, (t, r, c) in enumerate(tok.coords.tolist()):
        cube = x[:, :, 2 * t : 2 * t + 2, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].reshape(2, -1)
        torch.testing.assert_close(tok.emb[:, i], cube @ W.T + enc.proj.bias)
    assert tok.keep.all()


@pytest.mark.parametrize("scan", ["raster", "snake", "hilbert"])
def test_time_major_scans_finish_a_time_step_first(scan: str) -> None:
    enc = build_encoder(VideoEncoderConfig(tubelet=(2, 4, 4), scan=scan), dim=4, fields=FIELDS)
    t = enc.coords[:, 0]
    assert (t[1:] >= t[:-1]).all() and sorted(map(tuple, enc.coords.tolist())) == list(
        itertools.product(range(4), range(3), range(4))
    )


@pytest.mark.parametrize("attn", ["causal", "bidirectional"])
def test_a_padded_clip_embeds_like_the_unpadded_one(attn: str) -> None:
    torch.manual_seed(0)
    cfg = VideoEncoderConfig(tubelet=(2, 4, 4))
    short = {"video": FieldSpec((2, 4, 12, 16)), "length": FieldSpec((), "int64")}
    enc_long = build_encoder(cfg, dim=16, fields=FIELDS)
    enc_short = build_encoder(cfg, dim=16, fields=short)
    enc_short.load_state_dict(enc_long.state_dict())
    pred = Predictor(PredictorConfig(dim=16, depth=2, heads=2, attn=attn), n_axes=3)
    x = torch.randn(1, 2, 4, 12, 16)
    padded = {
        "video": torch.cat([x, 50 * torch.randn(1, 2, 4, 12, 16)], 2),
        "length": torch.tensor([4]),
    }
    a = TokenBackbone(enc_long, pred).eval()(padded, layers=[2])
    b = TokenBackbone(enc_short, pred).eval()({"video": x, "length": torch.tensor([4])}, layers=[2])
    assert a.keep.sum() == 2 * 12 and b.keep.all()
    for pool in ("mean", "last"):
        torch.testing.assert_close(pool_features(a, 0, pool), pool_features(b, 0, pool))


def test_causality_across_time() -> None:
    torch.manual_seed(0)
    enc = build_encoder(VideoEncoderConfig(tubelet=(2, 4, 4)), dim=16, fields=FIELDS)
    bb = TokenBackbone(enc, Predictor(PredictorConfig(dim=16, depth=2, heads=2), n_axes=3)).eval()
    b = {"video": torch.randn(1, 2, 8, 12, 16), "length": torch.tensor([8])}
    c = {**b, "video": b["video"].clone()}
    c["video"][:, :, 6:] += 3.0  # the last time step of tubelets (tokens 36..47)
    ha, hc = bb(b, layers=[2]).layers[0], bb(c, layers=[2]).layers[0]
    torch.testing.assert_close(ha[:, :36], hc[:, :36])
    assert not torch.allclose(ha[:, 36:], hc[:, 36:])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("encoder.tubelet=[3,16,16]", "20 frames are not divisible by the tubelet's 3"),
        ("encoder.tubelet=[4,24,16]", "64 height are not divisible by the tubelet's 24"),
        ("encoder.scan=spiral", "encoder.scan='spiral'"),
    ],
)
def test_config_errors_name_both_numbers(override: str, message: str) -> None:
    cfg, _ = load_recipe(f"{RECIPES / 'moving_mnist.py'}:tiny")
    with pytest.raises(ConfigError, match=message):
        apply_overrides(cfg, [override])


def test_direction_is_the_leftmost_digits(mnist: Path) -> None:
    """With two digits the label follows the one further left in frame 0, visible in the video."""
    t = Trajectories(_cfg(mnist, label="direction"), "train")
    for i in range(len(t)):
        (r0, c0), (r1, c1) = t.start[i]
        k = 0 if (c0, r0) < (c1, r1) else 1
        assert t.labels[i] == round(t.angle[i, k] / (math.pi / 4)) % 8
    assert any(
        round(t.angle[i, 0] / (math.pi / 4)) % 8 != round(t.angle[i, 1] / (math.pi / 4)) % 8
        for i in range(len(t))
    )  # the digits often move apart: which one is first matters
