"""The NEPA objective: loss by hand, shift, stop-gradient, padding, features, collapse monitor."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_recipe import tiny_with

import nepa.objectives.nepa as nepa_mod
from nepa.objectives.monitor import CollapseMonitor, check_collapse, collapse_stats
from nepa.objectives.nepa import Nepa, nepa_loss, prediction_target
from nepa.train.build import build_objective
from nepa.train.trainer import step_seed


def _objective(*overrides: str) -> Nepa:
    # layerscale off so the predictor's blocks (not only its norms) shape the outputs
    obj = build_objective(tiny_with("predictor.layerscale=null", *overrides))
    assert isinstance(obj, Nepa)
    return obj


def _images(n: int = 4) -> dict[str, torch.Tensor]:
    """A batch of ``n`` random images (the tiny recipe's image field; labels are unused)."""
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 1, 28, 28, generator=g), "label": torch.zeros(n).long()}


# ------------------------------------------------------------------------------ the loss


def test_loss_equals_hand_computed_value() -> None:
    p = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 4.0], [1.0, 1.0]]])  # (B=2, T=2, D=2)
    t = torch.tensor([[[5.0, 0.0], [1.0, 0.0]], [[4.0, 3.0], [-1.0, -1.0]]])
    # cosines: (1,0).(1,0) = 1;  (0,1).(1,0) = 0;  (.6,.8).(.8,.6) = .96;  (1,1).(-1,-1)/2 = -1
    assert nepa_loss(p, t).item() == pytest.approx(-(1 + 0 + 0.96 - 1) / 4, abs=1e-6)  # -0.24
    keep = torch.tensor([[True, False], [True, True]])
    assert nepa_loss(p, t, keep).item() == pytest.approx(-(1 + 0.96 - 1) / 3, abs=1e-6)  # -0.32
    # whatever sits at a padded position does not matter
    p2 = p.clone()
    p2[0, 1] = torch.tensor([-7.0, 3.0])
    assert nepa_loss(p2, t, keep).item() == pytest.approx(nepa_loss(p, t, keep).item(), abs=1e-7)
    assert nepa_loss(p2, t).item() != pytest.approx(nepa_loss(p, t).item())


def test_loss_is_scale_invariant_and_bounded() -> None:
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    assert nepa_loss(3 * p, 0.1 * t).item() == pytest.approx(nepa_loss(p, t).item(), abs=1e-6)
    assert nepa_loss(t, t).item() == pytest.approx(-1.0, abs=1e-6)
    assert nepa_loss(-t, t).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("shift", [True, False])
def test_shift_pairs_outputs_with_targets(shift: bool) -> None:
    B, T = 2, 4
    h = torch.arange(T + 1.0)[None, :, None].expand(B, T + 1, 3)  # output at position j holds j
    z = 10 + torch.arange(T + 0.0)[None, :, None].expand(B, T, 3)  # z_i holds 10 + i
    keep = torch.tensor([[True, True, True, False], [True, True, True, True]])
    p, t, k = prediction_target(h, z, keep, shift=shift, stop_grad=True, start_token=True)
    assert p.shape == t.shape == (B, T, 3)
    assert k is keep  # with a start token every target keeps its own position
    # position 0 is the start token, position i + 1 is z_i's output
    expected = torch.arange(T) if shift else torch.arange(T) + 1
    torch.testing.assert_close(p[0, :, 0], expected.float())
    torch.testing.assert_close(t[0, :, 0], 10 + torch.arange(T).float())


