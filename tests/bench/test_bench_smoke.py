"""The step benchmark's code path at a tiny size: structure and positivity, never timings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nepa.bench.models import Shape, TimmCausal, build_model, matmul_params, step_flops
from nepa.bench.step import StepBenchConfig, check_config, format_report, run_step_bench
from nepa.cli import main
from nepa.predictor import Predictor, PredictorConfig

TINY = {"dim": 32, "depth": 1, "heads": 2, "tokens": 16, "batch": 2, "steps": 2, "warmup": 1}


def _positive(x) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and x > 0


def test_run_step_bench_structure() -> None:
    result = run_step_bench(StepBenchConfig(**TINY, device="cpu", matmul_size=64))
    assert set(result) >= {"config", "machine", "flop_formula", "matmul", "runs", "ratios"}
    assert result["machine"]["device"] == "cpu" and result["machine"]["torch"] == torch.__version__
    for p in ("fp32", "bf16"):
        assert result["matmul"][p]["size"] == 64 and _positive(result["matmul"][p]["flop_per_s"])
    runs = {(r["precision"], r["model"]): r for r in result["runs"]}
    assert set(runs) == {(p, m) for p in ("fp32", "bf16") for m in ("timm", "matched", "full")}
    for r in runs.values():
        assert len(r["step_s"]) == 2 and all(_positive(s) for s in r["step_s"])
        for key in (
            "step_s_median",
            "tokens_per_s",
            "samples_per_s",
            "flop_per_s",
            "matmul_fraction",
        ):
            assert _positive(r[key]), key
        assert r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * 16)
        assert math.isfinite(r["final_loss"]) and -1.0 <= r["final_loss"] <= 1.0  # a -cosine
        assert r["attention_kernels"] and all("attention" in k for k in r["attention_kernels"])
    # Same widths: matched and timm do the same matmul work; the SwiGLU of full is 2/3-width.
    assert runs["fp32", "matched"]["flops_per_step"] == runs["fp32", "timm"]["flops_per_step"]
    for p in ("fp32", "bf16"):
        q = result["ratios"][p]
        assert _positive(q["matched_vs_timm"]) and q["full_slowdown_vs_matched"] > -1
    text = format_report(result)
    assert "matched/timm" in text and "full vs matched" in text and "fp32" in text


def test_flop_count_by_hand() -> None:
    """12 D^2 matmul weights per block for both; the formula of FLOP_FORMULA."""
    shape = Shape(dim=48, depth=2, heads=2, tokens=9)
    for variant in ("timm", "matched"):
        assert matmul_params(build_model(variant, shape, torch.device("cpu"))) == 2 * 12 * 48**2
    S = 10
    assert step_flops(100, shape, 3) == 6 * 100 * 3 * S + 12 * 2 * 3 * S**2 * 48


def test_timm_wrapper_is_causal() -> None:
    """Changing token t leaves timm's outputs before it unchanged (the mask really applies)."""
    model = TimmCausal(Shape(dim=32, depth=2, heads=2, tokens=8)).eval()
    emb = torch.randn(1, 8, 32)
    emb2 = emb.clone()
    emb2[:, 5] += torch.randn(32)
    with torch.no_grad():
        diff = (model(emb, None, (8,)) - model(emb2, None, (8,))).abs().amax(dim=(0, 2))
    assert diff[:6].max() < 1e-6 and diff[6:].min() > 1e-4  # position j sees tokens < j


def test_cli_writes_json(tmp_path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "step", "--precision", "fp32", "--device", "cpu", "--matmul-size", "64"]
    args += [f"--{k}={v}" for k, v in TINY.items()] + ["--json", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["runs"]] == ["timm", "matched", "full"]
    assert data["config"]["precisions"] == ["fp32"]
    assert all("profile" not in r for r in data["runs"])


def test_variants_time_the_kernel_choice_against_torchs_dispatch(tmp_path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "step", "--precision", "fp32", "--device", "cpu", "--matmul-size", "64"]
    args += [f"--{k}={v}" for k, v in TINY.items()] + ["--json", str(out)]
    assert main([*args, "--variants", "matched,matched-torch"]) == 0
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["runs"]] == ["matched", "matched-torch"]
    assert _positive(data["ratios"]["fp32"]["matched_vs_torch_kernel"])
    models = {
        v: build_model(v, Shape(32, 1, 2, 16), torch.device("cpu")) for v in ("full", "full-torch")
    }
    assert models["full"].blocks[0].attn.kernel == "auto"
    assert models["full-torch"].blocks[0].attn.kernel == "default"
    assert main([*args, "--variants", "matched,nope"]) == 2


