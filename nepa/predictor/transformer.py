"""The predictor: one pre-norm transformer over any modality's tokens.

Input is the encoder's ``(B, T, D)`` embeddings plus their grid coordinates (``(T, A)`` shared
by the batch, or ``(B, T, A)`` per sample); by default a learned start token is put in front, so
the output is ``(B, T + 1, D)`` after the final norm (``(B, T, D)`` with
``predictor.start_token=false``). Position enters only through N-D RoPE on q/k.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from nepa.predictor.attention import (
    MaskSpec,
    ResolvedBackend,
    attention,
    attention_weights,
    resolve_backend,
)
from nepa.predictor.config import PredictorConfig
from nepa.predictor.rope import RotaryND, apply_rotary, normalized_coords

log = logging.getLogger(__name__)


class DropPath(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    @property
    def active(self) -> bool:
        return self.p > 0.0 and self.training


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` of a residual branch. A block folds it into the branch's last
    linear layer (:func:`scaled_linear`) instead of calling this module."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def scaled_linear(
    linear: nn.Linear, x: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``linear(x) * scale`` computed as ``x @ (scale * W).T + scale * b``: the scale touches
    the (out, in) weights instead of the (B, T, out) activations, so LayerScale costs no
    activation-sized pass forward or backward and its input is not kept for gamma's gradient.
    ``scale``: (out,) or None (plain ``linear(x)``)."""
    if scale is None:
        return linear(x)
    bias = None if linear.bias is None else linear.bias * scale
    return F.linear(x, linear.weight * scale[:, None], bias)


