"""SDPA's equivalent formulations agree, and ``auto`` measures once per call signature, keeps
torch's default where it should, and survives a resume through the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sigterm import sigterm_during_step
from tiny_recipe import tiny_with

from nepa.predictor import sdpa_kernels as sk
from nepa.predictor.attention import MaskSpec, attention
from nepa.predictor.sdpa_kernels import KERNELS, pick, restore_kernels, tuned_kernels
from nepa.train.checkpoint import CheckpointError, load_checkpoint
from nepa.train.trainer import train


@pytest.fixture(autouse=True)
def _empty_table():
    sk.forget_kernels()
    yield
    sk.forget_kernels()


def _qkv(B=2, T=9, H=3, Dh=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, Dh, generator=g).to(dtype).requires_grad_() for _ in range(3)]


MASKS = {
    "causal": MaskSpec("causal"),
    "bidirectional": MaskSpec("bidirectional"),
    "prefix+keep": MaskSpec("prefix", 3, torch.tensor([[True] * 9, [True] * 6 + [False] * 3])),
}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_equals_the_default_in_outputs_and_gradients(kernel: str, mask: str) -> None:
    ref_in, in_ = _qkv(), _qkv()
    ref = attention(*ref_in, MASKS[mask], "sdpa", kernel="default")
    out = attention(*in_, MASKS[mask], "sdpa", kernel=kernel)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    w = torch.randn_like(ref)
    (ref * w).sum().backward()
    (out * w).sum().backward()
    for a, b in zip(in_, ref_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_bf16_kernels_stay_within_bf16_rounding_of_fp32(kernel: str) -> None:
    q, k, v = _qkv()
    ref = attention(q, k, v, MASKS["causal"], "sdpa")
    out = attention(*(t.bfloat16() for t in (q, k, v)), MASKS["causal"], "sdpa", kernel=kernel)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def _timer(monkeypatch, seconds: dict[str, float]) -> list[str]:
    """Replace the measurement: each candidate takes ``seconds[kernel]``; returns the calls."""
    calls: list[str] = []

    def fake_step(kernel, *args):
        calls.append(kernel)
        return kernel

    monkeypatch.setattr(sk, "_step", fake_step)
    monkeypatch.setattr(sk, "_seconds", lambda kernel: seconds[kernel])
    return calls


def _big(dtype=torch.float32, grad=True):  # 4 * B * H * T^2 * Dh above TUNE_MIN_FLOPS
    q = torch.zeros(64, 4, 65, 32, dtype=dtype, requires_grad=grad)
    assert sk.TUNE_MIN_FLOPS <= 4 * 64 * 4 * 65 * 65 * 32
    return q


def test_auto_measures_once_per_signature_and_keeps_the_fastest(monkeypatch) -> None:
    calls = _timer(monkeypatch, {"default": 3.0, "math": 1.0, "fp32": 2.0})
    q = _big(torch.bfloat16)
    assert pick("auto", q, q, q, "causal") == "math"
    assert sorted(calls) == ["default", "fp32", "math"]
    assert pick("auto", q, q, q, "causal") == "math"
    assert len(calls) == 3  # the second call of the signature is not measured again
    pick("auto", q, q, q, "bidirectional")  # another mask is another signature
    assert len(calls) == 6
    assert tuned_kernels() == {
        "64x4x65x32/bfloat16/fwd+bwd/causal": "math",
        "64x4x65x32/bfloat16/fwd+bwd/bidirectional": "math",
    }


def test_a_forward_alone_keeps_torchs_kernel_so_evaluation_is_reproducible(monkeypatch) -> None:
    calls = _timer(monkeypatch, {"default": 3.0, "math": 1.0, "fp32": 2.0})
    q = _big(torch.bfloat16)
    with torch.no_grad():
        assert pick("auto", q, q, q, "causal") == "default"
    with torch.inference_mode():
        assert pick("auto", *(torch.zeros(64, 4, 65, 32) for _ in range(3)), "causal") == "default"
    assert calls == [] and tuned_kernels() == {}


@pytest.mark.parametrize(
    ("seconds", "chosen"),
    [
        ({"default": 1.2, "math": 1.0, "fp32": 1.1}, "default"),  # all within 25%: torch's
        ({"default": 3.0, "math": 1.0, "fp32": 1.2}, "fp32"),  # near-equals: the fixed order
        ({"default": 3.0, "math": 1.0, "fp32": 1.3}, "math"),
    ],
)
def test_near_equal_kernels_are_chosen_in_a_fixed_order(monkeypatch, seconds, chosen) -> None:
    _timer(monkeypatch, seconds)
    q = _big(torch.bfloat16)
    assert pick("auto", q, q, q, "causal") == chosen


def test_fp32_inputs_time_only_the_kernels_that_differ(monkeypatch) -> None:
    calls = _timer(monkeypatch, {"default": 1.0, "math": 2.0})
    q = _big()
    assert pick("auto", q, q, q, "causal") == "default"
    assert sorted(calls) == ["default", "math"]  # for fp32 inputs the fp32 kernel is the default


def test_auto_measures_nothing_for_small_attention_or_deterministic_runs(monkeypatch) -> None:
    calls = _timer(monkeypatch, {"default": 3.0, "math": 1.0})
    small = torch.zeros(2, 3, 9, 8, requires_grad=True)
    assert pick("auto", small, small, small, "causal") == "default"
    big = _big()
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert pick("auto", big, big, big, "causal") == "default"
    assert calls == [] and tuned_kernels() == {}
    assert pick("math", small, small, small, "causal") == "math"  # an explicit kernel is kept


def test_restored_choices_are_used_without_measuring(monkeypatch) -> None:
    calls = _timer(monkeypatch, {"default": 1.0, "math": 3.0})
    restore_kernels({"64x4x65x32/float32/fwd+bwd/causal": "math"})
    q = _big()
    assert pick("auto", q, q, q, "causal") == "math" and calls == []
    with pytest.raises(ValueError, match="unknown SDPA kernels.*'flash'"):
        restore_kernels({"64x4x65x32/float32/fwd/causal": "flash"})


@pytest.mark.slow
def test_a_resumed_run_gets_back_the_kernels_its_checkpoint_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = {"128x3x65x64/bfloat16/fwd+bwd/causal": "math"}
    restore_kernels(chosen)
    cfg = tiny_with("train.steps=4", "train.ckpt_every=2")
    with monkeypatch.context() as m:
        sigterm_during_step(m, 2)
        first = train(cfg, tmp_path / "run", progress=False)
    assert first.stopped_by == "signal"
    assert load_checkpoint(tmp_path / "run/checkpoints/step_00000002.pt")["sdpa_kernels"] == chosen
    sk.forget_kernels()  # as in a new process
    train(cfg, tmp_path / "run", resume=True, progress=False)
    assert tuned_kernels() == chosen


@pytest.mark.slow
def test_a_checkpoint_naming_an_unknown_kernel_is_a_checkpoint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_with("train.steps=4", "train.ckpt_every=2")
    with monkeypatch.context() as m:
        sigterm_during_step(m, 2)
        train(cfg, tmp_path / "run", progress=False)
    path = tmp_path / "run/checkpoints/step_00000002.pt"
    state = load_checkpoint(path)
    state["sdpa_kernels"] = {"128x3x65x64/bfloat16/fwd+bwd/causal": "flash"}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"step_00000002\.pt: unknown SDPA kernels.*'flash'"):
        train(cfg, tmp_path / "run", resume=True, progress=False)
