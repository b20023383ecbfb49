"""Load a run for visualisation: a 2-D image model, read through its objective's backbone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nepa.batch import Batch, placeholder_batch
from nepa.config import ConfigError, RunConfig
from nepa.data.images import ImageDataConfig
from nepa.eval.load import load_run
from nepa.objectives.backbone import Backbone
from nepa.objectives.base import Objective
from nepa.train.checkpoint import CheckpointError
from nepa.train.rundir import RunDirError


class VizError(ValueError):
    """A problem the user can fix (a path, an index, a layer, the kind of run): the CLI prints
    the message on one line and exits 2."""


@dataclass
class VizModel:
    """A run in eval mode, with the backbone the pictures read and its token grid."""

    cfg: RunConfig
    objective: Objective
    backbone: Backbone
    grid: tuple[int, ...]

    @property
    def depth(self) -> int:
        return self.backbone.depth

    def layer(self, layer: int | None) -> int:
        """The 1-based block to show: ``None`` -> the last; out of range -> VizError."""
        if layer is None:
            return self.depth
        if not 1 <= layer <= self.depth:
            raise VizError(f"layer {layer} is out of range: this run has layers 1..{self.depth}")
        return layer

    def batch(self, x_CHW: torch.Tensor) -> Batch:
        """One image as a batch of one."""
        return {"image": x_CHW[None]}


def load_viz_model(run_dir: Path, *, random_init: bool = False) -> VizModel:
    """The run's trained weights (or its seeded random init) as a :class:`VizModel`; a run
    directory that cannot be loaded raises VizError saying why (nepa.eval.load's message)."""
    try:
        cfg, objective = load_run(Path(run_dir), random_init=random_init)
    except (ConfigError, FileNotFoundError, CheckpointError, RunDirError) as e:
        raise VizError(str(e)) from None
    return image_model(cfg, objective)


def image_model(cfg: RunConfig, objective: Objective) -> VizModel:
    """Check that the run is a 2-D image model with a backbone; eval mode."""
    try:
        backbone = objective.backbone()
    except NotImplementedError as e:
        raise VizError(str(e)) from None
    objective.eval()  # also: no train-time RoPE coordinate rescaling
    grid = ()
    if isinstance(cfg.data, ImageDataConfig):
        with torch.no_grad():
            grid = backbone(placeholder_batch(cfg.data.fields, 1), layers=[1]).grid
    if len(grid) != 2:
        raise VizError(
            "nepa viz draws 2-D image models only; this run has encoder "
            f"{cfg.encoder.kind!r} over {len(grid) or 'unknown'} grid axes and data "
            f"{cfg.data.kind!r}"
        )
    return VizModel(cfg, objective, backbone, grid)
