"""Per-sample coordinates, the optional start token, and the predictor's explicit hooks
(set_step_seed, set_drop_path, depth / dim / heads)."""

from __future__ import annotations

import re

import pytest
import torch

from nepa.predictor.attention import MaskSpec
from nepa.predictor.config import PredictorConfig
from nepa.predictor.rope import RotaryND, normalized_coords
from nepa.predictor.transformer import Predictor
from nepa.tokens import Tokens


def _coords(grid: tuple[int, ...]) -> torch.Tensor:
    """Row-major integer coordinates (T, A) of every cell of ``grid``."""
    axes = torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")
    return torch.stack(axes, dim=-1).reshape(-1, len(grid))


def _pred(n_axes: int = 2, **kw) -> Predictor:
    cfg = PredictorConfig(**{"dim": 32, "depth": 2, "heads": 2, "attn_backend": "sdpa", **kw})
    torch.manual_seed(0)
    return Predictor(cfg, n_axes=n_axes)


# ------------------------------------------------------------------------------ coords


def test_tokens_take_shared_or_per_sample_coords() -> None:
    emb, grid = torch.randn(3, 6, 8), (2, 3)
    shared = Tokens(emb, _coords(grid), grid)
    assert shared.n_axes == 2 and not shared.per_sample_coords
    per_sample = Tokens(emb, _coords(grid).expand(3, 6, 2), grid)
    assert per_sample.n_axes == 2 and per_sample.per_sample_coords
    for bad in (torch.zeros(7, 2), torch.zeros(6, 3), torch.zeros(2, 6, 2), torch.zeros(6)):
        msg = "coords must be (T=6, A=2) shared by the batch or (B=3, T=6, A=2) per sample, got "
        with pytest.raises(ValueError, match=re.escape(f"{msg}{tuple(bad.shape)}")):
            Tokens(emb, bad, grid)


def test_normalized_coords_per_sample() -> None:
    c_BTA = torch.tensor([[[0, 0], [3, 1]], [[1, 0], [2, 1]]])
    out = normalized_coords(c_BTA, (4, 2))
    assert out.shape == (2, 2, 2)
    for b in range(2):
        torch.testing.assert_close(out[b], normalized_coords(c_BTA[b], (4, 2)), rtol=0, atol=0)
    torch.testing.assert_close(out[1], torch.tensor([[-0.25, -0.5], [0.25, 0.5]]))


@pytest.mark.parametrize("start_token", [True, False])
def test_per_sample_coords_equal_to_shared_give_identical_outputs_and_gradients(
    start_token: bool,
) -> None:
    grid = (3, 4)
    coords_TA = _coords(grid)[torch.randperm(12, generator=torch.Generator().manual_seed(1))]
    keep = torch.ones(2, 12, dtype=torch.bool)
    keep[1, 9:] = False
    results = []
    for coords in (coords_TA, coords_TA.expand(2, 12, 2), coords_TA.repeat(2, 1, 1)):
        pred = _pred(start_token=start_token, layerscale=None)
        emb = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(2))
        emb.requires_grad_(True)
        out = pred(emb, coords, grid, keep)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3)))
        grads = [emb.grad] + [p.grad for p in pred.parameters()]
        maps = pred.attention_maps(emb.detach(), coords, grid, keep, layer=2)
        results.append((out.detach(), maps, *grads))
        cos, _ = pred.rope_tables(coords, grid)
        S = 12 + int(start_token)
        assert cos.shape == ((S, 2, 16) if coords.ndim == 2 else (2, S, 2, 16))  # per head
    for per_sample in results[1:]:
        for a, b in zip(results[0], per_sample, strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("start_token", [True, False])
def test_per_sample_coords_give_each_sample_its_own_result(start_token: bool) -> None:
    """JEPA-like: every sample sees its own subset of cells. Each row of the batched call
    equals running that sample alone with its coordinates shared."""
    grid = (4, 4)
    gen = torch.Generator().manual_seed(0)
    cells = _coords(grid)
    coords_BTA = torch.stack([cells[torch.randperm(16, generator=gen)[:7]] for _ in range(3)])
    assert not torch.equal(coords_BTA[0], coords_BTA[1])
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[2, 5:] = False
    pred = _pred(start_token=start_token, layerscale=None).eval()
    emb = torch.randn(3, 7, 32, generator=gen, requires_grad=True)
    out = pred(emb, coords_BTA, grid, keep)
    out.sum().backward()
    maps = pred.attention_maps(emb.detach(), coords_BTA, grid, keep, layer=2)
    for b in range(3):
        e = emb.detach()[b : b + 1].clone().requires_grad_(True)
        alone = pred(e, coords_BTA[b], grid, keep[b : b + 1])
        alone.sum().backward()
        torch.testing.assert_close(out[b : b + 1], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(emb.grad[b : b + 1], e.grad, atol=1e-5, rtol=1e-5)
        alone_maps = pred.attention_maps(e.detach(), coords_BTA[b], grid, keep[b : b + 1], layer=2)
        torch.testing.assert_close(maps[b : b + 1], alone_maps, atol=1e-6, rtol=1e-5)
    # ... and the coordinates matter: sample 1 with sample 0's coordinates is another result
    wrong = pred(emb.detach(), coords_BTA[0], grid, keep)
    assert (wrong[1] - out[1]).abs().max() > 1e-3


def test_predictor_rejects_coords_of_the_wrong_shape() -> None:
    pred, grid = _pred(), (2, 3)
    emb = torch.randn(2, 6, 32)
    for bad in (_coords(grid)[:5], _coords(grid).expand(3, 6, 2), _coords((2, 3, 1))):
        with pytest.raises(ValueError, match=r"coords must be \(T=6, A=2\)"):
            pred(emb, bad, grid)
    with pytest.raises(ValueError, match="built for 2 grid axes, got a 3-axis grid"):
        pred(emb, _coords((2, 3, 1)), (2, 3, 1))


# ------------------------------------------------------------------------------ start token


@pytest.mark.parametrize("start_token", [True, False])
def test_start_token_option_shapes_parameters_and_tables(start_token: bool) -> None:
    pred = _pred(start_token=start_token, layerscale=None).eval()
    S = 12 + int(start_token)
    grid = (3, 4)
    coords = _coords(grid)
    emb = torch.randn(2, 12, 32)
    assert pred.has_start_token is start_token
    assert ("start_token" in dict(pred.named_parameters())) is start_token
    assert ("start_token" in pred.state_dict()) is start_token
    assert pred.no_weight_decay() == ({"start_token"} if start_token else set())
    out = pred(emb, coords, grid)
    assert out.shape == (2, S, 32)
    layers = pred(emb, coords, grid, return_layers=[1, 2])
    assert [h.shape for h in layers] == [(2, S, 32)] * 2
    torch.testing.assert_close(layers[1], out, rtol=0, atol=0)
    maps = pred.attention_maps(emb, coords, grid, layer=1)
    assert maps.shape == (2, 2, S, S)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, S))
    assert torch.all(maps.triu(diagonal=1) == 0)  # causal
    cos, sin = pred.rope_tables(coords, grid)
    ref_cos, ref_sin = pred.rope.tables(normalized_coords(coords, grid))
    assert cos.shape == (S, 2, 16)  # written out for each of the 2 heads
    # the tokens' rows are RoPE's own; a start token adds one identity row in front
    assert torch.equal(cos[-12:], ref_cos.expand(-1, 2, -1))
    assert torch.equal(sin[-12:], ref_sin.expand(-1, 2, -1))
    if start_token:
        assert torch.equal(cos[0], torch.ones(2, 16)) and torch.equal(sin[0], torch.zeros(2, 16))


