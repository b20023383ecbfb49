"""Which of torch's equivalent SDPA formulations runs on the CPU: measured, not assumed.

The same attention can run three ways, equal up to rounding:

- ``default``: torch's own dispatch (on the CPU its flash kernel);
- ``math``: torch's unfused kernel (``q k^T``, softmax, ``@ v`` as separate ops);
- ``fp32``: bf16 inputs attended in fp32 by the default kernel, the output cast back.

Which is fastest depends on the machine, the shape, the dtype and whether a backward follows.
Measured on a 2-core EPYC with native bf16 (``nepa bench step`` shows the effect on whole
steps): at 65 positions in bf16, forward + backward took 82 ms with the flash kernel, 56 ms
with ``math`` and 32 ms with flash in fp32; at 257 positions flash was the fastest of all. So
for a training step ``auto`` times the candidates on the first call of each call signature
(shape, dtype, mask) and keeps the first of ``default``, ``fp32``, ``math`` (in that order)
within :data:`KEEP_WITHIN` of the fastest, as ``torch.backends.cudnn.benchmark`` does on GPUs:
a choice that timing noise could flip between runs would change results at rounding level for
a few percent of speed. A forward alone (feature extraction) keeps ``default``: there the
candidates measured within a few milliseconds of each other at 50-65 positions, the choice
flipped between runs, and with it the demo's kNN (75.55% or 75.65%). Attentions too small to
matter (< :data:`TUNE_MIN_FLOPS`) and CUDA devices keep ``default``; so does
``torch.use_deterministic_algorithms(True)`` (``train.deterministic``). Two fresh runs can
still choose differently where two candidates sit near the margin; set
``predictor.sdpa_kernel`` to a kernel for bitwise-equal fresh runs.

FLOP counts (``nepa.train.flops``) count what runs: for ``default`` and ``fp32`` torch's SDPA
formula, whose backward includes the flash kernel's recomputation of the scores; for ``math``
its matmuls, one fewer in the backward (at 65 positions, 14% fewer attention FLOPs, about 2%
of a step's).

The choices live in one process-wide table: the trainer saves it in every checkpoint and puts
it back on resume, so a resumed run uses the kernels the interrupted one used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import _disable_current_modes

log = logging.getLogger(__name__)

KERNELS = ("default", "fp32", "math")  # also the order of preference among near-equals
TUNE_MIN_FLOPS = 1e8  # 4 * B * H * T^2 * Dh; below it the choice saves well under a millisecond
TUNE_ROUNDS = 3
KEEP_WITHIN = 1.25  # candidates this close to the fastest count as equal

_chosen: dict[str, str] = {}


def run_sdpa(kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on (B, H, T, Dh) inputs through ``kernel``."""
    if kernel == "math":
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, **kw)
    if kernel == "fp32" and q.dtype != torch.float32:
        with torch.autocast(q.device.type, enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw)
        return out.to(q.dtype)
    if kernel not in KERNELS:
        raise ValueError(f"unknown SDPA kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    return F.scaled_dot_product_attention(q, k, v, **kw)


def signature(q: torch.Tensor, mask_kind: str) -> str:
    """The key a training call's choice is kept under, e.g.
    ``128x3x65x64/bfloat16/fwd+bwd/causal``."""
    shape = "x".join(map(str, q.shape))
    dtype = str(q.dtype).removeprefix("torch.")
    return f"{shape}/{dtype}/fwd+bwd/{mask_kind}"


def pick(
    requested: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_kind: str, **kw
) -> str:
    """The kernel to run for this call: ``requested`` unless it is ``auto``; then the table's
    choice for the call's signature, measured on first sight. q, k, v: (B, H, T, Dh)."""
    if requested != "auto":
        return requested
    B, H, T, Dh = q.shape
    if (
        q.device.type != "cpu"
        or 4 * B * H * T * T * Dh < TUNE_MIN_FLOPS
        or torch.are_deterministic_algorithms_enabled()
        or torch.compiler.is_compiling()
    ):
        return "default"
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
        return "default"  # a forward alone: see the module's docstring
    key = signature(q, mask_kind)
    if key not in _chosen:
        _chosen[key] = _tune(key, q, k, v, kw)
    return _chosen[key]


def _tune(key: str, q, k, v, kw: dict) -> str:
    kw = {**kw, "dropout_p": 0.0}  # timing must not draw from the RNG the run's dropout uses
    candidates = [c for c in KERNELS if c != "fp32" or q.dtype != torch.float32]
    # Outside any dispatch mode: a FLOP counter around the step must not count the trials.
    with _disable_current_modes():
        seconds = {c: _seconds(_step(c, q, k, v, kw)) for c in candidates}
    fastest = min(seconds.values())
    best = next(c for c in candidates if seconds[c] <= KEEP_WITHIN * fastest)
    times = ", ".join(f"{c} {1000 * s:.2f} ms" for c, s in seconds.items())
    log.info("sdpa kernel for %s: %s (%s)", key, best, times)
    return best


def _step(kernel: str, q, k, v, kw: dict) -> Callable[[], None]:
    """Forward and backward of ``kernel`` on detached copies of q, k, v."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def step() -> None:
        out = run_sdpa(kernel, *leaves, **kw)
        out.backward(torch.ones_like(out))

    return step


def _seconds(fn: Callable[[], None]) -> float:
    fn()  # warm-up: first calls allocate
    best = float("inf")
    for _ in range(TUNE_ROUNDS):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def tuned_kernels() -> dict[str, str]:
    """The choices ``auto`` has made in this process, by signature (saved with checkpoints)."""
    return dict(_chosen)


def restore_kernels(choices: dict[str, str]) -> None:
    """Put back choices saved by :func:`tuned_kernels` (a resumed run keeps its kernels)."""
    bad = {k: v for k, v in choices.items() if v not in KERNELS}
    if bad:
        raise ValueError(f"unknown SDPA kernels {bad}; valid: {', '.join(KERNELS)}")
    _chosen.update(choices)


def forget_kernels() -> None:
    """Empty the table (the next ``auto`` call of each signature measures again)."""
    _chosen.clear()
