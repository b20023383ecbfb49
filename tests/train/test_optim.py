"""AdamW's three torch kernels give the same parameters (fused is the default)."""

from __future__ import annotations

import torch

from nepa.train.optim import OptimConfig, build_optimizer


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3)
    )


def _trained(impl: str) -> list[torch.Tensor]:
    model = _model()
    groups = [
        {"params": [model[0].weight, model[2].weight], "weight_decay": 0.05, "lr_scale": 1.0},
        {"params": [model[0].bias, *model[1].parameters(), model[2].bias], "weight_decay": 0.0},
    ]
    opt = build_optimizer(groups, OptimConfig(impl=impl))
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        model(torch.randn(4, 8, generator=g)).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach() for p in model.parameters()]


def test_fused_foreach_and_for_loop_agree() -> None:
    assert OptimConfig().impl == "fused"
    ref = _trained("for_loop")
    init = [p.detach() for p in _model().parameters()]
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(ref, init, strict=True))  # trained
    for impl in ("fused", "foreach"):
        for a, b in zip(_trained(impl), ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
