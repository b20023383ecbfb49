"""The training loop end to end on the shipped demo digits, plus optimizer groups and schedule.

Invariances (STYLE.md): determinism, tiny overfit, accumulation, resume == no interruption,
SIGTERM, NaN, damaged/missing checkpoints, and what a run directory holds.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
from pathlib import Path
from typing import Literal

import pytest
import torch
from safetensors.torch import load_file
from sigterm import sigterm_during_step
from tiny_recipe import TINY_RECIPE, tiny_with

from nepa.batch import collate
from nepa.cli import main
from nepa.config import OptimConfig, validate
from nepa.data.base import build_dataset
from nepa.data.sampler import StepBatchSampler
from nepa.objectives.base import OBJECTIVES
from nepa.objectives.nepa import Nepa, NepaConfig
from nepa.params import decay_groups
from nepa.train.build import build_objective, resolve_precision
from nepa.train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from nepa.train.optim import build_optimizer, lr_at, schedule, set_lr, warmup_steps
from nepa.train.rundir import RunDirError, read_metrics
from nepa.train.trainer import NonFiniteLossError, step_seed, train

# ------------------------------------------------------------------------------ optimizer


def _no_decay(groups: list[dict]) -> set[str]:
    return {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}


def test_weight_decay_groups() -> None:
    obj = build_objective(tiny_with())
    groups = obj.param_groups(OptimConfig(weight_decay=0.05))
    skip = _no_decay(groups)
    params = dict(obj.named_parameters())
    for name, p in params.items():
        expected_skip = p.ndim < 2 or name == "predictor.start_token"
        assert (name in skip) == expected_skip, name
    assert {
        "predictor.start_token",
        "predictor.norm.weight",
        "predictor.norm.bias",
        "predictor.blocks.0.norm1.weight",
        "predictor.blocks.0.attn.q_norm.weight",
        "predictor.blocks.0.ls1.gamma",
        "predictor.blocks.0.attn.qkv.bias",
        "encoder.proj.bias",
    } <= skip
    for decayed in (
        "encoder.proj.weight",
        "predictor.blocks.0.attn.qkv.weight",
        "predictor.blocks.1.mlp.fc1.weight",
        "predictor.blocks.1.attn.proj.weight",
    ):
        assert decayed not in skip
    opt = build_optimizer(groups, OptimConfig(weight_decay=0.05))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["lr_scale"] == no_decay["lr_scale"] == 1.0
    ids = {id(p): n for n, p in params.items()}
    assert {ids[id(p)] for p in decay["params"]} == set(decay["names"]) == set(params) - skip
    assert {ids[id(p)] for p in no_decay["params"]} == set(no_decay["names"]) == skip


def test_decay_groups_leave_out_frozen_parameters_and_split_by_lr_scale() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    groups = decay_groups(
        model, 0.1, no_decay={"2.weight"}, lr_scale=lambda n: 0.5 if n.startswith("1.") else 1.0
    )
    got = [(g["names"], g["weight_decay"], g["lr_scale"]) for g in groups]
    assert got == [(["1.weight", "1.bias"], 0.0, 0.5), (["2.weight", "2.bias"], 0.0, 1.0)]
    groups = decay_groups(list(model.named_parameters()), 0.1)  # (name, parameter) pairs
    assert [(g["names"], g["weight_decay"]) for g in groups] == [
        (["2.weight"], 0.1),
        (["1.weight", "1.bias", "2.bias"], 0.0),
    ]


def test_weight_decay_acts_only_on_the_decay_group() -> None:
    obj = build_objective(tiny_with())
    cfg = OptimConfig(lr=0.1, weight_decay=0.5)
    groups = obj.param_groups(cfg)
    opt = build_optimizer(groups, cfg)
    before = {n: p.detach().clone() for n, p in obj.named_parameters()}
    for p in obj.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only decoupled weight decay moves weights
    opt.step()
    skip = _no_decay(groups)
    for n, p in obj.named_parameters():
        expected = before[n] if n in skip else before[n] * (1 - 0.1 * 0.5)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0)


def test_set_lr_multiplies_each_groups_lr_scale() -> None:
    a, b, c = (torch.nn.Parameter(torch.zeros(2, 2)) for _ in range(3))
    groups = [
        {"params": [a], "lr_scale": 0.5},
        {"params": [b], "lr_scale": 2.0},
        {"params": [c]},  # no lr_scale: 1.0
    ]
    opt = build_optimizer(groups, OptimConfig(lr=1.0))
    set_lr(opt, 1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 2e-3, 1e-3])


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = OptimConfig(lr=1e-3, warmup=10, min_lr_ratio=0.1)
    total = 100
    assert warmup_steps(cfg.warmup, total) == 10
    lr = schedule(cfg, total)

    def at(step: int) -> float:
        return lr_at(step, peak=1e-3, warmup=10, total=total, min_ratio=0.1)

    assert at(0) == pytest.approx(1e-4)  # first step: lr / warmup
    assert at(4) == pytest.approx(5e-4)
    assert at(9) == pytest.approx(1e-3)  # end of warm-up: the peak
    assert at(10) == pytest.approx(1e-3)  # cosine starts at the peak
    assert at(55) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way down
    last = 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 89 / 90))
    assert at(99) == pytest.approx(last)  # the last step
    assert at(100) == pytest.approx(1e-4) == at(500)  # the floor
    lrs = [at(s) for s in range(total)]
    assert [lr(s) for s in range(total)] == lrs  # schedule(cfg, total) is the same function
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_lr_warmup_fraction_and_none() -> None:
    assert warmup_steps(0.025, 1000) == 25
    assert warmup_steps(OptimConfig(warmup=0.025).warmup, 1000) == 25
    lr = schedule(OptimConfig(lr=2e-3, warmup=0), 10)
    assert lr(0) == pytest.approx(2e-3)
    assert lr(10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, peak=2e-3, warmup=0, total=10) == pytest.approx(2e-3)


def test_step_seed_is_a_pure_function_of_run_seed_and_step() -> None:
    seeds = [step_seed(0, s) for s in range(100)]
    assert len(set(seeds)) == 100 and seeds == [step_seed(0, s) for s in range(100)]
    assert step_seed(1, 0) not in seeds[:3]  # the run seed matters
    assert all(0 <= s < 2**63 for s in seeds + [step_seed(2**40, 10**9)])


def test_precision_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == (False, "requested")
    assert resolve_precision("bf16", cpu)[0] is True
    assert resolve_precision("auto", torch.device("cuda"))[0] is True


# ------------------------------------------------------------------------------ helpers


def _params(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run) if "loss" in r]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory):
    """6 uninterrupted steps, checkpoints every 3."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    cfg = tiny_with("train.ckpt_every=3")
    result = train(cfg, out, recipe=TINY_RECIPE, progress=False)
    return cfg, out, result


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_run_dir_contents(baseline) -> None:
    cfg, out, result = baseline
    assert result.stopped_by == "completed" and result.step == 6 and len(result.losses) == 6
    assert all(math.isfinite(v) for v in result.losses)
    assert validate(json.loads((out / "config.json").read_text())) == cfg
    meta = json.loads((out / "meta.json").read_text())
    assert meta["attention_backend"] == "sdpa" and meta["recipe"] == TINY_RECIPE
    assert meta["world_size"] == 1 and meta["precision"] == "fp32" and meta["nepa_version"]
    records = read_metrics(out)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]  # log_every=1
    assert [r["loss"] for r in train_records] == result.losses
    lr = schedule(cfg.optim, 6)
    for r in train_records:
        assert r["lr"] == pytest.approx(lr(r["step"] - 1))
        assert r["tokens"] == 16 * 16  # the objective's own metric: 16 images of 16 tokens
        assert (
            r["grad_norm"] > 0
            and r["samples_per_s"] > 0
            and r["tokens_per_s"] == pytest.approx(16 * r["samples_per_s"])
        )
    monitor = [r for r in records if "collapse/eff_rank" in r]
    assert [r["step"] for r in monitor] == [2, 4, 6]  # monitor_every=2
    assert list((out / "tb").glob("events.out.tfevents.*"))
    ckpts = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000003.pt", "step_00000006.pt"]
    state = load_checkpoint(ckpts[-1])
    assert state["step"] == 6 and state["micro_done"] == 6 and state["world_size"] == 1
    weights = _params(out)
    obj = build_objective(cfg)
    assert set(weights) == set(obj.state_dict())
    for k, v in state["model"].items():
        torch.testing.assert_close(weights[k], v, rtol=0, atol=0)  # exported = last checkpoint
    assert not torch.equal(weights["encoder.proj.weight"], obj.state_dict()["encoder.proj.weight"])


