"""JEPA: EMA targets never trained and updated by the formula, masks seeded per step and per
global sample, the loss by hand, config-time refusals, and a run that trains and resumes."""

from __future__ import annotations

import pytest
import torch
from tiny_recipe import jepa_tiny

from nepa.batch import collate
from nepa.config import ConfigError, apply_overrides
from nepa.data.base import build_dataset
from nepa.objectives.jepa import Jepa, regression_loss
from nepa.train.build import build_objective
from nepa.train.optim import build_optimizer


@pytest.fixture
def setup():
    cfg = jepa_tiny()
    objective = build_objective(cfg)
    ds = build_dataset(cfg.data, split="train", train=True)
    batch = collate([ds[(i, 10 + i)] for i in range(8)])
    return cfg, objective, batch


def _step(objective: Jepa, batch, seed: int = 5):
    objective.on_step_start(0, seed)
    objective.on_micro_batch(0)
    return objective(batch)


def test_ema_target_is_untrained_and_follows_the_formula(setup) -> None:
    cfg, objective, batch = setup
    assert isinstance(objective, Jepa)
    objective.on_train_start(10)
    optimizer = build_optimizer(objective.param_groups(cfg.optim), cfg.optim)
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    target = [*objective.target_encoder.parameters(), *objective.target_predictor.parameters()]
    assert not grouped & {id(p) for p in target}  # the optimizer never sees them
    before = [p.detach().clone() for p in target]
    loss, _ = _step(objective, batch)
    loss.backward()
    assert all(p.grad is None for p in target)
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, target, strict=True))  # untouched
    live = [*objective.encoder.parameters(), *objective.predictor.parameters()]
    objective.on_step_end(3)
    m = 0.996 + (1.0 - 0.996) * 3 / 10
    assert objective.momentum_at(3) == pytest.approx(m)
    for old, new, p in zip(before, live, target, strict=True):
        torch.testing.assert_close(p, m * old + (1 - m) * new.detach())


def test_masks_depend_on_step_and_global_sample_only(setup) -> None:
    _, objective, _ = setup
    objective.on_step_start(0, 11)
    objective.on_micro_batch(0)
    whole = objective.draw_masks(8)[0]
    objective.on_micro_batch(4)  # the second half of the same global batch, on another rank
    half = objective.draw_masks(4)[0]
    assert torch.equal(half.targets, whole.targets[4:])
    for i in range(4):
        a = whole.context[4 + i][whole.context_keep[4 + i]]
        assert torch.equal(half.context[i][half.context_keep[i]], a)
    objective.on_step_start(1, 12)
    objective.on_micro_batch(0)
    assert not torch.equal(objective.draw_masks(8)[0].targets, whole.targets)


def test_loss_equals_the_regression_by_hand(setup) -> None:
    _, objective, batch = setup
    objective.eval()
    loss, _ = _step(objective, batch)
    # recompute: target encoder outputs, layer-normed, at the targets of the same masks
    objective.on_step_start(0, 5)
    objective.on_micro_batch(0)
    (m,) = objective.draw_masks(8)
    tok = objective.encoder(batch)
    pos = objective.positions(tok)
    tt = objective.target_encoder(batch)
    h = objective.target_predictor(tt.emb, tt.coords, tt.grid, tt.keep)
    t = torch.nn.functional.layer_norm(h, (h.shape[-1],))
    losses = []
    for b in range(8):
        ctx_cells = m.context[b][m.context_keep[b]]
        ctx = objective.predictor(
            tok.emb[b : b + 1, pos[ctx_cells]], tok.coords[pos[ctx_cells]], tok.grid, None
        )
        preds = []
        for n in range(m.targets.shape[1]):
            tp = pos[m.targets[b, n]]
            x = torch.cat(
                [objective.narrow_in(ctx), objective.mask_token.expand(1, len(tp), -1)], 1
            )
            xc = torch.cat([tok.coords[pos[ctx_cells]], tok.coords[tp]])
            out = objective.narrow(x, xc, tok.grid, None)[:, len(ctx_cells) :]
            preds.append(regression_loss("smooth_l1", objective.narrow_out(out)[0], t[b, tp]))
        losses.append(torch.cat(preds).mean())
    torch.testing.assert_close(loss, torch.stack(losses).mean(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("objective.min_keep=16", r"on the \(4, 4\) grid .* below min_keep=16"),
        ('objective={"kind": "jepa", "target_scale": [1, 1], "target_aspect": [1, 1]}', "whole"),
    ],
)
def test_unsatisfiable_masks_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(jepa_tiny(), [override])


