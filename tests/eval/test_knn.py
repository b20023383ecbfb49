"""kNN classification and token pooling on hand-made features; evaluation of a tiny run."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_recipe import tiny_with

from nepa.batch import collate
from nepa.encoders.scans import scan_coords
from nepa.eval.features import eval_subset, extract, labels_of, pool_features, pool_tokens
from nepa.eval.knn import knn_predict, knn_top1
from nepa.eval.load import load_run
from nepa.eval.run import knn_eval, knn_sweep, raw_input_knn, resolve_layer
from nepa.objectives.backbone import Features

# ------------------------------------------------------------------------------ kNN


def test_clustered_features_are_classified_perfectly() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    train_y = torch.arange(4).repeat_interleave(10)
    test_y = torch.arange(4).repeat_interleave(5)
    train = centres[train_y] + 0.1 * torch.randn(40, 16, generator=g)
    test = centres[test_y] + 0.1 * torch.randn(20, 16, generator=g)
    assert knn_top1(train, train_y, test, test_y, num_classes=4, k=5) == 1.0
    shuffled = test_y[torch.randperm(20, generator=g)]
    assert knn_top1(train, train_y, test, shuffled, num_classes=4, k=5) < 0.6  # can fail


def _unit(sim: float, axis: int, dim: int = 8) -> torch.Tensor:
    """A unit vector with cosine ``sim`` to e_0, the rest along e_axis."""
    v = torch.zeros(dim)
    v[0], v[axis] = sim, math.sqrt(1 - sim**2)
    return v


def test_k_larger_than_bank_uses_the_whole_bank() -> None:
    bank = torch.stack([_unit(0.9, 1), _unit(0.2, 2), _unit(0.3, 3)])
    labels = torch.tensor([0, 1, 1])
    q = torch.eye(8)[:1]
    # k=1: the nearest (class 0) wins; all 3 with near-uniform weights: class 1 has two votes
    assert knn_predict(bank, labels, q, num_classes=2, k=1).tolist() == [0]
    assert knn_predict(bank, labels, q, num_classes=2, k=50, temperature=100.0).tolist() == [1]
    assert knn_predict(bank, labels, q, num_classes=3, k=50, temperature=0.07).tolist() == [0]


def test_temperature_weighting_breaks_a_count_tie() -> None:
    """Two neighbours per class: class 0 = one very close + one far, class 1 = two medium.
    Sharp weights (T=0.07) pick the very close one; flat weights (T=100) the larger sum."""
    bank = torch.stack([_unit(0.9, 1), _unit(0.1, 2), _unit(0.6, 3), _unit(0.6, 4)])
    labels = torch.tensor([0, 0, 1, 1])
    q = torch.eye(8)[:1]
    assert knn_predict(bank, labels, q, num_classes=2, k=4, temperature=0.07).tolist() == [0]
    assert knn_predict(bank, labels, q, num_classes=2, k=4, temperature=100.0).tolist() == [1]


def test_knn_is_cosine_and_chunked() -> None:
    g = torch.Generator().manual_seed(1)
    bank, labels = torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g)
    q = torch.randn(17, 6, generator=g)
    ref = knn_predict(bank, labels, q, num_classes=3, k=7)
    assert torch.equal(knn_predict(bank * 5, labels, q * 0.1, num_classes=3, k=7), ref)
    assert torch.equal(knn_predict(bank, labels, q, num_classes=3, k=7, chunk=4), ref)


# ------------------------------------------------------------------------------ pooling


def _hand_tokens(order: str, D: int = 2):
    """A 4x4 grid read in ``order``; token at cell (r, c) holds (4r + c, -(4r + c))."""
    coords = torch.from_numpy(scan_coords(order, (4, 4)))
    value = (coords[:, 0] * 4 + coords[:, 1]).float()
    h = torch.stack([value, -value], dim=-1)[None, :, :D]  # (1, 16, D)
    return h, Features(layers=[h], keep=None, coords=coords, grid=(4, 4))


@pytest.mark.parametrize("order", ["raster", "hilbert", "random"])
def test_pool_tokens_by_hand(order: str) -> None:
    h, tok = _hand_tokens(order)
    torch.testing.assert_close(pool_tokens(h, tok, "mean"), torch.tensor([[7.5, -7.5]]))
    torch.testing.assert_close(pool_tokens(h, tok, "last"), h[:, -1])
    # grid2 on 4x4: mean of each 2x2 quadrant, quadrants row-major, features per quadrant
    # TL = {0,1,4,5} -> 2.5, TR = {2,3,6,7} -> 4.5, BL = {8,9,12,13} -> 10.5, BR -> 12.5
    grid2 = pool_tokens(h, tok, "grid2")
    assert grid2.shape == (1, 4 * 2)
    torch.testing.assert_close(
        grid2, torch.tensor([[2.5, -2.5, 4.5, -4.5, 10.5, -10.5, 12.5, -12.5]])
    )
    grid4 = pool_tokens(h, tok, "grid4")  # one cell per token, in row-major cell order
    torch.testing.assert_close(
        grid4, torch.stack([torch.arange(16.0), -torch.arange(16.0)], -1).reshape(1, -1)
    )


def test_pool_tokens_1d_and_3d_grids() -> None:
    h = torch.arange(8.0)[None, :, None]  # (1, 8, 1), raster
    tok = Features(layers=[h], keep=None, coords=torch.arange(8)[:, None], grid=(8,))
    torch.testing.assert_close(pool_tokens(h, tok, "grid2"), torch.tensor([[1.5, 5.5]]))
    coords = torch.from_numpy(scan_coords("raster", (2, 2, 2)))
    h3 = torch.arange(8.0)[None, :, None]
    out = pool_tokens(h3, Features(layers=[h3], keep=None, coords=coords, grid=(2, 2, 2)), "grid2")
    torch.testing.assert_close(out, h3.reshape(1, -1))  # 2x2x2 cells of one token each
    with pytest.raises(ValueError, match="unknown pool 'max'"):
        pool_tokens(h, tok, "max")


def test_pool_features_start_takes_the_summary() -> None:
    h, feats = _hand_tokens("raster")
    summary = torch.tensor([[3.0, 4.0]])
    with_start = Features(
        layers=[h], keep=None, coords=feats.coords, grid=(4, 4), summary=[summary]
    )
    torch.testing.assert_close(pool_features(with_start, 0, "start"), summary)
    torch.testing.assert_close(pool_features(with_start, 0, "mean"), torch.tensor([[7.5, -7.5]]))
    with pytest.raises(ValueError, match="no per-sample summary"):
        pool_features(feats, 0, "start")


def test_resolve_layer() -> None:
    assert resolve_layer(-1, 4) == 4 and resolve_layer(-4, 4) == 1 and resolve_layer(2, 4) == 2
    for bad in (0, 5, -5):
        with pytest.raises(ValueError, match="outside 1..4"):
            resolve_layer(bad, 4)


# ------------------------------------------------------------------------------ a run


@pytest.mark.slow
def test_knn_eval_of_a_trained_run(tiny_run) -> None:
    cfg, obj = load_run(tiny_run)
    results = knn_sweep(
        cfg, obj, torch.device("cpu"), layers=[1, -1], pools=["mean", "grid2"], attns=["causal"]
    )
    assert [(r["layer"], r["pool"]) for r in results] == [
        (1, "mean"),
        (1, "grid2"),
        (2, "mean"),
        (2, "grid2"),
    ]
    for r in results:
        assert r["n_train"] == 256 and r["n_test"] == 128 and r["k"] == 10
        assert r["attn"] == "causal"
        assert 0.2 < r["top1"] <= 1.0  # 10 digit classes: chance is 0.1
    # knn_eval: one result at cfg.eval's layer (-2 -> block 1) and pool, under the backbone's
    # own attention mode (eval.attn null -> the run's causal)
    one = knn_eval(cfg, obj, torch.device("cpu"))
    assert isinstance(one, dict)
    assert (one["layer"], one["pool"], one["attn"]) == (1, "grid2", "causal")
    assert one["top1"] == results[1]["top1"]
    raw = raw_input_knn(cfg)
    assert raw["pool"] == "raw_pixels" and 0.5 < raw["top1"] <= 1.0  # pixels kNN on MNIST is strong


def test_extract_matches_features(tiny_run) -> None:
    from nepa.data.base import build_dataset

    cfg, obj = load_run(tiny_run)
    ds = eval_subset(build_dataset(cfg.data, split="test", train=False), 70)
    feats = extract(
        obj,
        ds,
        layers=[2],
        pools=["mean", "last"],
        attn="causal",
        device=torch.device("cpu"),
        batch_size=50,
    )
    assert feats[(2, "mean")].shape == (70, 32) and feats[(2, "last")].shape == (70, 32)
    batch = collate([ds[i] for i in range(70)])
    assert batch["image"].shape == (70, 1, 28, 28)
    torch.testing.assert_close(batch["label"], labels_of(ds))
    out = obj.features(batch, layers=[2])  # attn None: the backbone's own (causal)
    assert len(out.layers) == 1 and out.layers[0].shape == (70, 16, 32) and out.keep is None
    torch.testing.assert_close(feats[(2, "mean")], out.layers[0].mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats[(2, "last")], out.layers[0][:, -1], atol=1e-5, rtol=1e-5)


def test_random_init_differs_from_trained(tiny_run) -> None:
    cfg, trained = load_run(tiny_run)
    _, fresh = load_run(tiny_run, random_init=True)
    from nepa.train.build import build_objective

    seeded = build_objective(tiny_with())
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, seeded.state_dict()[k], rtol=0, atol=0)
    assert not torch.equal(
        fresh.state_dict()["encoder.proj.weight"], trained.state_dict()["encoder.proj.weight"]
    )


def test_a_run_without_exported_weights_loads_its_latest_checkpoint(tiny_run, tmp_path) -> None:
    """An interrupted run has no model.safetensors: evaluation uses its latest checkpoint."""
    import shutil

    from nepa.train.checkpoint import latest_checkpoint, load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "model.safetensors").unlink()
    _, obj = load_run(run)
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))["model"]
    for k, v in obj.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(FileNotFoundError, match="has not saved any weights"):
        load_run(run)


class _ClassSorted(torch.utils.data.Dataset):
    """Stored class by class, like an ImageFolder archive: the first items are all class 0."""

    num_classes = 4

    def __init__(self) -> None:
        self.labels = torch.arange(4).repeat_interleave(50)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return {"x": torch.full((1,), float(i)), "label": self.labels[i]}


def test_eval_subset_is_a_seeded_random_draw_not_the_first_items() -> None:
    ds = _ClassSorted()
    sub = eval_subset(ds, 40)
    assert len(sub) == 40 and sub.num_classes == 4
    assert len(torch.unique(sub.labels)) == 4  # the first 40 would all be class 0
    assert [int(sub[i]["label"]) for i in range(40)] == sub.labels.tolist()  # labels follow items
    again = eval_subset(ds, 40)
    assert [again[i]["x"].item() for i in range(40)] == [sub[i]["x"].item() for i in range(40)]
    other = eval_subset(ds, 40, seed=1)
    assert [other[i]["x"].item() for i in range(40)] != [sub[i]["x"].item() for i in range(40)]
    assert eval_subset(ds, None) is ds and eval_subset(ds, 500) is ds