@pytest.mark.slow
def test_first_loss_is_the_objective_on_the_first_global_batch(baseline) -> None:
    """The trainer feeds exactly the sampler's first batch to the seeded initial model."""
    cfg, _, result = baseline
    ds = build_dataset(cfg.data, split="train", train=True)
    keys = StepBatchSampler(len(ds), 16, seed=cfg.seed).micro(0)
    batch = collate([ds[key] for key in keys])
    assert batch["image"].shape == (16, 1, 28, 28) and batch["label"].shape == (16,)
    loss, metrics = build_objective(cfg)(batch)
    assert set(metrics) == {"tokens"} and float(metrics["tokens"]) == 16 * 16
    assert loss.item() == pytest.approx(result.losses[0], abs=1e-6)


@pytest.mark.slow
def test_two_seeded_runs_are_identical(baseline, tmp_path: Path) -> None:
    cfg, out, result = baseline
    again = train(cfg, tmp_path / "again", progress=False)
    assert again.losses == result.losses
    a, b = _params(out), _params(tmp_path / "again")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train(tiny_with("seed=1", "train.steps=2"), tmp_path / "seed1", progress=False)
    assert other.losses != result.losses[:2]  # the seed matters: the test can fail


@pytest.mark.slow
def test_tiny_overfit_on_a_fixed_batch(tmp_path: Path) -> None:
    """16 images = one batch, no augmentation (crop scale 1: RandomResizedCrop keeps the whole
    square image), 80 steps at a constant lr 1e-2. Measured: loss -0.20 at step 1, about -0.89
    at step 80, std*sqrt(D) about 0.38 and effective rank about 7 (not a collapse). Thresholds
    leave a wide margin."""
    cfg = tiny_with(
        "data.limit_train=16",
        "data.crop_scale=[1.0, 1.0]",
        "train.steps=80",
        "optim.lr=1e-2",
        "optim.min_lr_ratio=1.0",
        "optim.warmup=3",
        "predictor.layerscale=null",
        "objective.monitor_every=80",
        "train.log_every=80",
    )
    ds = build_dataset(cfg.data, split="train", train=True)
    torch.testing.assert_close(ds[(0, 1)]["image"], ds[(0, 2)]["image"], rtol=0, atol=0)  # fixed
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.losses[0] > -0.35
    assert sum(result.losses[-5:]) / 5 < -0.8
    stats = [r for r in read_metrics(tmp_path / "run") if "collapse/std_x_sqrt_d" in r][-1]
    assert stats["collapse/std_x_sqrt_d"] > 0.15 and stats["collapse/eff_rank"] > 3