def test_a_causal_or_start_token_context_encoder_is_refused() -> None:
    cfg = apply_overrides(jepa_tiny(), ["predictor.attn=causal"])
    with pytest.raises(ValueError, match="predictor.attn=bidirectional"):
        build_objective(cfg)


def test_accumulation_and_resume_equal_one_uninterrupted_run(tmp_path, monkeypatch) -> None:
    from sigterm import sigterm_during_step

    from nepa.train.trainer import train

    cfg = apply_overrides(jepa_tiny(), ["train.ckpt_every=100"])
    full = train(cfg, tmp_path / "full", progress=False)
    accum = train(apply_overrides(cfg, ["train.accum=2"]), tmp_path / "accum", progress=False)
    assert accum.losses == pytest.approx(full.losses, rel=1e-5, abs=1e-6)
    with monkeypatch.context() as m:
        sigterm_during_step(m, 3)
        first = train(cfg, tmp_path / "split", progress=False)
    second = train(cfg, tmp_path / "split", resume=True, progress=False)
    assert first.step == 3 and first.losses + second.losses == full.losses
    assert full.losses[-1] < full.losses[0]


def test_fine_tuning_trains_a_copy_of_the_ema_target(setup) -> None:
    from nepa.eval.finetune import FinetuneConfig, finetune_classifier

    _, objective, _ = setup
    clf = finetune_classifier(objective, 10, FinetuneConfig())
    trainable = [n for n, p in clf.named_parameters() if p.requires_grad]
    assert any(".blocks." in n for n in trainable)  # the transformer trains
    assert not any(p.requires_grad for p in objective.target_predictor.parameters())  # untouched


def test_collapse_monitor_reads_the_predictions(setup) -> None:
    _, objective, batch = setup
    _step(objective, batch)
    stats = objective.monitor(2)  # monitor_every=2 in jepa_tiny
    assert stats and all(v == v for v in stats.values())  # finite, no NaN
    assert stats["collapse/std_x_sqrt_d"] > 0 and stats["collapse/eff_rank"] > 1


def test_masks_draw_with_any_run_seed() -> None:
    from nepa.objectives.jepa import sample_seed
    from nepa.train.trainer import step_seed

    cfg = apply_overrides(jepa_tiny(), ["seed=123456789012"])
    objective = build_objective(cfg)
    objective.on_step_start(7, step_seed(cfg.seed, 7))
    objective.on_micro_batch(3)
    assert objective.draw_masks(4)[0].targets.shape[0] == 4
    seeds = {sample_seed(s, i) for s in range(50) for i in range(50)}
    assert len(seeds) == 2500  # no two (step, sample) pairs share a seed


def test_padded_samples_are_masked_and_trained_on_their_real_tokens() -> None:
    from nepa.batch import FieldSpec
    from nepa.encoders.base import build_encoder
    from nepa.encoders.sensor import SensorEncoderConfig
    from nepa.objectives.jepa import JepaConfig
    from nepa.predictor.config import PredictorConfig
    from nepa.predictor.transformer import Predictor

    torch.manual_seed(0)
    fields = {"signal": FieldSpec((3, 128)), "length": FieldSpec((), "int64")}
    enc = build_encoder(SensorEncoderConfig(patch=8, stride=8), dim=16, fields=fields)
    pred = Predictor(
        PredictorConfig(dim=16, depth=1, heads=2, attn="bidirectional", start_token=False), n_axes=1
    )
    jepa = Jepa(
        JepaConfig(min_keep=2, predictor_depth=1, predictor_dim=8), encoder=enc, predictor=pred
    )
    lengths = [128, 64, 40]
    batch = {"signal": torch.randn(3, 3, 128), "length": torch.tensor(lengths)}
    jepa.on_step_start(0, 3)
    jepa.on_micro_batch(0)
    tok = enc(batch)
    extents = jepa.extents(tok.coords.expand(3, -1, -1), tok.keep)
    assert extents == [(16,), (8,), (5,)]  # real patches of 8 samples
    (m,) = jepa.draw_masks(3, extents)
    for b, (e,) in enumerate(extents):
        assert (m.targets[b][m.targets_keep[b]] < e).all()
        assert (m.context[b][m.context_keep[b]] < e).all()
    loss, metrics = jepa(batch)
    assert torch.isfinite(loss) and float(metrics["jepa/usable"]) == 1.0
