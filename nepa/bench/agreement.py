"""xformers against SDPA on the same weights and input: outputs and gradients (CUDA only)."""

from __future__ import annotations

import torch

from nepa.bench.models import Shape, bench_inputs, build_model
from nepa.objectives.nepa import nepa_loss, prediction_target


def _forward_backward(model, emb, coords, grid, bf16: bool, device: torch.device):
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        h = model(emb, coords, grid)  # (B, T + 1, D)
        p, t, _ = prediction_target(h, emb, None, shift=True, stop_grad=True, start_token=True)
        loss = nepa_loss(p, t)
    loss.backward()
    return h.detach().float(), {n: p.grad.detach().float() for n, p in model.named_parameters()}


def backend_agreement(shape: Shape, device: torch.device, batch: int = 4, seed: int = 0) -> dict:
    """Max abs differences of outputs and of every parameter's gradient, fp32 and bf16.

    ``max_rel_grad`` divides each parameter's max abs gradient difference by that gradient's
    max abs value; ``worst_param`` names the parameter where it is largest."""
    sdpa = build_model("full", shape, device, seed)
    xf = build_model("full-xformers", shape, device, seed)
    xf.load_state_dict(sdpa.state_dict())
    emb, coords = bench_inputs(shape, batch, device, seed)
    report = {}
    for precision in ("fp32", "bf16"):
        h_s, g_s = _forward_backward(sdpa, emb, coords, shape.grid, precision == "bf16", device)
        h_x, g_x = _forward_backward(xf, emb, coords, shape.grid, precision == "bf16", device)
        abs_diff = {n: (g_s[n] - g_x[n]).abs().max().item() for n in g_s}
        rel_diff = {n: abs_diff[n] / max(g_s[n].abs().max().item(), 1e-30) for n in g_s}
        worst = max(rel_diff, key=rel_diff.get)
        report[precision] = {
            "max_abs_out": (h_s - h_x).abs().max().item(),
            "max_abs_grad": max(abs_diff.values()),
            "max_rel_grad": rel_diff[worst],
            "worst_param": worst,
        }
    return report