def test_profile_prints_each_models_top_ops(capsys) -> None:
    args = ["bench", "step", "--precision", "fp32", "--device", "cpu", "--matmul-size", "64"]
    assert main([*args, *(f"--{k}={v}" for k, v in TINY.items()), "--profile", "4"]) == 0
    out = capsys.readouterr().out
    for model in ("timm", "matched", "full"):
        table = out.split(f"profile of one step: fp32 {model}\n")[1].split("\n\n")[0]
        assert "# of Calls" in table and "Self CPU time total" in table
        assert len(table.splitlines()) == 3 + 4 + 2  # header, the 4 top ops, footer
    assert main([*args, "--profile", "-1"]) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"precisions": ("fp16",)},
        {"heads": 5},
        {"dim": 30, "heads": 2},  # head dim 15: odd
        {"batch": 0},
        {"device": "tpu"},
        {"profile": -1},
    ],
)
def test_bad_config_raises_before_running(change) -> None:
    with pytest.raises(ValueError):
        check_config(StepBenchConfig(**{**TINY, **change}))


def test_head_dim_need_not_fill_every_rope_axis() -> None:
    """Head dim 18 over a 2-axis grid: RoPE rotates 4 pairs per axis and leaves one pair
    unrotated (the predictor allows it), so the benchmark accepts it."""
    assert (
        check_config(StepBenchConfig(**{**TINY, "dim": 36, "heads": 2}, device="cpu")).type == "cpu"
    )


def test_predictor_fast_paths_equal_reference_formulas() -> None:
    """The speed-ups the benchmark motivated (RoPE, SwiGLU and LayerScale kernels) compute the
    textbook formulas: values and gradients, fp32 and bf16."""
    from nepa.predictor.rope import apply_rotary
    from nepa.predictor.transformer import _SwiGLU

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 5, 3, 8, dtype=dtype, requires_grad=True)
        cos, sin = torch.randn(5, 1, 8), torch.randn(5, 1, 8)  # general tables, fp32
        x1, x2 = x.chunk(2, -1)
        ref = (x * cos + torch.cat([-x2, x1], -1) * sin).to(dtype)
        out = apply_rotary(x, cos, sin)
        assert out.dtype == dtype
        g = torch.randn_like(ref)
        # fp32: the fused multiply-adds round once where the formula rounds twice (1 ulp);
        # bf16: that ulp can flip the final rounding to bf16 (one bf16 ulp, 2^-8 relative).
        tol = (
            {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
        )
        torch.testing.assert_close(out, ref, **tol)
        torch.testing.assert_close(
            torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0], **tol
        )

        h = torch.randn(4, 6, 10, dtype=dtype, requires_grad=True)
        a, gate = h.chunk(2, -1)
        ref = torch.nn.functional.silu(gate) * a
        out = _SwiGLU.apply(h)
        g = torch.randn_like(ref)
        assert torch.equal(out, ref)
        assert torch.equal(torch.autograd.grad(out, h, g)[0], torch.autograd.grad(ref, h, g)[0])

    # The whole block (LayerScale folded into the branches' last linear layers) against the
    # unfused expression x + ls(attn(...)) / x + ls(mlp(...)): values and every gradient.
    cfg = PredictorConfig(dim=32, depth=1, heads=2, layerscale=0.5)
    pred = Predictor(cfg, n_axes=1)
    blk = pred.blocks[0]
    x = torch.randn(2, 7, 32, requires_grad=True)
    rope = pred.rope_tables(torch.arange(6)[:, None], (6,))
    mask = pred.mask_spec(None)
    y = x + blk.ls1(blk.attn(blk.norm1(x), rope, mask))
    y = y + blk.ls2(blk.mlp(blk.norm2(y)))
    out = blk(x, rope, mask)
    torch.testing.assert_close(out, y, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    wrt = [x, *blk.parameters()]
    got, want = torch.autograd.grad(out, wrt, g), torch.autograd.grad(y, wrt, g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_agreement_check_runs_its_step_on_any_device() -> None:
    """The GPU check's forward/backward (xformers against SDPA) on the CPU with SDPA: it had
    fallen behind the objective's signature, which only a GPU run would have shown."""
    from nepa.bench.agreement import _forward_backward
    from nepa.bench.models import bench_inputs

    shape = Shape(dim=32, depth=1, heads=2, tokens=16)
    cpu = torch.device("cpu")
    model = build_model("full", shape, cpu, 0)
    emb, coords = bench_inputs(shape, 2, cpu, 0)
    h, grads = _forward_backward(model, emb, coords, shape.grid, False, cpu)
    assert h.shape == (2, 17, 32) and torch.isfinite(h).all()
    assert set(grads) == {n for n, _ in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
