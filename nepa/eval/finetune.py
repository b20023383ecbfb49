"""Full fine-tuning as the NEPA reference recipe does it.

A copy of the objective's backbone becomes a classifier with **bidirectional** attention and
drop-path (neither needs new parameters): mean-pooled real tokens (the start token excluded) ->
LayerNorm -> zero-initialised Linear. The input embedding (``backbone.input_embedding()``: the
patch embedding; the start token is trained) is frozen. AdamW with layer-wise lr decay
(``linear``: scale rising linearly from 0.35 at the patch embedding to 1.0 at the head, which
the paper found better than ``fixed``: 0.65 per layer),
warm-up + cosine; RandAugment on the uint8 crop, then MixUp / CutMix (one chosen per batch)
with soft targets and label smoothing.

Label smoothing is applied once, whether or not the targets are mixed: ``F.cross_entropy(
logits, mixed_targets, label_smoothing=eps)`` (torchvision's reference recipe) equals timm's
``Mixup(label_smoothing=eps)`` + soft-target cross-entropy, because smoothing is affine and
mixing a convex combination.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from nepa.batch import LABEL, Batch, collate, to_device
from nepa.data.sampler import StepBatchSampler
from nepa.eval.attentive import warmup_cosine
from nepa.eval.features import loader, pool_tokens
from nepa.objectives.backbone import Backbone
from nepa.objectives.base import Objective
from nepa.params import decay_groups
from nepa.schema import Config


class FinetuneConfig(Config):
    """Defaults follow the reference's ViT-B recipe (scripts/finetune/nepa_b_sft.sh: 100 epochs,
    lr 1.5e-3 x batch/256, betas (0.9, 0.999), wd 0.05, warm-up 20% of steps) and the paper
    (drop-path 0.1, RandAugment 2/9, mixup 0.8, cutmix 1.0, label smoothing 0.1). The
    reference's EMA of the weights is not kept."""

    epochs: int = Field(100, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(7.5e-4, gt=0, description="peak lr at the head (1.5e-3 x batch/256)")
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: float = Field(
        0.2, ge=0, description="warm-up length: a fraction of steps (<1) or a step count (>=1)"
    )
    clip_grad: float | None = Field(1.0, gt=0, description="max global grad norm; null disables")
    layer_decay_mode: Literal["linear", "fixed"] = "linear"
    layer_decay: float = Field(0.65, gt=0, le=1, description="fixed: scale per layer")
    layer_decay_min: float = Field(0.35, gt=0, le=1, description="linear: scale at layer 0")
    drop_path: float = Field(0.1, ge=0, lt=1)
    mixup: float = Field(0.8, ge=0, description="MixUp alpha; 0 disables")
    cutmix: float = Field(1.0, ge=0, description="CutMix alpha; 0 disables")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    randaugment: tuple[int, int] | None = Field(
        (2, 9), description="RandAugment (num_ops, magnitude); null disables"
    )
    num_workers: int = Field(0, ge=0, description="data loader workers for the training split")
    mix_field: str = Field("image", description="the batch field MixUp / CutMix mix")

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.randaugment is not None and (self.randaugment[0] < 1 or self.randaugment[1] < 0):
            raise ValueError(
                f"randaugment must be (num_ops >= 1, magnitude >= 0) or null, got {self.randaugment}"
            )
        return self


class Classifier(nn.Module):
    """A batch -> (B, C) logits: the backbone (bidirectional) -> mean of its real tokens ->
    LayerNorm -> Linear (zero-initialised)."""

    def __init__(self, backbone: Backbone, num_classes: int, attn: str = "bidirectional") -> None:
        super().__init__()
        self.backbone, self.attn = backbone, attn
        self.fc_norm = nn.LayerNorm(backbone.dim)
        self.head = nn.Linear(backbone.dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: Batch) -> torch.Tensor:
        feats = self.backbone(batch, layers=[self.backbone.depth], attn=self.attn)
        return self.head(self.fc_norm(pool_tokens(feats.layers[0], feats, "mean")))

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def layer_groups(self) -> list[list[tuple[str, nn.Parameter]]]:
        """The backbone's groups (0: input embedding ... depth + 1: final norm), with the new
        norm and head joining the top group."""
        groups = [[(f"backbone.{n}", p) for n, p in g] for g in self.backbone.layer_groups()]
        groups[-1] += [
            (f"{m}.{n}", p)
            for m, module in (("fc_norm", self.fc_norm), ("head", self.head))
            for n, p in module.named_parameters()
        ]
        return groups


def layer_scale(layer: int, depth: int, cfg: FinetuneConfig) -> float:
    """lr multiplier of ``layer`` (0..depth+1); 1.0 at the head in both modes."""
    top = depth + 1
    if cfg.layer_decay_mode == "fixed":
        return cfg.layer_decay ** (top - layer)
    return cfg.layer_decay_min + (1.0 - cfg.layer_decay_min) * layer / top


def build_optimizer(model: Classifier, cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW with one group per (layer, decay or not); each group's ``lr`` is ``cfg.lr`` x its
    ``lr_scale``. Norms, biases and the backbone's ``no_weight_decay()`` (the start token) are
    not decayed; frozen parameters (the patch embedding) are left out."""
    groups = model.layer_groups()
    depth = len(groups) - 2
    layer_of = {name: i for i, g in enumerate(groups) for name, _ in g}
    params = [(n, p) for g in groups for n, p in g]
    param_groups = decay_groups(
        params,
        cfg.weight_decay,
        model.no_weight_decay(),
        lr_scale=lambda name: layer_scale(layer_of[name], depth, cfg),
    )
    for g in param_groups:
        g["lr"] = cfg.lr * g["lr_scale"]
        g["layer_id"] = layer_of[g["names"][0]]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas)


def finetune_classifier(objective: Objective, num_classes: int, cfg: FinetuneConfig) -> Classifier:
    """A copy of the objective's backbone (its weights, not shared) under a fresh pooled head,
    with drop-path and its input embedding frozen, as the reference does."""
    backbone = copy.deepcopy(objective.backbone())
    backbone.requires_grad_(True)  # a fresh network to train, even when it copies an EMA target
    backbone.set_drop_path(cfg.drop_path)
    for _, p in backbone.input_embedding():
        p.requires_grad_(False)
    return Classifier(backbone, num_classes)


def unwrap(split: Dataset) -> tuple[Dataset, list[int]]:
    """(underlying dataset, its indices) of a split that may be a (nested) Subset."""
    if isinstance(split, Subset):
        base, idx = unwrap(split.dataset)
        return base, [idx[i] for i in split.indices]
    return split, list(range(len(split)))


class TrainView(Dataset):
    """The items of an eval split with training augmentation: ``view[(i, aug_seed)]`` is item
    ``i`` of the split, crop/flip seeded by ``aug_seed``, then ``extra`` on the uint8 image."""

    def __init__(self, split: Dataset, extra: Callable[[torch.Tensor], torch.Tensor] | None):
        base, self.indices = unwrap(split)
        if hasattr(base, "augmented"):
            self.base = base.augmented(extra)
        elif extra is None:
            self.base = base  # any dataset takes (index, aug_seed) keys (nepa.data.base)
        else:
            raise TypeError(
                f"RandAugment needs an image dataset with uint8 images, got {type(base).__name__};"
                " set eval.finetune.randaugment=null"
            )
        self.labels = split.labels
        self.num_classes = split.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]) -> Batch:
        i, aug_seed = key
        return self.base[(self.indices[i], aug_seed)]


def train_view(split: Dataset, cfg: FinetuneConfig) -> TrainView:
    ra = None if cfg.randaugment is None else v2.RandAugment(*cfg.randaugment)
    return TrainView(split, ra)


def batch_mix(cfg: FinetuneConfig, num_classes: int) -> Callable | None:
    """MixUp or CutMix, one chosen at random per batch: (x, y (B,)) -> (x, soft y (B, C)),
    applied to the batch field ``cfg.mix_field``."""
    mixes = [
        m(alpha=a, num_classes=num_classes)
        for m, a in ((v2.MixUp, cfg.mixup), (v2.CutMix, cfg.cutmix))
        if a > 0
    ]
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def finetune(
    model: Classifier,
    split: Dataset,
    cfg: FinetuneConfig,
    *,
    device: torch.device,
    bf16: bool = False,
    seed: int = 0,
) -> dict:
    """Train ``model`` (already on ``device``) for ``cfg.epochs`` epochs over ``split``."""
    torch.manual_seed(seed)  # RandAugment, MixUp / CutMix and drop-path draw from it
    view = train_view(split, cfg)
    sampler = StepBatchSampler(len(view), cfg.batch_size, seed=seed)
    steps = cfg.epochs * sampler.steps_per_epoch
    loader = DataLoader(
        view,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )
    opt = build_optimizer(model, cfg)
    sched = warmup_cosine(opt, steps, cfg.warmup)
    mix = batch_mix(cfg, view.num_classes)
    model.train()
    losses = []
    for step, batch in zip(range(steps), loader, strict=False):
        batch = to_device(batch, device)
        y = batch.pop(LABEL)
        if mix is not None:
            if cfg.mix_field not in batch:
                raise ValueError(
                    f"eval.finetune.mix_field={cfg.mix_field!r} is not a field of the batch "
                    f"({', '.join(batch)}); name the input field, or set eval.finetune.mixup=0 "
                    "and eval.finetune.cutmix=0"
                )
            batch[cfg.mix_field], y = mix(batch[cfg.mix_field], y)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            logits = model(batch)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        sched.step()
        losses.append(loss.item())
    tail = losses[-sampler.steps_per_epoch :]
    return {"steps": steps, "last_epoch_loss": sum(tail) / len(tail)}


@torch.no_grad()
def classify_top1(
    model: Classifier, dataset: Dataset, *, device: torch.device, batch_size: int, bf16: bool
) -> float:
    """Top-1 accuracy on ``dataset`` (its eval transform, no augmentation)."""
    model.eval()
    correct = 0
    for batch in loader(dataset, batch_size):
        y = batch.pop(LABEL)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            pred = model(to_device(batch, device)).argmax(-1).cpu()
        correct += int((pred == y).sum())
    return correct / len(dataset)