def test_without_start_token_the_first_output_sees_only_the_first_token() -> None:
    """No start token: output i is token i's, and under causal attention output 0 is a function
    of token 0 alone (it equals running token 0 alone), unlike with a start token."""
    grid = (6,)
    coords, emb = _coords(grid), torch.randn(2, 6, 32)
    for start_token in (False, True):
        pred = _pred(n_axes=1, start_token=start_token, layerscale=None).eval()
        full = pred(emb, coords, grid)
        alone = pred(emb[:, :1], coords[:1], grid)
        torch.testing.assert_close(full[:, : alone.shape[1]], alone, atol=1e-5, rtol=1e-5)
        assert alone.shape[1] == 1 + int(start_token)


def test_prefix_length_counts_the_start_token_only_when_there_is_one() -> None:
    with_start = _pred(attn="prefix", prefix_len=3)
    without = _pred(attn="prefix", prefix_len=3, start_token=False)
    keep = torch.ones(2, 5, dtype=torch.bool)
    spec = with_start.mask_spec(keep)
    assert spec.prefix == 4 and spec.keep.shape == (2, 6) and not spec.see_self
    spec = without.mask_spec(keep)
    assert spec.prefix == 3 and spec.keep.shape == (2, 5) and spec.see_self


def test_see_self_lets_only_the_query_see_its_own_padding_key() -> None:
    keep = torch.tensor([[False, True, True, False]])
    plain = MaskSpec("causal", keep=keep).dense(4, torch.device("cpu"))[0, 0]
    selfish = MaskSpec("causal", keep=keep, see_self=True).dense(4, torch.device("cpu"))[0, 0]
    assert not plain[0].any()  # a padded first query would have no key at all
    expected = plain.clone()
    expected[0, 0] = expected[3, 3] = True  # only the diagonal entries of padding keys differ
    assert torch.equal(selfish, expected)


