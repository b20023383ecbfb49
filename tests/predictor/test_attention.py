"""Attention dispatch: masks against a hand-written reference, causality per backend, resolution."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from nepa.predictor.attention import MaskSpec, attention, resolve_backend, xformers_available
from nepa.predictor.config import PredictorConfig
from nepa.predictor.transformer import Attention, Predictor

HAS_XFORMERS_GPU = torch.cuda.is_available() and xformers_available()
BACKENDS = [
    pytest.param("sdpa", id="sdpa"),
    pytest.param(
        "xformers",
        id="xformers",
        marks=pytest.mark.skipif(
            not HAS_XFORMERS_GPU, reason="xformers has no CPU kernels: needs CUDA and xformers"
        ),
    ),
]


def _device(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "xformers" else "cpu")


def _allowed_by_hand(
    mode: str, T: int, prefix: int, keep: torch.Tensor | None, B: int
) -> torch.Tensor:
    """(B, T, T) bool, written from the definitions, not from MaskSpec."""
    allowed = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                ok = (
                    mode == "bidirectional"
                    or j <= i
                    or (mode == "prefix" and i < prefix and j < prefix)
                )
                allowed[b, i, j] = ok and (keep is None or bool(keep[b, j]))
    return allowed


def _reference(q, k, v, allowed_BTT) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V, in float64. q, k, v: (B, T, H, Dh)."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    logits = logits.masked_fill(~allowed_BTT[:, None], float("-inf"))
    return (logits.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["causal", "bidirectional", "prefix"])
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "keepmask"])
def test_attention_equals_hand_written_reference(backend: str, mode: str, padded: bool) -> None:
    torch.manual_seed(0)
    B, T, H, Dh, P = 2, 9, 3, 8, 4
    dev = _device(backend)
    q, k, v = (torch.randn(B, T, H, Dh) for _ in range(3))
    keep = None
    if padded:
        keep = torch.ones(B, T, dtype=torch.bool)
        keep[0, [2, 6]] = False
        keep[1, 5:] = False  # token 0 stays real, so no query row is fully masked
    spec = MaskSpec(
        mode, prefix=P if mode == "prefix" else 0, keep=None if keep is None else keep.to(dev)
    )
    out = attention(q.to(dev), k.to(dev), v.to(dev), spec, backend).cpu()
    assert out.shape == (B, T, H, Dh)
    ref = _reference(q, k, v, _allowed_by_hand(mode, T, P, keep, B))
    torch.testing.assert_close(
        out.double(), ref, atol=1e-5 if backend == "sdpa" else 2e-3, rtol=1e-4
    )
    # MaskSpec.dense agrees with the definition too
    dense = spec.dense(T, torch.device("cpu") if keep is None else dev)
    if dense is None:
        assert mode == "bidirectional" and keep is None
    else:
        expected = _allowed_by_hand(mode, T, P, keep, B)
        torch.testing.assert_close(dense.cpu().expand(B, 1, T, T)[:, 0], expected)


def _perturbed_outputs(
    backend: str, mask: str, prefix_len: int, t: int, keep=None, start_token: bool = True
):
    """Outputs (B, S, D) of a predictor for an input and for it with token t perturbed
    (S = T + 1 with a start token, T without)."""
    dev = _device(backend)
    cfg = PredictorConfig(
        dim=32,
        depth=2,
        heads=2,
        layerscale=None,
        attn=mask,
        prefix_len=prefix_len,
        attn_backend=backend,
        start_token=start_token,
    )
    torch.manual_seed(0)
    pred = Predictor(cfg, n_axes=2).eval()
    pred.set_backend(dev)
    grid = (3, 4)
    coords = torch.stack(
        torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij"), -1
    ).reshape(-1, 2)
    emb = torch.randn(2, 12, 32)
    emb2 = emb.clone()
    # Random noise, not a constant: LayerNorm would remove a constant shift.
    emb2[:, t] += torch.randn(2, 32)
    with torch.no_grad():
        a, b = (
            pred(e.to(dev), coords.to(dev), grid, None if keep is None else keep.to(dev)).cpu()
            for e in (emb, emb2)
        )
    assert a.shape == (2, 12 + int(start_token), 32)
    return a, b


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(S,) bool: output position changed (in either batch element) beyond round-off."""
    return (a - b).abs().amax(dim=(0, 2)) > 1e-4


