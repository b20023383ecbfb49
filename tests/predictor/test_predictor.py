"""The predictor transformer: shapes, gradients on every parameter, N-D RoPE."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nepa.predictor.attention import MaskSpec
from nepa.predictor.config import PredictorConfig
from nepa.predictor.rope import RotaryND, apply_rotary, normalized_coords
from nepa.predictor.transformer import Attention, LayerScale, Predictor


def _coords(grid: tuple[int, ...]) -> torch.Tensor:
    """Row-major integer coordinates (T, A) of every cell of ``grid``."""
    axes = torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")
    return torch.stack(axes, dim=-1).reshape(-1, len(grid))


COMBOS = list(itertools.product(["swiglu", "gelu"], [True, False], [1e-5, None], [True, False]))


@pytest.mark.parametrize(
    "mlp,qk_norm,layerscale,rope",
    COMBOS,
    ids=[f"{m}-qk{int(q)}-ls{int(bool(s))}-rope{int(r)}" for m, q, s, r in COMBOS],
)
def test_gradient_reaches_every_parameter(
    mlp: str, qk_norm: bool, layerscale: float | None, rope: bool
) -> None:
    cfg = PredictorConfig(
        dim=32,
        depth=2,
        heads=2,
        mlp=mlp,
        qk_norm=qk_norm,
        layerscale=layerscale,
        rope=rope,
        attn_backend="sdpa",
    )
    torch.manual_seed(0)
    pred = Predictor(cfg, n_axes=2)
    grid = (3, 4)
    emb = torch.randn(2, 12, 32)
    out = pred(emb, _coords(grid), grid)
    assert out.shape == (2, 13, 32)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    names = dict(pred.named_parameters())
    assert "start_token" in names
    assert any(n.endswith("ls1.gamma") for n in names) == bool(layerscale)
    assert any("q_norm" in n for n in names) == qk_norm
    for name, p in names.items():
        if qk_norm and not rope and name.endswith("k_norm.bias"):
            # Without RoPE, q . (k + b) = q.k + q.b: q.b is the same for every key, so softmax
            # cancels it and the key-norm bias gets no gradient (a true redundancy): only
            # round-off, far below the query-norm bias's gradient.
            q_bias = names[name.replace("k_norm", "q_norm")].grad.abs().max()
            assert p.grad is None or p.grad.abs().max() < 1e-3 * q_bias
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_output_is_final_normed_and_layers_match() -> None:
    cfg = PredictorConfig(dim=32, depth=3, heads=2, layerscale=None, attn_backend="sdpa")
    torch.manual_seed(0)
    pred = Predictor(cfg, n_axes=2)
    emb, grid = torch.randn(2, 6, 32), (2, 3)
    out = pred(emb, _coords(grid), grid)
    # final LayerNorm (weight 1, bias 0 at init): zero mean, unit variance over D (the start
    # token's residual stream is small, so LayerNorm's eps shows there)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 7), atol=1e-5, rtol=0)
    var = out.var(-1, unbiased=False)
    torch.testing.assert_close(var[:, 1:], torch.ones(2, 6), atol=1e-3, rtol=0)
    torch.testing.assert_close(var[:, 0], torch.ones(2), atol=0.05, rtol=0)
    layers = pred(emb, _coords(grid), grid, return_layers=[1, 3])
    assert len(layers) == 2 and all(h.shape == (2, 7, 32) for h in layers)
    torch.testing.assert_close(layers[1], out)
    assert not torch.allclose(layers[0], out)


def test_layerscale_init_and_start_token_no_decay() -> None:
    cfg = PredictorConfig(dim=32, depth=1, heads=2, layerscale=1e-5)
    pred = Predictor(cfg, n_axes=1)
    gammas = [m.gamma for m in pred.modules() if isinstance(m, LayerScale)]
    assert len(gammas) == 2 and all(torch.all(g == 1e-5) for g in gammas)
    assert pred.no_weight_decay() == {"start_token"}
    assert pred.start_token.shape == (1, 1, 32) and pred.start_token.abs().sum() > 0


def test_drop_path_only_in_training() -> None:
    cfg = PredictorConfig(dim=32, depth=2, heads=2, layerscale=None, drop_path=0.5)
    torch.manual_seed(0)
    pred = Predictor(cfg, n_axes=1)
    emb, grid = torch.randn(8, 5, 32), (5,)
    pred.eval()
    a, b = pred(emb, _coords(grid), grid), pred(emb, _coords(grid), grid)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    pred.train()
    assert not torch.allclose(pred(emb, _coords(grid), grid), a)


# ------------------------------------------------------------------------------ RoPE


def test_normalized_coords_are_patch_centres() -> None:
    c = normalized_coords(torch.tensor([[0, 0], [3, 1], [1, 0]]), (4, 2))
    torch.testing.assert_close(c, torch.tensor([[-0.75, -0.5], [0.75, 0.5], [-0.25, -0.5]]))


def _logits(rope: RotaryND, pos: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    cos, sin = rope.tables(pos)
    qr, kr = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (1, T, 1, Dh)
    return qr[0, :, 0] @ kr[0, :, 0].T  # (T, T)


@pytest.mark.parametrize("n_axes", [1, 2, 3])
def test_rope_is_relative(n_axes: int) -> None:
    """Shifting every coordinate by the same amount leaves all q.k logits unchanged."""
    torch.manual_seed(0)
    rope = RotaryND(head_dim=24, n_axes=n_axes, theta=100.0).eval()
    grid = (64,) * n_axes
    cells = torch.randint(0, 48, (20, n_axes))
    shift = torch.tensor([13, -7, 5][:n_axes])
    q, k = torch.randn(1, 20, 1, 24), torch.randn(1, 20, 1, 24)
    base = _logits(rope, normalized_coords(cells, grid), q, k)
    shifted = _logits(rope, normalized_coords(cells + shift + 7, grid), q, k)
    torch.testing.assert_close(shifted, base, atol=1e-4, rtol=1e-4)
    # ... but scaling the coordinates (not a shift) changes them: the test can fail.
    scaled = _logits(rope, normalized_coords(cells * 2 - 20, grid), q, k)
    assert (scaled - base).abs().max() > 1e-2
    # ... and without rotation the logits would be plain q.k, so RoPE does something.
    assert (base - q[0, :, 0] @ k[0, :, 0].T).abs().max() > 1e-2


def test_attention_layer_is_shift_invariant_with_rope() -> None:
    """The wiring: an attention layer fed RoPE tables of shifted coordinates gives the same
    output (q and k both rotated); with RoPE on q alone it would not."""
    cfg = PredictorConfig(dim=32, depth=1, heads=2)
    torch.manual_seed(0)
    attn = Attention(cfg)
    rope = RotaryND(cfg.head_dim, 2)
    grid = (32, 32)
    cells = torch.randint(0, 24, (10, 2))
    x = torch.randn(2, 10, 32)
    spec = MaskSpec("causal")
    a = attn(x, rope.tables(normalized_coords(cells, grid)), spec)
    b = attn(x, rope.tables(normalized_coords(cells + torch.tensor([5, 3]), grid)), spec)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    c = attn(x, rope.tables(normalized_coords(cells.flip(0), grid)), spec)
    assert (a - c).abs().max() > 1e-3  # other relative positions: other outputs


def test_rope_axes_rotate_their_own_channel_blocks() -> None:
    """Axis a rotates channel pairs (a*F + i, Dh/2 + a*F + i), i < F = Dh / (2A)."""
    rope = RotaryND(head_dim=16, n_axes=2, theta=100.0)
    x = torch.randn(1, 1, 1, 16)
    out = {}
    for name, pos in {"origin": [0.0, 0.0], "axis0": [0.7, 0.0], "axis1": [0.0, 0.7]}.items():
        cos, sin = rope.tables(torch.tensor([pos]))
        out[name] = apply_rotary(x, cos, sin)[0, 0, 0]
    torch.testing.assert_close(out["origin"], x[0, 0, 0])  # zero angle: identity
    axis0 = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])
    axis1 = torch.tensor([4, 5, 6, 7, 12, 13, 14, 15])
    torch.testing.assert_close(out["axis0"][axis1], x[0, 0, 0, axis1])
    torch.testing.assert_close(out["axis1"][axis0], x[0, 0, 0, axis0])
    assert (out["axis0"][axis0] - x[0, 0, 0, axis0]).abs().max() > 1e-3
    assert (out["axis1"][axis1] - x[0, 0, 0, axis1]).abs().max() > 1e-3
    # norms are preserved (a rotation)
    torch.testing.assert_close(out["axis0"].norm(), x.norm())


def test_rope_frequencies() -> None:
    """Per axis F = Dh/(2A) periods theta ** (2i / (Dh/A)); angle = 2 pi pos / period."""
    rope = RotaryND(head_dim=8, n_axes=1, theta=100.0)
    torch.testing.assert_close(rope.periods, torch.tensor([1.0, 100.0**0.25, 10.0, 100.0**0.75]))
    cos, sin = rope.tables(torch.tensor([[0.25]]))
    angles = 2 * math.pi * 0.25 / rope.periods
    torch.testing.assert_close(cos[0, 0], torch.cat([angles, angles]).cos())
    torch.testing.assert_close(sin[0, 0], torch.cat([angles, angles]).sin())


def _even_split_tables(
    head_dim: int, n_axes: int, theta: float, pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables as computed before uneven splits were allowed (2A | Dh), written out."""
    per_axis = head_dim // n_axes
    periods = theta ** (2 * torch.arange(per_axis // 2, dtype=torch.float32) / per_axis)
    angles = (2 * math.pi * pos[..., None] / periods).flatten(-2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos()[..., None, :], angles.sin()[..., None, :]


@pytest.mark.parametrize("head_dim,n_axes", [(64, 2), (48, 3), (24, 1), (16, 4), (64, 1)])
@pytest.mark.parametrize("batched", [False, True], ids=["TA", "BTA"])
def test_rope_even_split_tables_are_bit_identical_to_the_old_formula(
    head_dim: int, n_axes: int, batched: bool
) -> None:
    torch.manual_seed(0)
    pos = torch.rand(*((3,) if batched else ()), 17, n_axes) * 2 - 1
    rope = RotaryND(head_dim, n_axes, theta=100.0)
    assert rope.n_unrotated == 0 and rope.per_axis == head_dim // n_axes
    cos, sin = rope.tables(pos)
    ref_cos, ref_sin = _even_split_tables(head_dim, n_axes, 100.0, pos)
    assert cos.shape == ref_cos.shape == (*pos.shape[:-1], 1, head_dim)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_rope_uneven_split_64_wide_heads_over_3_axes() -> None:
    """F = floor(64 / 6) = 10 pairs per axis: 60 rotated channels, 4 left as they are. Axis a
    owns channels a*F..a*F+9 and 32+a*F..32+a*F+9; channels 30, 31, 62, 63 are unrotated."""
    rope = RotaryND(head_dim=64, n_axes=3, theta=100.0)
    assert (rope.per_axis, rope.n_unrotated) == (20, 4)
    torch.testing.assert_close(
        rope.periods, 100.0 ** (2 * torch.arange(10, dtype=torch.float32) / 20), rtol=0, atol=0
    )
    torch.manual_seed(0)
    pos = torch.rand(2, 9, 3) * 2 - 1  # (B, T, A)
    cos, sin = rope.tables(pos)
    assert cos.shape == sin.shape == (2, 9, 1, 64)
    unrotated = torch.tensor([30, 31, 62, 63])
    assert torch.equal(cos[..., unrotated], torch.ones(2, 9, 1, 4))
    assert torch.equal(sin[..., unrotated], torch.zeros(2, 9, 1, 4))
    for a in range(3):  # every rotated channel carries its own axis's angle, in both halves
        angles = 2 * math.pi * pos[..., a, None] / rope.periods  # (B, T, F)
        for lo in (10 * a, 32 + 10 * a):
            torch.testing.assert_close(cos[:, :, 0, lo : lo + 10], angles.cos())
            torch.testing.assert_close(sin[:, :, 0, lo : lo + 10], angles.sin())
    rotated = (sin[:, :, 0] != 0).any(dim=(0, 1))  # channels some token actually turns
    assert int(rotated.sum()) == 60 and not rotated[unrotated].any()
    # the rotation leaves the unrotated channels of x exactly as they were, turns the others
    x = torch.randn(2, 9, 4, 64)
    out = apply_rotary(x, cos, sin)
    assert torch.equal(out[..., unrotated], x[..., unrotated])
    assert (out[..., :30] - x[..., :30]).abs().amax() > 1e-2
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))  # still a rotation


def test_rope_uneven_split_is_relative_along_each_axis() -> None:
    """With 64-wide heads over 3 axes, q.k after rotation depends only on the coordinate
    differences: a common shift keeps every logit, a change of one axis's differences alone
    changes them (so every axis is rotated)."""
    torch.manual_seed(0)
    rope = RotaryND(head_dim=64, n_axes=3, theta=100.0).eval()
    grid = (40, 40, 40)
    cells = torch.randint(0, 24, (16, 3))
    q, k = torch.randn(1, 16, 1, 64), torch.randn(1, 16, 1, 64)
    base = _logits(rope, normalized_coords(cells, grid), q, k)
    for shift in ([5, 0, 0], [0, 9, 0], [0, 0, 13], [3, 11, 7]):
        moved = _logits(rope, normalized_coords(cells + torch.tensor(shift), grid), q, k)
        torch.testing.assert_close(moved, base, atol=1e-4, rtol=1e-4)
    for a in range(3):  # stretch one axis: other relative positions along it, other logits
        stretched = cells.clone()
        stretched[:, a] *= 2
        other = _logits(rope, normalized_coords(stretched, grid), q, k)
        assert (other - base).abs().max() > 1e-2, f"axis {a} is not rotated"


def test_rope_uneven_split_gradients() -> None:
    """The rotation's hand-written backward is exact with unrotated channels too, and a
    predictor with 64-wide heads over a 3-axis grid trains: finite gradients everywhere."""
    rope = RotaryND(head_dim=12, n_axes=4)  # F = 1: 8 rotated channels, 4 unrotated
    assert (rope.per_axis, rope.n_unrotated) == (2, 4)
    cos, sin = (t.double() for t in rope.tables(torch.rand(5, 4) * 2 - 1))
    x = torch.randn(2, 5, 3, 12, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rotary(t, cos, sin), (x,))

    cfg = PredictorConfig(dim=128, depth=2, heads=2, layerscale=None, attn_backend="sdpa")
    torch.manual_seed(0)
    pred = Predictor(cfg, n_axes=3)
    assert pred.rope is not None and pred.rope.n_unrotated == 4
    grid = (2, 3, 4)
    emb = torch.randn(2, 24, 128, requires_grad=True)
    out = pred(emb, _coords(grid), grid)
    assert out.shape == (2, 25, 128) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    for name, p in pred.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("head_dim,n_axes", [(4, 3), (2, 2), (6, 4)])
def test_rope_needs_one_channel_pair_per_axis(head_dim: int, n_axes: int) -> None:
    with pytest.raises(ValueError, match=f"at least {2 * n_axes} .*got {head_dim}"):
        RotaryND(head_dim, n_axes)
    with pytest.raises(ValueError, match="even head dim"):
        RotaryND(7, 1)


def test_predictor_rope_head_dim_constraint_names_the_config_keys() -> None:
    cfg = PredictorConfig(dim=8, depth=1, heads=2)  # head dim 4 < 2 * 3
    with pytest.raises(ValueError, match="predictor.dim or lower predictor.heads"):
        Predictor(cfg, n_axes=3)
    Predictor(cfg, n_axes=2)  # 4 >= 2 * 2: fine
    Predictor(cfg.model_copy(update={"rope": False}), n_axes=3)  # no RoPE, no constraint
    # what used to be rejected (2A does not divide Dh) now builds
    for dim, heads, n_axes in [(32, 2, 3), (128, 2, 3), (20, 2, 2)]:
        pred = Predictor(PredictorConfig(dim=dim, depth=1, heads=heads), n_axes=n_axes)
        assert pred.rope is not None and pred.rope.n_unrotated == (dim // heads) % (2 * n_axes)


def test_rope_rescale_only_in_training() -> None:
    torch.manual_seed(0)
    pos = normalized_coords(_coords((4, 4)), (4, 4))
    plain = RotaryND(16, 2, rescale=None)
    jitter = RotaryND(16, 2, rescale=(0.5, 2.0))
    jitter.eval()
    torch.testing.assert_close(jitter.tables(pos)[0], plain.tables(pos)[0], rtol=0, atol=0)
    jitter.train()
    a, b = jitter.tables(pos)[0], jitter.tables(pos)[0]
    assert not torch.allclose(a, b)  # a new scale every call in training


def test_start_token_gets_identity_rotation() -> None:
    cfg = PredictorConfig(dim=32, depth=1, heads=2)
    pred = Predictor(cfg, n_axes=2)
    grid = (3, 5)
    coords = _coords(grid)[torch.randperm(15)]
    cos, sin = pred.rope_tables(coords, grid)
    assert cos.shape == sin.shape == (16, 2, 16)  # (S, heads, Dh): written out per head
    torch.testing.assert_close(cos[0], torch.ones(2, 16), rtol=0, atol=0)
    torch.testing.assert_close(sin[0], torch.zeros(2, 16), rtol=0, atol=0)
    ref_cos, ref_sin = pred.rope.tables(normalized_coords(coords, grid))
    torch.testing.assert_close(cos[1:], ref_cos.expand(-1, 2, -1), rtol=0, atol=0)
    torch.testing.assert_close(sin[1:], ref_sin.expand(-1, 2, -1), rtol=0, atol=0)
    assert pred.rope_tables(coords, grid) is not None
    assert (
        Predictor(cfg.model_copy(update={"rope": False}), n_axes=2).rope_tables(coords, grid)
        is None
    )


def test_token_coordinates_matter_only_through_rope() -> None:
    """Permuting coordinates changes outputs with RoPE; without RoPE coords are ignored."""
    torch.manual_seed(0)
    emb, grid = torch.randn(2, 9, 32), (3, 3)
    coords = _coords(grid)
    perm = torch.randperm(9)
    for rope in (True, False):
        cfg = PredictorConfig(dim=32, depth=1, heads=2, layerscale=None, rope=rope)
        pred = Predictor(cfg, n_axes=2).eval()
        a, b = pred(emb, coords, grid), pred(emb, coords[perm], grid)
        assert torch.allclose(a, b) != rope


@pytest.mark.parametrize("layerscale", [1e-5, None])
def test_the_residual_stream_stays_fp32_under_bf16_autocast(layerscale: float | None) -> None:
    """An encoder under autocast hands over bf16 embeddings; the blocks' inputs (the residual
    stream) must still be fp32, or LayerScale's 1e-5 updates fall below bf16's resolution. The
    start token's output then carries the per-sample signal that bf16 would round away: it
    stays close to the fp32 forward relative to how much it varies between samples."""
    torch.manual_seed(0)
    cfg = PredictorConfig(dim=64, depth=2, heads=2, layerscale=layerscale, attn="bidirectional")
    pred = Predictor(cfg, n_axes=2).eval()
    grid = (4, 4)
    emb = torch.randn(32, 16, 64).bfloat16()  # what a bf16 encoder returns
    seen: list[torch.dtype] = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype)) for b in pred.blocks]
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        low = pred(emb, _coords(grid), grid)[:, 0].float()
    for h in hooks:
        h.remove()
    assert seen == [torch.float32, torch.float32]
    with torch.no_grad():
        ref = pred(emb.float(), _coords(grid), grid)[:, 0]
    spread = ref.std(0).mean()  # how much the start token's output varies between samples
    assert (low - ref).abs().max() < 0.25 * spread
