"""Attention maps are the model's real attention; maps land on the right cells for any scan."""

from __future__ import annotations

import pytest
import torch

from nepa.encoders.scans import inverse, scan_order
from nepa.objectives.backbone import Backbone, Features
from nepa.objectives.base import Objective
from nepa.predictor.config import PredictorConfig
from nepa.predictor.transformer import Predictor
from nepa.train.build import build_objective
from nepa.viz import (
    VizError,
    attention_maps,
    default_cells,
    image_model,
    parse_cells,
    similarity_maps,
    to_grid,
)

GRID = (4, 4)


def _predictor() -> Predictor:
    torch.manual_seed(0)
    # A visible LayerScale so that later layers' inputs differ from the embeddings.
    cfg = PredictorConfig(dim=32, depth=3, heads=2, layerscale=0.5, attn_backend="sdpa")
    return Predictor(cfg, n_axes=2).eval()


def _raster_coords() -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    return torch.stack([rows, cols], -1).reshape(-1, 2)  # (T, 2)


@pytest.mark.parametrize("mode", ["causal", "bidirectional", "prefix"])
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "keepmask"])
@pytest.mark.parametrize("layer", [1, 3])
def test_weights_times_v_reproduce_the_block(mode: str, padded: bool, layer: int) -> None:
    pred = _predictor()
    if mode == "prefix":
        pred.cfg = pred.cfg.model_copy(update={"attn": "prefix", "prefix_len": 3})
    B, T, D = 2, 16, 32
    emb = torch.randn(B, T, D)
    coords = _raster_coords()[torch.randperm(T)]  # any order: coordinates travel with tokens
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[1, -5:] = False
    keep = keep if padded else None
    with torch.no_grad():
        attn = pred.attention_maps(emb, coords, GRID, keep, layer=layer, attn=mode)
        # The block's own path: its input, then its SDPA attention output.
        rope, mask = pred.rope_tables(coords, GRID), pred.mask_spec(keep, mode)
        x = torch.cat([pred.start_token.expand(B, -1, -1), emb], dim=1)
        for blk in pred.blocks[: layer - 1]:
            x = blk(x, rope, mask)
        blk = pred.blocks[layer - 1]
        xn = blk.norm1(x)
        expected = blk.attn(xn, rope, mask)  # (B, T+1, D)
        v = blk.attn.heads_qkv(xn, rope)[2]  # (B, T+1, H, Dh)
        out = torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(B, T + 1, D)
        got = blk.attn.proj(out)
    assert attn.shape == (B, 2, T + 1, T + 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, 2, T + 1))
    if mode == "causal":
        past = torch.ones(T + 1, T + 1, dtype=torch.bool).tril()
        assert (attn[..., ~past] == 0).all()  # exactly zero on future tokens
        assert (attn[0][..., past] > 0).all()  # and nothing else masked (item 0: no padding)
    if padded:
        assert (attn[1, :, :, -5:] == 0).all()  # padding keys get exactly zero


def test_attention_maps_layer_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        _predictor().attention_maps(torch.randn(1, 16, 32), _raster_coords(), GRID, layer=4)


def test_to_grid_uses_coords_not_order() -> None:
    order = torch.from_numpy(scan_order("hilbert", GRID))
    coords = _raster_coords()[order]  # hilbert order, true coordinates
    steps = torch.arange(16.0)[None]  # value = scan step
    expected = torch.from_numpy(inverse(order.numpy())).float().reshape(GRID)
    assert torch.equal(to_grid(steps, coords, GRID)[0], expected)


def _models(tiny_cfg, scan: str):
    """Raster and ``scan`` image models with identical weights (tiny recipe, 4x4 grid)."""
    raster = build_objective(tiny_cfg("predictor.layerscale=0.5"))
    other = build_objective(tiny_cfg("predictor.layerscale=0.5", f"encoder.scan={scan}"))
    other.load_state_dict(raster.state_dict())
    return (
        image_model(tiny_cfg("predictor.layerscale=0.5"), raster),
        image_model(tiny_cfg("predictor.layerscale=0.5", f"encoder.scan={scan}"), other),
    )