def _unchanged(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().amax(dim=(0, 2)) <= 1e-6


def _token_of(start_token: bool) -> torch.Tensor:
    """(S,) the input token behind each output position; -1 for the start token."""
    return torch.arange(-int(start_token), 12)


START = pytest.mark.parametrize("start_token", [True, False], ids=["start", "nostart"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t", [0, 4, 11])
@START
def test_causal_outputs_before_t_ignore_token_t(backend: str, t: int, start_token: bool) -> None:
    """Output position j (0 = start token, j = i + 1 for token i; j = i without a start token)
    sees tokens up to its own only."""
    a, b = _perturbed_outputs(backend, "causal", 0, t, start_token=start_token)
    tok = _token_of(start_token)
    # the start token and tokens 0..t-1 are unchanged ...
    assert _unchanged(a, b)[tok < t].all(), (a - b).abs().amax(dim=(0, 2))
    # ... and token t itself and every later one change.
    assert _changed(a, b)[tok >= t].all(), (a - b).abs().amax(dim=(0, 2))


@pytest.mark.parametrize("backend", BACKENDS)
@START
def test_prefix_tokens_see_each_other(backend: str, start_token: bool) -> None:
    """prefix_len=3: the start token (if any) and tokens 0..2 attend bidirectionally; without
    a start token the prefix is those 3 tokens, not 4."""
    tok = _token_of(start_token)
    a, b = _perturbed_outputs(backend, "prefix", 3, t=1, start_token=start_token)  # in it
    assert _changed(a, b).all()  # every prefix position sees it, and so does everything after
    a, b = _perturbed_outputs(backend, "prefix", 3, t=6, start_token=start_token)  # causal
    assert _unchanged(a, b)[tok < 6].all()
    assert _changed(a, b)[tok >= 6].all()
    a, b = _perturbed_outputs(backend, "prefix", 3, t=3, start_token=start_token)  # just after
    assert _unchanged(a, b)[tok < 3].all()
    assert _changed(a, b)[tok >= 3].all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t", [0, 11])
@START
def test_bidirectional_every_output_sees_every_token(
    backend: str, t: int, start_token: bool
) -> None:
    a, b = _perturbed_outputs(backend, "bidirectional", 0, t, start_token=start_token)
    assert _changed(a, b).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
@START
def test_padding_tokens_are_invisible(backend: str, mask: str, start_token: bool) -> None:
    """A padded token (keep=False) changes no output but its own position's."""
    keep = torch.ones(2, 12, dtype=torch.bool)
    keep[:, 5] = False
    a, b = _perturbed_outputs(backend, mask, 0, t=5, keep=keep, start_token=start_token)
    own = _token_of(start_token) == 5
    assert _unchanged(a, b)[~own].all()
    assert _changed(a, b)[own].all()


def test_attn_override_at_call_time() -> None:
    """Evaluation may run a causal-trained predictor bidirectionally (attn argument)."""
    torch.manual_seed(0)
    pred = Predictor(PredictorConfig(dim=32, depth=1, heads=2, layerscale=None), n_axes=1).eval()
    emb, coords = torch.randn(1, 5, 32), torch.arange(5)[:, None]
    causal = pred(emb, coords, (5,))
    bidir = pred(emb, coords, (5,), attn="bidirectional")
    torch.testing.assert_close(causal[:, -1], bidir[:, -1])  # the last position sees all anyway
    assert not torch.allclose(causal[:, 0], bidir[:, 0])


# ------------------------------------------------------------------------------ dispatch


def test_resolve_backend_rules(caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    assert resolve_backend("sdpa", cpu).name == "sdpa"
    r = resolve_backend("auto", cpu)
    assert r.name == "sdpa" and "no kernels for cpu" in r.reason
    with pytest.raises(RuntimeError, match="no CPU kernels; use 'sdpa' or 'auto'"):
        resolve_backend("xformers", cpu)
    with pytest.raises(ValueError, match="valid: auto, xformers, sdpa"):
        resolve_backend("flash", cpu)  # type: ignore[arg-type]
    pred = Predictor(PredictorConfig(dim=32, depth=2, heads=2, attn_backend="auto"), n_axes=2)
    with caplog.at_level(logging.INFO, logger="nepa.predictor.transformer"):
        resolved = pred.set_backend(cpu)
    assert resolved.name == "sdpa" and pred.resolved is resolved
    assert all(m.backend == "sdpa" for m in pred.modules() if isinstance(m, Attention))
    assert "attention backend: sdpa (auto: xformers has no kernels for cpu)" in caplog.text


@pytest.mark.skipif(not HAS_XFORMERS_GPU, reason="backend equivalence needs CUDA and xformers")
@pytest.mark.parametrize("mode", ["causal", "bidirectional", "prefix"])
def test_xformers_equals_sdpa_outputs_and_gradients(mode: str) -> None:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    q, k, v = (torch.randn(2, 37, 3, 16, device=dev, requires_grad=True) for _ in range(3))
    keep = torch.ones(2, 37, dtype=torch.bool, device=dev)
    keep[1, 30:] = False
    results = []
    for backend in ("sdpa", "xformers"):
        for t in (q, k, v):
            t.grad = None
        spec = MaskSpec(mode, prefix=5 if mode == "prefix" else 0, keep=keep)
        out = attention(q, k, v, spec, backend)
        out.backward(torch.ones_like(out))
        results.append((out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)
