"""One attention entry point, backends resolved once at build time.

Layout everywhere: q, k, v are ``(B, T, H, Dh)`` (xformers' layout); the SDPA adapter
transposes. Masks are described by :class:`MaskSpec` so each adapter builds what its kernel
wants (SDPA: ``is_causal`` or a boolean mask; xformers: ``LowerTriangularMask`` or a bias).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from nepa.predictor.sdpa_kernels import pick, run_sdpa

log = logging.getLogger(__name__)

Backend = Literal["auto", "xformers", "sdpa"]
MaskMode = Literal["causal", "bidirectional", "prefix"]


@dataclass(frozen=True)
class MaskSpec:
    """Which keys each query may see.

    mode:   causal | bidirectional | prefix (the first ``prefix`` tokens see each other, the
            rest is causal).
    prefix: number of leading tokens in the bidirectional prefix (prefix mode only).
    keep:   optional (B, T) bool, False for padding keys.
    see_self: with ``keep``, every query may still see its own key, padding or not. A query
            whose keys are all padding (e.g. a padded first token under causal attention with
            no start token) would otherwise softmax over nothing to NaN, and 0 * NaN in the next
            layer's ``probs @ v`` would spread it to real tokens. Real queries never see a
            padding key either way.
    """

    mode: MaskMode
    prefix: int = 0
    keep: torch.Tensor | None = None
    see_self: bool = False

    def dense(self, T: int, device: torch.device) -> torch.Tensor | None:
        """(B or 1, 1, T, T) bool, True = may attend; None when no mask is needed."""
        allowed = None
        if self.mode != "bidirectional":
            allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            if self.mode == "prefix":
                allowed[: self.prefix, : self.prefix] = True
            allowed = allowed[None, None]
        if self.keep is not None:
            k = self.keep[:, None, None, :]  # (B, 1, 1, T)
            if self.see_self:
                k = k | torch.eye(T, dtype=torch.bool, device=device)  # (B, 1, T, T)
            allowed = k if allowed is None else allowed & k
        return allowed


@dataclass(frozen=True)
class ResolvedBackend:
    name: Literal["xformers", "sdpa"]
    reason: str


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_backend(requested: Backend, device: torch.device) -> ResolvedBackend:
    """Pick the kernel once. An explicit request that cannot be served raises."""
    if requested == "sdpa":
        return ResolvedBackend("sdpa", "requested")
    has_x = xformers_available()
    if requested == "xformers":
        if device.type != "cuda":
            raise RuntimeError(
                f"attention backend 'xformers' was requested on {device.type}, but xformers has "
                "no CPU kernels; use 'sdpa' or 'auto'"
            )
        if not has_x:
            raise RuntimeError(
                "attention backend 'xformers' was requested but xformers is not installed"
            )
        return ResolvedBackend("xformers", "requested")
    if requested != "auto":
        raise ValueError(f"unknown attention backend {requested!r}; valid: auto, xformers, sdpa")
    if device.type != "cuda":
        return ResolvedBackend("sdpa", f"auto: xformers has no kernels for {device.type}")
    if not has_x:
        return ResolvedBackend("sdpa", "auto: xformers is not installed")
    return ResolvedBackend("xformers", "auto: CUDA device and xformers installed")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: MaskSpec,
    backend: str,
    dropout_p: float = 0.0,
    kernel: str = "default",
) -> torch.Tensor:
    """Scaled dot-product attention. q, k, v: (B, T, H, Dh) -> (B, T, H, Dh). ``kernel``: which
    of SDPA's equivalent formulations runs (see :mod:`nepa.predictor.sdpa_kernels`)."""
    if backend == "xformers":
        return _xformers(q, k, v, mask, dropout_p)
    return _sdpa(q, k, v, mask, dropout_p, kernel)


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: MaskSpec) -> torch.Tensor:
    """The probabilities every backend applies to v, explicitly (for inspection, not training):
    ``softmax(q k^T / sqrt(Dh))`` with disallowed keys at exactly 0. q, k: (B, T, H, Dh) ->
    (B, H, T, T) fp32."""
    q, k = (t.transpose(1, 2).float() for t in (q, k))  # (B, H, T, Dh)
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, H, T, T)
    allowed = mask.dense(q.shape[2], q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-1)


def _sdpa(q, k, v, mask: MaskSpec, dropout_p: float, kernel: str) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
    T = q.shape[2]
    if mask.mode == "causal" and mask.keep is None:
        kw = {"is_causal": True}
    else:
        kw = {"attn_mask": mask.dense(T, q.device)}
    kind = mask.mode + ("+keep" if mask.keep is not None else "")
    kernel = pick(kernel, q, k, v, kind, **kw)
    return run_sdpa(kernel, q, k, v, dropout_p=dropout_p, **kw).transpose(1, 2)


def _xformers(q, k, v, mask: MaskSpec, dropout_p: float) -> torch.Tensor:
    import xformers.ops as xops

    T = q.shape[1]
    if mask.mode == "causal" and mask.keep is None:
        bias = xops.LowerTriangularMask()
    elif mask.mode == "bidirectional" and mask.keep is None:
        bias = None
    else:
        allowed = mask.dense(T, q.device).expand(q.shape[0], q.shape[2], T, T)
        # xformers wants an additive bias whose last dim is 8-aligned in memory: pad, then slice.
        pad = (-T) % 8
        bias = torch.zeros(q.shape[0], q.shape[2], T, T + pad, dtype=q.dtype, device=q.device)[
            ..., :T
        ]
        bias.masked_fill_(~allowed, float("-inf"))
    return xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout_p)
