"""A USER's own file, outside the package: an objective with an EMA target reading two fields.

It registers
- a dataset kind ``user_two_views``: the MNIST digits shipped with nepa, each sample two seeded
  crops of one digit, ``{"image": (1, 28, 28), "view": (1, 28, 28), "label": ()}`` (at
  evaluation both fields hold the plain digit);
- an objective kind ``user_ema_views``: the encoder + predictor read ``image``; an EMA copy of
  them (never seen by the optimizer, updated in ``on_step_end`` with ``torch._foreach`` ops)
  reads ``view``; the loss is the negative cosine between the online predictor's mean-pooled
  outputs and the target's (BYOL-like, without a projector). Evaluation reads the online
  backbone through the unchanged CLI.
- a recipe ``tiny()``: ``nepa train tests/user_plugins/ema_views.py:tiny``.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch.utils.data import Dataset

from nepa.batch import FieldSpec, require_field
from nepa.config import EvalConfig, OptimConfig, RunConfig, TrainConfig
from nepa.data.base import DATASETS, DataConfig, build_dataset
from nepa.data.images import ImageNpzConfig
from nepa.encoders.image import ImageEncoderConfig
from nepa.objectives.backbone import TokenBackbone
from nepa.objectives.base import OBJECTIVES, Objective, ObjectiveConfig
from nepa.objectives.monitor import CollapseMonitor
from nepa.predictor.config import PredictorConfig

# ------------------------------------------------------------------------------ dataset


class TwoViewsConfig(DataConfig):
    kind: Literal["user_two_views"] = "user_two_views"
    limit_train: PositiveInt | None = 256
    limit_test: PositiveInt | None = 128

    def digits(self) -> ImageNpzConfig:
        return ImageNpzConfig(
            path="nepa:assets/demo/demo.npz",
            image_size=28,
            channels=1,
            hflip=False,
            crop_scale=(0.5, 1.0),
            mean=(0.1307,),
            std=(0.3081,),
            limit_train=self.limit_train,
            limit_test=self.limit_test,
        )

    @property
    def fields(self) -> dict[str, FieldSpec]:
        image = FieldSpec((1, 28, 28))
        return {"image": image, "view": image, "label": FieldSpec((), "int64")}

    def input_transform(self, normalization: dict):
        plain = self.digits().input_transform(normalization)
        return lambda img: {**(s := plain(img)), "view": s["image"]}


class TwoViews(Dataset):
    """``ds[(i, seed)]``: two crops of digit i seeded by (seed, seed + 1); ``ds[i]``: the digit."""

    def __init__(self, cfg: TwoViewsConfig, split: str, train: bool) -> None:
        self.digits = build_dataset(cfg.digits(), split=split, train=train)
        self.labels, self.num_classes = self.digits.labels, self.digits.num_classes
        self.normalization = self.digits.normalization

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            i, seed = key
            a, b = self.digits[(i, seed)], self.digits[(i, seed + 1)]
            return {"image": a["image"], "view": b["image"], "label": a["label"]}
        item = self.digits[key]
        return {**item, "view": item["image"]}


@DATASETS.register("user_two_views", config=TwoViewsConfig)
def build_two_views(cfg: TwoViewsConfig, *, split: str, train: bool) -> TwoViews:
    return TwoViews(cfg, split, train)


# ------------------------------------------------------------------------------ objective


class EmaViewsConfig(ObjectiveConfig):
    kind: Literal["user_ema_views"] = "user_ema_views"
    momentum: float = Field(0.99, ge=0, le=1)
    view_field: str = "view"

    def check_fields(self, fields: dict[str, FieldSpec]) -> None:
        require_field(fields, self.view_field, reader="objective 'user_ema_views'")


@OBJECTIVES.register("user_ema_views", config=EmaViewsConfig)
class EmaViews(Objective):
    def __init__(self, cfg: EmaViewsConfig, *, encoder, predictor) -> None:
        super().__init__()
        self.cfg, self.encoder, self.predictor = cfg, encoder, predictor
        self.target = TokenBackbone(copy.deepcopy(encoder), copy.deepcopy(predictor))
        self.target.requires_grad_(False)  # never seen by the optimizer
        self.collapse = CollapseMonitor(every=2, min_std_ratio=0.05, min_rank=1.5)

    def train(self, mode: bool = True) -> EmaViews:
        super().train(mode)
        self.target.eval()  # the target is always read in eval mode
        return self

    def forward(self, batch):
        online = self.backbone()(batch)
        p = online.layers[0].mean(1)  # (B, D)
        with torch.no_grad():
            target = self.target({"image": batch[self.cfg.view_field]})
            t = target.layers[0].mean(1)
        loss = -(F.normalize(p.float(), dim=-1) * F.normalize(t.float(), dim=-1)).sum(-1).mean()
        self.collapse.observe(online.layers[0])
        return loss, {"target_std": t.float().std(0).mean()}

    def on_step_end(self, step: int) -> None:
        m = self.cfg.momentum
        ema = [p for p in self.target.parameters()]
        live = [p.detach() for p in self.backbone().parameters()]
        torch._foreach_mul_(ema, m)
        torch._foreach_add_(ema, live, alpha=1 - m)

    def monitor(self, step: int) -> dict[str, float]:
        return self.collapse(step)

    def no_weight_decay(self) -> set[str]:
        return {f"predictor.{n}" for n in self.predictor.no_weight_decay()}

    def backbone(self) -> TokenBackbone:
        return TokenBackbone(self.encoder, self.predictor)


# ------------------------------------------------------------------------------ recipe


def tiny() -> RunConfig:
    """dim 32, depth 2, patch 7, 6 steps of batch 16 (checkpoint every 2)."""
    return RunConfig(
        name="ema-views-tiny",
        data=TwoViewsConfig(),
        encoder=ImageEncoderConfig(patch_size=7),
        predictor=PredictorConfig(dim=32, depth=2, heads=2, attn_backend="sdpa"),
        objective=EmaViewsConfig(),
        optim=OptimConfig(lr=3e-3, warmup=2),
        train=TrainConfig(
            steps=6, batch_size=16, precision="fp32", device="cpu", log_every=1, ckpt_every=2
        ),
        eval=EvalConfig(k=10, max_train=256, max_test=128, batch_size=128),
    )
