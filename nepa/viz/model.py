"""Load a run for visualisation: an image model whose objective has an encoder and a predictor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nepa.config import ConfigError, RunConfig
from nepa.data.images import ImageDataConfig
from nepa.encoders.base import Encoder
from nepa.eval.load import load_run
from nepa.objectives.base import Objective
from nepa.predictor.transformer import Predictor
from nepa.train.checkpoint import CheckpointError


class VizError(ValueError):
    """A problem the user can fix (a path, an index, a layer, the kind of run): the CLI prints
    the message on one line and exits 2."""


@dataclass
class VizModel:
    """A run in eval mode, with the parts the pictures need."""

    cfg: RunConfig
    objective: Objective
    encoder: Encoder
    predictor: Predictor

    @property
    def depth(self) -> int:
        return len(self.predictor.blocks)

    def layer(self, layer: int | None) -> int:
        """The 1-based block to show: ``None`` -> the last; out of range -> VizError."""
        if layer is None:
            return self.depth
        if not 1 <= layer <= self.depth:
            raise VizError(f"layer {layer} is out of range: this run has layers 1..{self.depth}")
        return layer


def load_viz_model(run_dir: Path, *, random_init: bool = False) -> VizModel:
    """The run's trained weights (or its seeded random init) as a :class:`VizModel`; a run
    directory that cannot be loaded raises VizError saying why (nepa.eval.load's message)."""
    try:
        cfg, objective = load_run(Path(run_dir), random_init=random_init)
    except (ConfigError, FileNotFoundError, CheckpointError) as e:
        raise VizError(str(e)) from None
    return image_model(cfg, objective)


def image_model(cfg: RunConfig, objective: Objective) -> VizModel:
    """Check that the run is a 2-D image model with an encoder and a predictor; eval mode."""
    encoder = getattr(objective, "encoder", None)
    predictor = getattr(objective, "predictor", None)
    if not isinstance(encoder, Encoder) or not isinstance(predictor, Predictor):
        raise VizError(
            f"objective {cfg.objective.kind!r} has no `encoder` + `predictor` pair to visualise"
        )
    if not isinstance(cfg.data, ImageDataConfig) or encoder.n_axes != 2:
        raise VizError(
            "nepa viz draws 2-D image models only; this run has encoder "
            f"{cfg.encoder.kind!r} over {encoder.n_axes} grid axes and data {cfg.data.kind!r}"
        )
    objective.eval()  # also: no train-time RoPE coordinate rescaling
    return VizModel(cfg, objective, encoder, predictor)
