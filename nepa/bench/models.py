"""The models a step benchmark compares, built at one size, and their FLOP count.

Variants (all see ``T + 1`` positions: a learned start / class token, then the T tokens):

- ``timm``: timm's ``VisionTransformer`` blocks and final norm, ``init_values=None`` (no
  LayerScale), GeLU MLP, called with ``is_causal=True`` so its fused SDPA path applies the mask.
- ``matched``: the nepa predictor shaped like it: no RoPE, no QK-norm, GeLU, no LayerScale.
- ``full``: the NEPA block: 2-D RoPE, QK-norm, SwiGLU, LayerScale 1e-5.
- ``full-xformers``: ``full`` with the xformers attention backend (CUDA only).
- ``matched-torch``, ``full-torch``: with SDPA's kernel left to torch's dispatch
  (``predictor.sdpa_kernel=default``), as before the kernel was chosen by measurement: the
  same process times the choice against torch's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nepa.encoders.scans import scan_coords
from nepa.predictor import Predictor, PredictorConfig

MATCHED = {"rope": False, "qk_norm": False, "mlp": "gelu", "layerscale": None}
FULL = {"rope": True, "qk_norm": True, "mlp": "swiglu", "layerscale": 1e-5}
PREDICTOR_VARIANTS = {
    "matched": {**MATCHED, "attn_backend": "sdpa"},
    "full": {**FULL, "attn_backend": "sdpa"},
    "full-xformers": {**FULL, "attn_backend": "xformers"},
    "matched-torch": {**MATCHED, "attn_backend": "sdpa", "sdpa_kernel": "default"},
    "full-torch": {**FULL, "attn_backend": "sdpa", "sdpa_kernel": "default"},
}
VARIANTS = ["timm", *PREDICTOR_VARIANTS]

FLOP_FORMULA = (
    "FLOPs per step = 6 * P_matmul * B * S + 12 * depth * B * S^2 * dim, S = T + 1 positions, "
    "P_matmul = weights of all nn.Linear layers; attention counted in full (the causal mask's "
    "skipped half is not subtracted), for every model alike"
)


@dataclass(frozen=True)
class Shape:
    """Transformer width/depth and the number of input tokens T (the start token is extra)."""

    dim: int
    depth: int
    heads: int
    tokens: int

    @property
    def seq(self) -> int:
        return self.tokens + 1

    @property
    def grid(self) -> tuple[int, ...]:
        """A square 2-D grid when T is a square number (as for images), else a 1-D one."""
        side = math.isqrt(self.tokens)
        return (side, side) if side * side == self.tokens else (self.tokens,)


class TimmCausal(nn.Module):
    """timm's ViT without patch/position embedding or head: its class token in front of
    pre-embedded tokens, its blocks with ``is_causal=True``, its final norm. Called like the
    predictor: ``(emb (B, T, D), coords, grid) -> (B, T + 1, D)``."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        vit = VisionTransformer(
            embed_dim=shape.dim,
            depth=shape.depth,
            num_heads=shape.heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            init_values=None,
            class_token=True,
            global_pool="",
            num_classes=0,
        )
        self.cls_token, self.blocks, self.norm = vit.cls_token, vit.blocks, vit.norm
        slow = [i for i, blk in enumerate(self.blocks) if not blk.attn.fused_attn]
        if slow:  # the explicit softmax path is slower than SDPA: the comparison would be unfair
            raise RuntimeError(
                f"timm blocks {slow} do not use fused attention (SDPA); unset TIMM_FUSED_ATTN"
            )

    def forward(self, emb_BTD: torch.Tensor, coords_TA: torch.Tensor, grid: tuple[int, ...]):
        cls = self.cls_token.expand(emb_BTD.shape[0], -1, -1).to(emb_BTD.dtype)
        x = torch.cat([cls, emb_BTD], dim=1)
        for blk in self.blocks:
            x = blk(x, is_causal=True)
        return self.norm(x)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}


def build_model(variant: str, shape: Shape, device: torch.device, seed: int = 0) -> nn.Module:
    """One benchmark model on ``device``, seeded so every run starts from the same weights."""
    torch.manual_seed(seed)
    if variant == "timm":
        return TimmCausal(shape).to(device)
    if variant not in PREDICTOR_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    cfg = PredictorConfig(
        dim=shape.dim, depth=shape.depth, heads=shape.heads, **PREDICTOR_VARIANTS[variant]
    )
    model = Predictor(cfg, n_axes=len(shape.grid)).to(device)
    model.set_backend(device)
    return model


def bench_inputs(shape: Shape, batch: int, device: torch.device, seed: int = 0):
    """Pre-embedded tokens (B, T, D) and their raster grid coordinates (T, A)."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, shape.tokens, shape.dim, generator=gen).to(device)
    coords = torch.from_numpy(scan_coords("raster", shape.grid)).to(device)
    return emb, coords


def matmul_params(model: nn.Module) -> int:
    """Weights that take part in matmuls: every nn.Linear weight (no biases, norms, tokens)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def step_flops(params: int, shape: Shape, batch: int) -> float:
    """Model FLOPs of one training step (forward + backward); see FLOP_FORMULA."""
    S = shape.seq
    return 6.0 * params * batch * S + 12.0 * shape.depth * batch * S**2 * shape.dim


class _OpNames(TorchDispatchMode):
    """Records the name of every ATen / custom op that reaches the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def attention_kernels(model: nn.Module, shape: Shape, device: torch.device) -> list[str]:
    """Names of the attention ops one short forward runs (evidence of which kernel is used)."""
    grid = tuple(min(g, 4) for g in shape.grid)  # same number of axes, few tokens
    emb = torch.randn(1, math.prod(grid), shape.dim, device=device)
    coords = torch.from_numpy(scan_coords("raster", grid)).to(device)
    with torch.no_grad(), _OpNames() as ops:
        model(emb, coords, grid)
    return sorted(
        n for n in ops.names if any(w in n.lower() for w in ("attention", "fmha", "xformers"))
    )