@pytest.mark.parametrize("shift", [True, False])
def test_shift_without_a_start_token(shift: bool) -> None:
    """No start token: h is (B, T, D), one output per z_i. Shifted, the output at z_i
    predicts z_{i+1} (T - 1 pairs, the keep mask shifted with the targets)."""
    B, T = 2, 4
    h = torch.arange(T + 0.0)[None, :, None].expand(B, T, 3)  # output at z_i holds i
    z = 10 + torch.arange(T + 0.0)[None, :, None].expand(B, T, 3)
    keep = torch.tensor([[True, True, True, False], [True, True, True, True]])
    p, t, k = prediction_target(h, z, keep, shift=shift, stop_grad=True, start_token=False)
    if shift:
        assert p.shape == t.shape == (B, T - 1, 3)
        torch.testing.assert_close(p[0, :, 0], torch.arange(T - 1.0))
        torch.testing.assert_close(t[0, :, 0], 11 + torch.arange(T - 1.0))
        assert k.tolist() == [[True, True, False], [True, True, True]]
    else:
        assert p.shape == t.shape == (B, T, 3) and k is keep
        torch.testing.assert_close(p[0, :, 0], torch.arange(T + 0.0))
        torch.testing.assert_close(t[0, :, 0], 10 + torch.arange(T + 0.0))
    p, t, k = prediction_target(h, z, None, shift=shift, stop_grad=True, start_token=False)
    assert k is None


def test_objective_loss_equals_manual_pipeline() -> None:
    obj = _objective()
    x = _images()
    loss, metrics = obj(x)
    tok = obj.encoder(x)
    h = obj.predictor(tok.emb, tok.coords, tok.grid)
    p, t = h[:, :-1], tok.emb
    manual = -torch.nn.functional.cosine_similarity(p, t, dim=-1).mean()
    assert loss.item() == pytest.approx(manual.item(), abs=1e-6)
    assert set(metrics) == {"tokens"} and metrics["tokens"] == 4 * 16  # the trainer logs loss
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_objective_gradient_reaches_every_parameter() -> None:
    obj = _objective()
    loss, _ = obj(_images())
    loss.backward()
    for name, p in obj.named_parameters():
        if name.endswith("k_norm.bias") and not obj.predictor.cfg.rope:
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


# ------------------------------------------------------------------------------ stop-gradient


def _encoder_grads(obj: Nepa, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    obj.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in obj.encoder.named_parameters()}


def _path_losses(obj: Nepa, x: dict, *, input_path: bool, target_path: bool) -> torch.Tensor:
    """The NEPA loss with gradient allowed only through the chosen path(s) into the encoder."""
    tok = obj.encoder(x)
    z_in = tok.emb if input_path else tok.emb.detach()
    z_tgt = tok.emb if target_path else tok.emb.detach()
    h = obj.predictor(z_in, tok.coords, tok.grid)
    return nepa_loss(h[:, :-1], z_tgt)


def test_stop_grad_target_path_receives_no_gradient() -> None:
    obj = _objective()
    x = _images()
    with_sg = _encoder_grads(obj, obj(x)[0])
    input_only = _encoder_grads(obj, _path_losses(obj, x, input_path=True, target_path=False))
    target_only = _encoder_grads(obj, _path_losses(obj, x, input_path=False, target_path=True))
    # The encoder learns through the input path only: exactly the input-path gradient.
    for n in with_sg:
        torch.testing.assert_close(with_sg[n], input_only[n], rtol=0, atol=0)
        assert with_sg[n].abs().sum() > 0
        assert target_only[n].abs().sum() > 0  # the target path would carry gradient if allowed
    # Without the stop-gradient, both paths contribute: input + target.
    obj_nosg = _objective("objective.stop_grad=false")
    obj_nosg.load_state_dict(obj.state_dict())
    without_sg = _encoder_grads(obj_nosg, obj_nosg(x)[0])
    for n in with_sg:
        torch.testing.assert_close(
            without_sg[n], input_only[n] + target_only[n], atol=1e-6, rtol=1e-4
        )
        assert (without_sg[n] - with_sg[n]).abs().max() > 1e-6


