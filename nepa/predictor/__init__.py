"""The predictor: one transformer over any modality's tokens."""

from nepa.predictor.attention import MaskSpec, attention, resolve_backend
from nepa.predictor.config import PredictorConfig
from nepa.predictor.transformer import Predictor

__all__ = ["MaskSpec", "Predictor", "PredictorConfig", "attention", "resolve_backend"]