def test_attention_maps_on_the_grid_for_any_scan(tiny_cfg) -> None:
    raster, hilbert = _models(tiny_cfg, "hilbert")
    x = torch.randn(1, 28, 28)
    cells = [(r, c) for r in range(4) for c in range(4)]
    # Bidirectional attention between cells does not depend on the reading order: the same
    # map on the grid, whatever order the tokens came in.
    a = attention_maps(raster, x, cells=cells, layer=2, attn="bidirectional")
    b = attention_maps(hilbert, x, cells=cells, layer=2, attn="bidirectional")
    torch.testing.assert_close(a.maps_QHW, b.maps_QHW, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.start_Q, b.start_Q, atol=1e-6, rtol=1e-5)
    # Causal under hilbert: a query sees exactly the cells read before it (and itself).
    c = attention_maps(hilbert, x, cells=cells, layer=2, attn="causal", head=1)
    step_HW = torch.from_numpy(inverse(scan_order("hilbert", GRID))).reshape(GRID)
    for (r, col), step, m, start in zip(cells, c.steps, c.maps_QHW, c.start_Q, strict=True):
        assert step == step_HW[r, col]
        assert torch.equal(m.isnan(), step_HW > step)
        torch.testing.assert_close(m.nansum() + start, torch.tensor(1.0))


def test_head_out_of_range(tiny_cfg) -> None:
    model = image_model(tiny_cfg(), build_objective(tiny_cfg()))
    with pytest.raises(VizError, match="head 2"):
        attention_maps(model, torch.randn(1, 28, 28), cells=[(0, 0)], layer=1, head=2)


def test_similarity_maps(tiny_cfg) -> None:
    _, hilbert = _models(tiny_cfg, "hilbert")
    x = torch.randn(1, 28, 28)
    cells = [(1, 2), (3, 0)]
    sim = similarity_maps(hilbert, x, cells=cells, layer=1)
    assert sim.z_QHW.shape == sim.h_QHW.shape == (2, *GRID)
    for q, (r, c) in enumerate(cells):
        torch.testing.assert_close(sim.z_QHW[q, r, c], torch.tensor(1.0))
        torch.testing.assert_close(sim.h_QHW[q, r, c], torch.tensor(1.0))
    # z straight from the patch conv in row-major order, independent of the scan.
    with torch.no_grad():
        z = hilbert.objective.encoder.proj(x[None]).flatten(2)[0].T  # (T, D) row-major
    z = torch.nn.functional.normalize(z, dim=-1)
    expected = (z @ z[1 * 4 + 2]).reshape(GRID)
    torch.testing.assert_close(sim.z_QHW[0], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sim.z_QHW, sim.h_QHW, atol=1e-3)  # h really is another layer
    assert sim.attn == "causal"  # attn None: the backbone's own training mode


def test_parse_cells() -> None:
    assert parse_cells(["5", "2,3"], (4, 4)) == [(1, 1), (2, 3)]
    assert (
        parse_cells(None, (4, 4))
        == default_cells((4, 4))
        == [(2, 2), (0, 0), (0, 3), (3, 0), (3, 3)]
    )
    assert default_cells((1, 1)) == [(0, 0)]
    for bad, msg in [("16", "index 16"), ("4,0", "4,0"), ("a", "bad patch"), ("1,2,3", "bad")]:
        with pytest.raises(VizError, match=msg):
            parse_cells([bad], (4, 4))


class _OneAxisBackbone(Backbone):
    """Tokens on a 1-D grid of 16 steps, as a sensor encoder's backbone would return."""

    depth, dim, heads, attn = 1, 4, 1, "causal"

    def forward(self, batch, *, layers=None, attn=None) -> Features:
        B = next(iter(batch.values())).shape[0]
        h = torch.zeros(B, 16, self.dim)
        return Features(layers=[h], keep=None, coords=torch.arange(16)[:, None], grid=(16,))


class _OneAxisObjective(Objective):
    def backbone(self) -> Backbone:
        return _OneAxisBackbone()


def test_non_image_run_is_refused(tiny_cfg) -> None:
    with pytest.raises(VizError, match="2-D image models only.* over 1 grid axes"):
        image_model(tiny_cfg(), _OneAxisObjective())
    # an objective without a backbone cannot be drawn either
    with pytest.raises(VizError, match="declares no backbone"):
        image_model(tiny_cfg(), Objective())
    model = image_model(tiny_cfg(), build_objective(tiny_cfg()))  # the image run itself is fine
    assert model.grid == GRID and model.depth == 2 and not model.objective.training