@pytest.mark.parametrize("attn", ["causal", "prefix", "bidirectional"])
def test_without_start_token_a_padded_first_token_stays_finite_and_invisible(attn: str) -> None:
    """A padded first token (or an all-padding sample) would leave a query with no visible key
    (NaN that spreads through the next layer); each query sees itself so it doesn't, and real
    tokens still ignore padding entirely."""
    prefix_len = 2 if attn == "prefix" else 0
    pred = _pred(n_axes=1, start_token=False, attn=attn, prefix_len=prefix_len).eval()
    grid = (8,)
    keep = torch.ones(3, 8, dtype=torch.bool)
    keep[0, 0] = False
    keep[1, [0, 1, 5]] = False
    keep[2] = False  # all padding
    emb = torch.randn(3, 8, 32, requires_grad=True)
    out = pred(emb, _coords(grid), grid, keep)
    assert torch.isfinite(out).all()
    # the explicit softmax (attention maps; kernels without a safe softmax) would be NaN there
    maps = pred.attention_maps(emb.detach(), _coords(grid), grid, keep, layer=2)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2, 8))
    assert torch.all(maps[0, :, 1:, 0] == 0)  # no other query sees the padding key
    if attn == "causal":  # the padded first query has only itself to see
        assert torch.all(maps[0, :, 0, 0] == 1)
    out.sum().backward()
    assert torch.isfinite(emb.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in pred.parameters())
    emb2 = emb.detach().clone()
    emb2[~keep] += torch.randn(int((~keep).sum()), 32)
    out2 = pred(emb2, _coords(grid), grid, keep)
    assert torch.equal(out[keep], out2[keep])  # padding changes no real token's output
    assert (out[~keep] - out2[~keep]).abs().amax() > 1e-3  # only its own


# ------------------------------------------------------------------------------ hooks


def test_properties_are_read_only() -> None:
    pred = _pred(depth=3)
    assert (pred.depth, pred.dim, pred.heads) == (3, 32, 2)
    for name in ("depth", "dim", "heads", "has_start_token"):
        with pytest.raises(AttributeError):
            setattr(pred, name, 1)


def test_set_step_seed_fixes_the_rope_rescale() -> None:
    grid = (4, 4)
    coords = _coords(grid)
    pred = _pred(rope_rescale=(0.5, 2.0)).train()
    pred.set_step_seed(7)
    a, b = pred.rope_tables(coords, grid)[0], pred.rope_tables(coords, grid)[0]
    assert torch.equal(a, b)  # one scale for the whole step
    ref = RotaryND(16, 2, rescale=(0.5, 2.0)).train()
    ref.set_step_seed(7)
    assert torch.equal(a[1:], ref.tables(normalized_coords(coords, grid))[0].expand(-1, 2, -1))
    pred.set_step_seed(8)
    assert not torch.allclose(pred.rope_tables(coords, grid)[0], a)
    no_rope = _pred(rope=False)
    no_rope.set_step_seed(7)  # no RoPE: nothing to seed, and no error
    assert no_rope.rope is None


def test_set_drop_path_rebuilds_the_schedule() -> None:
    pred = _pred(n_axes=1, depth=3, layerscale=None).eval()
    emb, grid = torch.randn(8, 6, 32), (6,)
    coords = _coords(grid)
    before = pred(emb, coords, grid)
    pred.train()
    torch.testing.assert_close(pred(emb, coords, grid), pred(emb, coords, grid), rtol=0, atol=0)

    pred.set_drop_path(0.3)
    fresh = Predictor(pred.cfg.model_copy(update={"drop_path": 0.3}), n_axes=1)
    expected = [b.drop_path.p for b in fresh.blocks]
    assert [b.drop_path.p for b in pred.blocks] == pytest.approx([0.0, 0.15, 0.3])
    assert [b.drop_path.p for b in pred.blocks] == expected
    assert pred.cfg.drop_path == 0.3
    torch.manual_seed(0)
    assert not torch.allclose(pred(emb, coords, grid), pred(emb, coords, grid))  # train: random
    pred.eval()  # eval: deterministic and the same function as before
    torch.testing.assert_close(pred(emb, coords, grid), before, rtol=0, atol=0)

    pred.set_drop_path(0.0)
    pred.train()
    torch.testing.assert_close(pred(emb, coords, grid), pred(emb, coords, grid), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"drop-path rate must be in \[0, 1\), got 1.0"):
        pred.set_drop_path(1.0)


def test_qk_norm_and_rope_stay_in_bf16_under_autocast_and_match_fp32() -> None:
    torch.manual_seed(0)
    p = Predictor(PredictorConfig(dim=64, depth=1, heads=2), n_axes=2)
    attn = p.blocks[0].attn
    with torch.no_grad():
        for norm in (attn.q_norm, attn.k_norm):  # a non-trivial affine
            norm.weight.normal_(1.0, 0.3)
            norm.bias.normal_(0.0, 0.3)
    coords = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1)
    coords = coords.reshape(16, 2)
    x = torch.randn(2, 17, 64)
    q32, k32, _ = attn.heads_qkv(x, p.rope_tables(coords, (4, 4)))
    with torch.autocast("cpu", torch.bfloat16):
        rope = p.rope_tables(coords, (4, 4))
        q16, k16, v16 = attn.heads_qkv(x, rope)
    assert rope[0].dtype == q16.dtype == k16.dtype == v16.dtype == torch.bfloat16
    torch.testing.assert_close(q16.float(), q32, atol=6e-2, rtol=3e-2)
    torch.testing.assert_close(k16.float(), k32, atol=6e-2, rtol=3e-2)
    (q16.float().sum() + k16.float().square().sum()).backward()
    assert attn.q_norm.weight.grad is not None and attn.k_norm.bias.grad is not None
