"""Named builders: config -> modules. Shared by training, evaluation and benchmarks."""

from __future__ import annotations

import logging
from functools import partial

import torch

from nepa.config import RunConfig
from nepa.data.base import sample_batches
from nepa.encoders.base import build_encoder
from nepa.objectives.base import OBJECTIVES, Objective
from nepa.predictor.attention import ResolvedBackend
from nepa.predictor.transformer import Predictor

log = logging.getLogger(__name__)


def build_objective(cfg: RunConfig) -> Objective:
    """Encoder -> predictor -> objective, on the CPU, with seeded initialisation."""
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.encoder, dim=cfg.predictor.dim, fields=cfg.data.fields)
    predictor = Predictor(cfg.predictor, n_axes=encoder.n_axes)
    return OBJECTIVES.get(cfg.objective.kind)(cfg.objective, encoder=encoder, predictor=predictor)


def initialized_objective(cfg: RunConfig) -> Objective:
    """The objective as a fresh run has it before its first step: built, then fitted to data
    (``Objective.fit``: the token baseline's codebook). What evaluation "at random init" means."""
    objective = build_objective(cfg)
    objective.fit(partial(sample_batches, cfg.data))
    return objective


def place(objective: Objective, device: torch.device) -> ResolvedBackend:
    """Move to ``device`` and resolve every predictor's attention backend for it, once."""
    objective.to(device)
    resolved = ResolvedBackend("sdpa", "no predictor")
    for m in objective.modules():
        if isinstance(m, Predictor):
            resolved = m.set_backend(device)
    return resolved


def native_cpu_bf16() -> bool:
    """True when PyTorch's oneDNN check says this CPU runs bf16 matmul natively."""
    return torch.backends.mkldnn.is_available() and bool(
        getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    )


def eval_precision(requested: str, device: torch.device) -> tuple[bool, str]:
    """-> (extract features under bf16 autocast, reason). ``auto`` is bf16 wherever the device
    multiplies bf16 natively: inference has no backward casts, and extraction measured 2.1x faster
    in bf16 than fp32 on a 2-core AVX512-BF16 CPU (``nepa bench extract``, benchmarks/README.md)."""
    if requested != "auto":
        return resolve_precision(requested, device)
    if device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16()):
        return True, f"auto: native bf16 on {device.type}"
    return False, f"auto: no native bf16 on {device.type}"


def resolve_precision(requested: str, device: torch.device) -> tuple[bool, str]:
    """-> (use bf16 autocast, reason). Resolved once per run and logged.

    ``auto`` is bf16 autocast on CUDA and fp32 on every CPU: even with native bf16 matmul (AMX),
    the demo model's training step measured 1.43x slower in bf16 than in fp32 on a 2-core CPU."""
    if requested == "fp32":
        return False, "requested"
    if requested == "bf16":
        if device.type == "cpu" and not native_cpu_bf16():
            log.warning(
                "bf16 requested on a CPU without native bf16 matmul: expect it to be much slower than fp32"
            )
        return True, "requested"
    if device.type == "cuda":
        return True, "auto: CUDA"
    if native_cpu_bf16():
        return False, (
            "auto: fp32 on CPU; this CPU has native bf16, where a bf16 step measured about 2x "
            "faster (`nepa bench step` compares them): set train.precision=bf16 for speed"
        )
    return False, "auto: fp32 on a CPU without native bf16 (bf16 would be emulated and slower)"