class Attention(nn.Module):
    def __init__(self, cfg: PredictorConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)
        self.q_norm = nn.LayerNorm(cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.backend = "sdpa"  # set by Predictor.set_backend
        self.kernel = cfg.sdpa_kernel

    def forward(
        self,
        x_BTD: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: MaskSpec,
        out_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); ``out_scale`` (D,) scales the output (LayerScale, folded
        into the projection by :func:`scaled_linear`)."""
        B, T, D = x_BTD.shape
        out = attention(*self.heads_qkv(x_BTD, rope), mask, self.backend, kernel=self.kernel)
        return scaled_linear(self.proj, out.reshape(B, T, D), out_scale)

    def heads_qkv(
        self, x_BTD: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as the kernel sees them, each (B, T, H, Dh): q/k normed and rotated."""
        B, T, _ = x_BTD.shape
        q, k, v = self.qkv(x_BTD).view(B, T, 3, self.heads, self.head_dim).unbind(2)  # (B,T,H,Dh)
        q, k = _norm_in_dtype(self.q_norm, q), _norm_in_dtype(self.k_norm, k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        # Kernels that do not autocast (xformers) want one dtype; a no-op when they agree.
        return q.to(v.dtype), k.to(v.dtype), v

    def weights(
        self, x_BTD: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, mask: MaskSpec
    ) -> torch.Tensor:
        """The attention probabilities this layer's kernel applies to v: (B, H, T, T), fp32."""
        q, k, _ = self.heads_qkv(x_BTD, rope)
        return attention_weights(q, k, mask)


def _norm_in_dtype(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """QK-norm in x's dtype. Under autocast a LayerNorm returns fp32: q and k (bf16 outputs of
    the qkv matmul) would be copied up, normed, rotated in fp32 and copied down again. Normed in
    bf16 (torch accumulates the statistics in fp32) and rotated against bf16 tables (see
    ``Predictor.rope_tables``), the bf16 step of the full block measured 9% faster on the CPU.
    fp32 is unchanged."""
    if isinstance(norm, nn.LayerNorm) and x.dtype != torch.float32:
        with torch.autocast(x.device.type, enabled=False):
            w, b = (None if p is None else p.to(x.dtype) for p in (norm.weight, norm.bias))
            return F.layer_norm(x, norm.normalized_shape, w, b, norm.eps)
    return norm(x)


class Mlp(nn.Module):
    def __init__(self, cfg: PredictorConfig) -> None:
        super().__init__()
        self.gated = cfg.mlp == "swiglu"
        hidden = cfg.hidden_dim
        self.fc1 = nn.Linear(cfg.dim, 2 * hidden if self.gated else hidden)
        self.fc2 = nn.Linear(hidden, cfg.dim)

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None) -> torch.Tensor:
        """(..., D) -> (..., D); ``out_scale`` (D,) as in :meth:`Attention.forward`."""
        h = self.fc1(x)
        return scaled_linear(self.fc2, _SwiGLU.apply(h) if self.gated else F.gelu(h), out_scale)


class _SwiGLU(torch.autograd.Function):
    """``silu(g) * a`` with ``a, g = h.chunk(2, -1)``. Autograd's chunk would return two half
    gradients and concatenate them; this backward writes both halves of one buffer instead."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        a, g = h.chunk(2, dim=-1)
        s = F.silu(g)
        ctx.save_for_backward(h, s)
        return s * a

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        h, s = ctx.saved_tensors
        a, g = h.chunk(2, dim=-1)
        grad_h = torch.empty(
            h.shape, dtype=torch.promote_types(grad.dtype, h.dtype), device=h.device
        )
        grad_a, grad_g = grad_h.chunk(2, dim=-1)
        torch.mul(grad, s, out=grad_a)
        torch.ops.aten.silu_backward.grad_input(grad * a, g, grad_input=grad_g)
        return grad_h


class Block(nn.Module):
    def __init__(self, cfg: PredictorConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = Mlp(cfg)
        ls = (lambda: LayerScale(cfg.dim, cfg.layerscale)) if cfg.layerscale else nn.Identity
        self.ls1, self.ls2 = ls(), ls()
        self.drop_path = DropPath(drop_path)

    def forward(self, x, rope, mask: MaskSpec) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), rope, mask, _gamma(self.ls1)))
        return x + self.drop_path(self.mlp(self.norm2(x), _gamma(self.ls2)))


def _gamma(ls: nn.Module) -> torch.Tensor | None:
    return ls.gamma if isinstance(ls, LayerScale) else None


class Predictor(nn.Module):
    """Causal (or bidirectional / prefix) transformer, by default with a learned start token.

    forward(emb (B,T,D), coords (T,A) or (B,T,A), grid, keep (B,T) | None) -> (B, S, D),
    final-normed, with S = T + 1 (start token at index 0) or S = T when ``cfg.start_token`` is
    off.
    """

    start_token: nn.Parameter | None

    def __init__(self, cfg: PredictorConfig, n_axes: int) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.start_token:
            self.start_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        else:  # the attribute exists (None), but no parameter or state-dict key does
            self.register_parameter("start_token", None)
        dpr = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(Block(cfg, p) for p in dpr)
        self.norm = nn.LayerNorm(cfg.dim)
        self.rope = (
            RotaryND(cfg.head_dim, n_axes, cfg.rope_theta, cfg.rope_rescale) if cfg.rope else None
        )
        self.resolved: ResolvedBackend = ResolvedBackend("sdpa", "default before set_backend")
        self._init_weights()

    def _init_weights(self) -> None:
        if self.start_token is not None:
            nn.init.normal_(self.start_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def has_start_token(self) -> bool:
        """Whether outputs (and attention maps) carry a start token at index 0."""
        return self.start_token is not None

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)

    @property
    def dim(self) -> int:
        """Width D of inputs and outputs."""
        return self.cfg.dim

    @property
    def heads(self) -> int:
        """Attention heads per block."""
        return self.cfg.heads

    def no_weight_decay(self) -> set[str]:
        return {"start_token"} if self.has_start_token else set()

    def set_step_seed(self, seed: int) -> None:
        """Fix this optimizer step's RoPE coordinate rescale from ``seed`` (see
        :meth:`RotaryND.set_step_seed`); a no-op without RoPE or without ``rope_rescale``."""
        if self.rope is not None:
            self.rope.set_step_seed(seed)

    def set_drop_path(self, rate: float) -> None:
        """Re-set block i's drop-path probability to ``linspace(0, rate, depth)[i]``, as a fresh
        build with ``drop_path=rate`` would (e.g. to fine-tune a copy with stochastic depth);
        ``cfg`` is updated to match."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {rate}")
        dpr = torch.linspace(0, rate, self.depth).tolist()
        for blk, p in zip(self.blocks, dpr, strict=True):
            blk.drop_path.p = p
        self.cfg = self.cfg.model_copy(update={"drop_path": rate})

    def set_backend(self, device: torch.device) -> ResolvedBackend:
        """Resolve the attention backend once for ``device`` and log why."""
        self.resolved = resolve_backend(self.cfg.attn_backend, device)
        for m in self.modules():
            if isinstance(m, Attention):
                m.backend = self.resolved.name
        log.info("attention backend: %s (%s)", self.resolved.name, self.resolved.reason)
        return self.resolved

    def mask_spec(self, keep_BT: torch.Tensor | None, mode: str | None = None) -> MaskSpec:
        """The mask over the S positions :meth:`forward` attends over (start token first when
        there is one). ``keep_BT``: (B, T) bool, True = real token."""
        n_start = int(self.has_start_token)
        if keep_BT is not None and n_start:  # the start token is always real
            keep_BT = F.pad(keep_BT, (1, 0), value=True)
        # With a start token every query sees at least that real key; without one a query
        # may have only padding keys, so let each query see itself (see MaskSpec.see_self).
        return MaskSpec(
            mode or self.cfg.attn,
            n_start + self.cfg.prefix_len,
            keep_BT,
            see_self=not n_start,
        )

    def rope_tables(
        self, coords_TA: torch.Tensor, grid: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos, sin for every position and head: (S, H, Dh) from shared coords (T, A), or
        (B, S, H, Dh) from per-sample coords (B, T, A); None without RoPE.

        The tables are written out over the heads once per forward: rotating (B, S, H, Dh)
        against tables broadcast over H in the middle measured 2.3x slower on the CPU than
        against (S, H, Dh) ones (benchmarks/README.md), and every block reuses them."""
        if self.rope is None:
            return None
        cos, sin = self.rope.tables(normalized_coords(coords_TA, grid))  # (..., T, 1, Dh)
        if self.has_start_token:  # the start token gets angle 0 (an identity rotation)
            cos = F.pad(cos, (0, 0, 0, 0, 1, 0), value=1.0)
            sin = F.pad(sin, (0, 0, 0, 0, 1, 0), value=0.0)
        shape = (*cos.shape[:-2], self.heads, cos.shape[-1])
        cos, sin = cos.expand(shape).contiguous(), sin.expand(shape).contiguous()
        device = cos.device.type
        if torch.is_autocast_enabled(device):  # q and k are in autocast's dtype: rotate in it
            dtype = torch.get_autocast_dtype(device)
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin

    def forward(
        self,
        emb_BTD: torch.Tensor,
        coords_TA: torch.Tensor,
        grid: tuple[int, ...],
        keep_BT: torch.Tensor | None = None,
        attn: str | None = None,
        return_layers: list[int] | None = None,
    ):
        """Returns (B, S, D) final-normed outputs (S = T + 1 with the start token at index 0,
        or S = T without one), or with ``return_layers`` a list of the final-normed outputs
        after each requested block (1-based; ``depth`` = the last). ``coords_TA`` is (T, A)
        shared by the batch or (B, T, A) per sample."""
        self._check_coords(emb_BTD, coords_TA, grid)
        x = self._with_start(emb_BTD)
        rope = self.rope_tables(coords_TA, grid)
        mask = self.mask_spec(keep_BT, attn)
        wanted = set(return_layers or [])
        last = max(wanted) if return_layers else len(self.blocks)  # blocks after it are not run
        outs = {}
        for i, blk in enumerate(self.blocks[:last], start=1):
            x = blk(x, rope, mask)
            if i in wanted:
                outs[i] = self.norm(x)
        if return_layers is not None:
            return [outs[i] for i in return_layers]
        return self.norm(x)

    def attention_maps(
        self,
        emb_BTD: torch.Tensor,
        coords_TA: torch.Tensor,
        grid: tuple[int, ...],
        keep_BT: torch.Tensor | None = None,
        *,
        layer: int,
        attn: str | None = None,
    ) -> torch.Tensor:
        """Attention probabilities of block ``layer`` (1-based), per head: (B, H, S, S), with
        S = T + 1 (index 0 on both axes is the start token) or S = T without a start token.

        The other positions are tokens in the order given (scan order). Recomputed from the
        block's own q/k path (QK-norm, RoPE) with the same mask as :meth:`forward`, so
        ``weights @ v`` is what the kernel computes. ``coords_TA``: (T, A) or (B, T, A).
        """
        if not 1 <= layer <= len(self.blocks):
            raise ValueError(
                f"layer {layer} is out of range: this predictor has blocks 1..{len(self.blocks)}"
            )
        self._check_coords(emb_BTD, coords_TA, grid)
        x = self._with_start(emb_BTD)
        rope = self.rope_tables(coords_TA, grid)
        mask = self.mask_spec(keep_BT, attn)
        for blk in self.blocks[: layer - 1]:
            x = blk(x, rope, mask)
        blk = self.blocks[layer - 1]
        return blk.attn.weights(blk.norm1(x), rope, mask)

    def _check_coords(
        self, emb_BTD: torch.Tensor, coords: torch.Tensor, grid: tuple[int, ...]
    ) -> None:
        """Shape checks only (no device sync): a wrong layout could otherwise broadcast."""
        B, T, _ = emb_BTD.shape
        A = len(grid)
        if coords.shape not in ((T, A), (B, T, A)):
            raise ValueError(
                f"coords must be (T={T}, A={A}) shared by the batch or (B={B}, T={T}, A={A}) "
                f"per sample, got {tuple(coords.shape)}"
            )
        if self.rope is not None and self.rope.n_axes != A:
            raise ValueError(
                f"this predictor's RoPE was built for {self.rope.n_axes} grid axes, got a "
                f"{A}-axis grid {grid}"
            )

    def _with_start(self, emb_BTD: torch.Tensor) -> torch.Tensor:
        """[s, z_1..z_T]: (B, T+1, D); the embeddings themselves (B, T, D) without a start
        token. In the parameters' dtype: the residual stream stays fp32 under autocast (only
        the branches compute in bf16), so LayerScale's small updates (init 1e-5) are not
        rounded away by bf16's 8-bit mantissa when an encoder hands over bf16 embeddings."""
        dtype = self.norm.weight.dtype
        if self.start_token is None:
            return emb_BTD.to(dtype)
        start = self.start_token.expand(emb_BTD.shape[0], -1, -1).to(dtype)
        return torch.cat([start, emb_BTD.to(dtype)], dim=1)