@pytest.mark.slow
def test_accumulation_2x8_equals_1x16(baseline, tmp_path: Path) -> None:
    cfg, out, result = baseline
    acc = train(tiny_with("train.ckpt_every=3", "train.accum=2"), tmp_path / "acc", progress=False)
    assert acc.losses == pytest.approx(result.losses, abs=1e-5)
    a, b = _params(out), _params(tmp_path / "acc")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_accumulation_invariance_with_rope_rescale(tmp_path: Path) -> None:
    # layerscale off: with gammas of 1e-5 the attention (and so RoPE) barely moves the loss
    over = ["predictor.rope_rescale=[0.5, 2.0]", "predictor.layerscale=null", "train.steps=3"]
    one = train(tiny_with(*over), tmp_path / "one", progress=False)
    two = train(tiny_with(*over, "train.accum=2"), tmp_path / "two", progress=False)
    assert two.losses == pytest.approx(one.losses, abs=1e-5)


@pytest.mark.slow
def test_sigterm_then_resume_equals_no_interruption(
    baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, out, result = baseline
    run = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        sigterm_during_step(m, 2)  # not a ckpt_every=3 step: only the SIGTERM path saves
        first = train(cfg, run, progress=False)
    assert signal.getsignal(signal.SIGTERM) is handler  # the trainer put the old handler back
    assert first.stopped_by == "signal" and first.step == 2
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002.pt"]
    assert load_checkpoint(run / "checkpoints" / "step_00000002.pt")["step"] == 2
    assert not (run / "model.safetensors").exists()  # only a completed run exports weights
    second = train(cfg, run, resume=True, progress=False)
    assert second.stopped_by == "completed" and second.step == 6
    assert first.losses + second.losses == result.losses  # bit-identical on one CPU thread
    assert _losses(run) == result.losses
    a, b = _params(out), _params(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_is_exact_with_train_time_rng(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_with(
        "train.ckpt_every=3", "predictor.rope_rescale=[0.5, 2.0]", "predictor.layerscale=null"
    )
    full = train(cfg, tmp_path / "full", progress=False)
    with monkeypatch.context() as m:
        sigterm_during_step(m, 3)
        first = train(cfg, tmp_path / "split", progress=False)
    second = train(cfg, tmp_path / "split", resume=True, progress=False)
    assert first.losses + second.losses == full.losses


@pytest.mark.slow
def test_a_checkpoint_from_before_the_kernel_options_resumes_and_records_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """optim.impl and predictor.sdpa_kernel choose between kernels equal up to rounding; a run
    checkpointed by a version without them resumes, the change recorded."""
    cfg = tiny_with("train.steps=4", "train.ckpt_every=2")
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        sigterm_during_step(m, 2)
        train(cfg, run, progress=False)
    path = run / "checkpoints" / "step_00000002.pt"
    state = load_checkpoint(path)
    del state["config"]["optim"]["impl"], state["config"]["predictor"]["sdpa_kernel"]
    del state["sdpa_kernels"]
    torch.save(state, path)
    assert train(cfg, run, resume=True, progress=False).stopped_by == "completed"
    resume = [r["resume"] for r in read_metrics(run) if "resume" in r][-1]
    assert resume["changes"] == {
        "optim.impl": [None, "fused"],
        "predictor.sdpa_kernel": [None, "auto"],
    }


@pytest.mark.slow
def test_resume_refuses_a_different_config(baseline, tmp_path: Path) -> None:
    _, out, _ = baseline
    run = tmp_path / "run"
    shutil.copytree(out, run)
    with pytest.raises(
        CheckpointError, match="config differs from the checkpoint.s at predictor.depth"
    ):
        train(
            tiny_with("train.ckpt_every=3", "predictor.depth=3"), run, resume=True, progress=False
        )
    # keys that may differ (logging, checkpoint cadence) do not block a resume
    done = train(
        tiny_with("train.ckpt_every=5", "train.log_every=2"), run, resume=True, progress=False
    )
    assert done.step == 6 and done.losses == []


def test_existing_checkpoints_without_resume_is_an_error(baseline, tmp_path: Path) -> None:
    cfg, out, _ = baseline
    run = tmp_path / "run"
    shutil.copytree(out, run)
    with pytest.raises(RunDirError, match="already holds a run .*: pass --resume"):
        train(cfg, run, progress=False)


def test_missing_checkpoint_on_resume_is_an_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(
        CheckpointError, match="no checkpoint to resume from .*refusing to start a fresh run"
    ):
        train(tiny_with(), tmp_path / "fresh", resume=True, progress=False)
    assert not list_checkpoints(tmp_path / "fresh" / "checkpoints")
    code = main(
        ["train", TINY_RECIPE, "--out", str(tmp_path / "fresh2"), "--resume", "--no-progress"]
    )
    assert code == 1 and "no checkpoint to resume from" in capsys.readouterr().err


def test_damaged_checkpoint_on_resume_is_a_clear_error(baseline, tmp_path: Path) -> None:
    cfg, out, _ = baseline
    run = tmp_path / "run"
    shutil.copytree(out, run)
    latest = list_checkpoints(run / "checkpoints")[-1]
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a kill
    with pytest.raises(CheckpointError, match=r"step_00000006\.pt is damaged .*delete this file"):
        train(cfg, run, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(latest)
    torch.save({"model": {}}, latest)  # readable, but not a training checkpoint
    with pytest.raises(CheckpointError, match="lacks .*'optimizer'"):
        load_checkpoint(latest)


# ------------------------------------------------------------------------------ NaN


class NanAtStepConfig(NepaConfig):
    kind: Literal["test_nan_at_step"] = "test_nan_at_step"
    nan_step: int = 5


@OBJECTIVES.register("test_nan_at_step", config=NanAtStepConfig)
class NanAtStep(Nepa):
    """NEPA whose loss turns NaN on the ``nan_step``-th forward (= optimizer step, accum 1)."""

    def __init__(self, cfg: NanAtStepConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        self.calls = 0

    def forward(self, batch):
        loss, metrics = super().forward(batch)
        self.calls += 1
        return (loss * float("nan") if self.calls == self.cfg.nan_step else loss), metrics


@pytest.mark.slow
def test_nan_loss_stops_loudly_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_with("train.ckpt_every=2", "train.steps=8").model_dump()
    cfg["objective"] = {"kind": "test_nan_at_step", "nan_step": 5}
    cfg = validate(cfg)  # a user-registered objective validates through the registry
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 5"):
        train(cfg, run, progress=False)
    ckpts = list_checkpoints(run / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000002.pt", "step_00000004.pt"]
    state = load_checkpoint(ckpts[-1])
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    obj = build_objective(cfg)
    obj.load_state_dict(state["model"])  # loadable into the same architecture
    assert not (run / "model.safetensors").exists()
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2, 3, 4]