@pytest.mark.parametrize("stop_grad", [True, False])
def test_target_is_detached_exactly_when_asked(
    stop_grad: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}
    original = nepa_mod.prediction_target

    def spy(h, z, keep, **kw):
        p, t, k = original(h, z, keep, **kw)
        seen.update(p=p, t=t, z=z, kw=kw)
        return p, t, k

    monkeypatch.setattr(nepa_mod, "prediction_target", spy)
    obj = _objective(f"objective.stop_grad={str(stop_grad).lower()}")
    obj(_images())
    assert seen["z"].requires_grad
    assert seen["p"].requires_grad
    assert seen["t"].requires_grad is not stop_grad
    torch.testing.assert_close(seen["t"], seen["z"], rtol=0, atol=0)  # same values either way
    assert seen["kw"] == {"shift": True, "stop_grad": stop_grad, "start_token": True}


def test_objective_shift_switch_picks_the_outputs() -> None:
    """shift=True: outputs at s, z_1..z_{T-1}; shift=False: outputs at z_1..z_T (same weights)."""
    obj = _objective()
    x = _images()
    obj_ns = _objective("objective.shift=false")
    obj_ns.load_state_dict(obj.state_dict())
    tok = obj.encoder(x)
    h = obj.predictor(tok.emb, tok.coords, tok.grid)
    assert obj_ns(x)[0].item() == pytest.approx(nepa_loss(h[:, 1:], tok.emb).item(), abs=1e-6)
    assert obj(x)[0].item() == pytest.approx(nepa_loss(h[:, :-1], tok.emb).item(), abs=1e-6)


# ------------------------------------------------------------------------------ features


def test_features_split_off_the_start_token_and_match_layers() -> None:
    obj = _objective("predictor.depth=2")
    x = _images(3)
    out = obj.features(x, layers=[1, 2])
    feats, starts = out.layers, out.summary
    assert len(feats) == 2 and all(f.shape == (3, 16, 32) for f in feats)
    assert len(starts) == 2 and all(s.shape == (3, 32) for s in starts)
    assert not feats[0].requires_grad
    with torch.no_grad():
        t2 = obj.encoder(x)
        h1, h = obj.predictor(t2.emb, t2.coords, t2.grid, return_layers=[1, 2])
        h_bi = obj.predictor(t2.emb, t2.coords, t2.grid, attn="bidirectional")
    torch.testing.assert_close(feats[0], h1[:, 1:])
    torch.testing.assert_close(feats[1], h[:, 1:])
    torch.testing.assert_close(starts[1], h[:, 0])  # (B, D): the start token's output
    torch.testing.assert_close(out.coords, t2.coords)
    torch.testing.assert_close(out.inputs, t2.emb)  # the patch embeddings z
    assert out.grid == (4, 4) and out.keep is None
    bi = obj.features(x, layers=[2], attn="bidirectional")
    torch.testing.assert_close(bi.layers[0], h_bi[:, 1:])
    assert not torch.allclose(bi.layers[0], feats[1])  # the attention mode matters
    backbone = obj.backbone()
    assert (backbone.depth, backbone.dim, backbone.heads, backbone.attn) == (2, 32, 2, "causal")
    assert backbone.encoder is obj.encoder and backbone.predictor is obj.predictor  # no copy


def test_features_without_a_start_token_have_no_summary() -> None:
    obj = _objective("predictor.start_token=false")
    x = _images(3)
    out = obj.features(x, layers=[2])
    with torch.no_grad():
        tok = obj.encoder(x)
        h = obj.predictor(tok.emb, tok.coords, tok.grid)
    assert out.summary is None and h.shape == (3, 16, 32)
    torch.testing.assert_close(out.layers[0], h)  # nothing split off
    loss, metrics = obj(x)
    manual = nepa_loss(h[:, :-1], tok.emb[:, 1:])
    assert loss.item() == pytest.approx(manual.item(), abs=1e-6)
    assert metrics["tokens"] == 3 * 15  # T - 1 pairs per sample


# ------------------------------------------------------------------------------ collapse monitor


