"""Load a run for visualisation: an image model whose objective has an encoder and a predictor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nepa.config import ConfigError, RunConfig
from nepa.data.images import ImageDataConfig
from nepa.encoders.base import Encoder
from nepa.eval.load import WEIGHTS, load_run
from nepa.objectives.base import Objective
from nepa.predictor.transformer import Predictor
from nepa.train.checkpoint import list_checkpoints


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
    """The run's trained weights (or its seeded random init) as a :class:`VizModel`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VizError(f"run directory not found: {run_dir}")
    has_weights = (run_dir / WEIGHTS).is_file() or list_checkpoints(run_dir / "checkpoints")
    if not random_init and not has_weights:
        raise VizError(
            f"{run_dir} has no weights ({WEIGHTS} or checkpoints/step_*.pt): train it first, "
            "or pass --random-init to see the untrained architecture"
        )
    try:
        cfg, objective = load_run(run_dir, random_init=random_init)
    except (ConfigError, FileNotFoundError) as e:
        raise VizError(str(e)) from e
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
