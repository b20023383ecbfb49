"""Load a run and embed your own data in a few lines::

    import nepa

    run = nepa.load_run("runs/c10")                       # config, weights, normalisation
    batch = run.collate([run.transform(img) for img in my_images])
    feats = run.embed(batch)                              # (B, F): the run's eval.layer/pool
    feats = run.embed(batch, layer=-1, pool="mean")       # any block and pooling

The transform is the run's own evaluation transform, with the normalisation stored in the run
directory (``meta.json``), so no dataset or cache is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nepa.batch import Batch, collate, to_device
from nepa.config import RunConfig
from nepa.device import pick_device
from nepa.eval.features import pool_features
from nepa.eval.load import load_run as _load_objective
from nepa.eval.run import resolve_layer
from nepa.objectives.backbone import Backbone, Features
from nepa.objectives.base import Objective
from nepa.train.build import place
from nepa.train.rundir import read_meta


@dataclass
class Run:
    """A trained (or random-init) run, ready to embed data."""

    path: Path
    cfg: RunConfig
    objective: Objective
    device: torch.device
    meta: dict

    @property
    def backbone(self) -> Backbone:
        return self.objective.backbone()

    @property
    def transform(self) -> Callable[[Any], Batch]:
        """One raw input (for images: a uint8 (C, H, W) tensor, (H, W, C) array or PIL image)
        -> a sample dict, as evaluation prepares it."""
        return self.cfg.data.input_transform(self.meta.get("data_normalization") or {})

    @staticmethod
    def collate(samples: Iterable[Mapping[str, torch.Tensor]]) -> Batch:
        return collate(list(samples))

    @torch.inference_mode()
    def features(
        self, batch: Batch, *, layers: list[int] | None = None, attn: str | None = None
    ) -> Features:
        """The backbone's :class:`Features` for ``batch`` (layers 1-based or negative)."""
        depth = self.backbone.depth
        wanted = [resolve_layer(l, depth) for l in (layers or [self.cfg.eval.layer])]
        attn = attn or self.cfg.eval.attn
        return self.objective.features(to_device(batch, self.device), layers=wanted, attn=attn)

    def embed(
        self,
        batch: Batch,
        *,
        layer: int | None = None,
        pool: str | None = None,
        attn: str | None = None,
    ) -> torch.Tensor:
        """(B, F) features of ``batch``: block ``layer`` (default ``eval.layer``), pooled by
        ``pool`` (default ``eval.pool``; mean, last, start, grid2, grid4), over real tokens."""
        layer = self.cfg.eval.layer if layer is None else layer
        feats = self.features(batch, layers=[layer], attn=attn)
        return pool_features(feats, 0, pool or self.cfg.eval.pool).float()


def load_run(run_dir: str | Path, *, random_init: bool = False, device: str = "cpu") -> Run:
    """The run in ``run_dir`` (its final weights, else its latest checkpoint) in eval mode on
    ``device``; ``random_init`` gives the same architecture untrained."""
    path = Path(run_dir)
    cfg, objective = _load_objective(path, random_init=random_init)
    dev = pick_device(device)
    place(objective, dev)
    objective.eval()
    return Run(path, cfg, objective, dev, read_meta(path))