def test_collapse_identical_rows_warns(caplog: pytest.LogCaptureFixture) -> None:
    v = torch.randn(48)
    out = v.expand(16, 4, 48).clone() * 2.5  # every output the same direction
    stats = collapse_stats(out)
    assert stats["std"] == pytest.approx(0.0, abs=1e-6)
    assert stats["std_x_sqrt_d"] == pytest.approx(0.0, abs=1e-5)
    assert stats["eff_rank"] == pytest.approx(1.0, abs=1e-3)
    with caplog.at_level(logging.WARNING, logger="nepa.objectives.monitor"):
        assert check_collapse(stats, step=7, min_std_ratio=0.05, min_rank=1.5) is True
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "REPRESENTATION COLLAPSE at step 7" in warnings[0].getMessage()


def test_near_collapse_is_caught_by_std_alone(caplog: pytest.LogCaptureFixture) -> None:
    """Tiny jitter around one direction: the (scale-free) effective rank looks high, but the
    spread is ~0, and either criterion raises the alarm."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(48, generator=g) + 1e-4 * torch.randn(16, 4, 48, generator=g)
    stats = collapse_stats(out)
    assert stats["std_x_sqrt_d"] < 1e-3
    with caplog.at_level(logging.WARNING, logger="nepa.objectives.monitor"):
        assert check_collapse(stats, step=1, min_std_ratio=0.05, min_rank=1.5)
    assert "COLLAPSE" in caplog.text


def test_spread_rows_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    out = torch.randn(64, 16, 32, generator=torch.Generator().manual_seed(0))
    stats = collapse_stats(out)
    assert stats["std_x_sqrt_d"] == pytest.approx(1.0, abs=0.05)
    assert stats["eff_rank"] > 28  # of at most 32
    with caplog.at_level(logging.WARNING, logger="nepa.objectives.monitor"):
        assert check_collapse(stats, step=3, min_std_ratio=0.05, min_rank=1.5) is False
    assert not caplog.records


def test_monitor_every_n_steps() -> None:
    obj = _objective("objective.monitor_every=5")
    assert obj.monitor(5) == {}  # no forward yet
    obj(_images())
    assert obj.monitor(4) == {}
    stats = obj.monitor(10)
    assert set(stats) == {"collapse/std", "collapse/std_x_sqrt_d", "collapse/eff_rank"}
    assert stats["collapse/eff_rank"] > 1.5
    off = _objective("objective.monitor_every=0")
    off(_images())
    assert off.monitor(0) == {} and off.monitor(50) == {}


def test_monitor_counts_only_real_tokens() -> None:
    """With a keep mask the monitor sees the real tokens only: padding that repeats one vector
    would otherwise read as a collapse."""
    monitor = CollapseMonitor(every=1, min_std_ratio=0.05, min_rank=1.5)
    g = torch.Generator().manual_seed(0)
    out = torch.randn(8, 6, 16, generator=g)
    out[:, 3:] = 5.0  # padding: the same vector everywhere
    keep = torch.zeros(8, 6, dtype=torch.bool)
    keep[:, :3] = True
    monitor.observe(out, keep)
    real = monitor(1)
    assert real == {
        f"collapse/{k}": v for k, v in collapse_stats(out[:, :3].reshape(-1, 1, 16)).items()
    }
    monitor.observe(out)  # unmasked: the padding drags the rank down
    assert monitor(1)["collapse/eff_rank"] < real["collapse/eff_rank"]


# ------------------------------------------------------------------------------ step seed


def test_step_seed_fixes_the_rope_rescale_of_a_step() -> None:
    """``on_step_start(step, seed)`` draws the step's RoPE coordinate scale from ``seed``: the
    same seed gives the same loss, another seed another one."""
    obj = _objective("predictor.rope_rescale=[0.5, 2.0]").train()
    x = _images()

    def loss_at(seed: int) -> float:
        obj.on_step_start(0, seed)
        return obj(x)[0].item()

    a, again, b = loss_at(step_seed(0, 1)), loss_at(step_seed(0, 1)), loss_at(step_seed(0, 2))
    assert a == again and a != b
