"""Encoders (one modality's batch -> Tokens) and scan orders. Importing registers the built-ins."""

from nepa.encoders import audio, image, scans, sensor, video  # noqa: F401  (registration)
from nepa.encoders.base import ENCODERS, Encoder, EncoderConfig, build_encoder
from nepa.encoders.scans import SCANS, scan_order

__all__ = ["ENCODERS", "SCANS", "Encoder", "EncoderConfig", "build_encoder", "scan_order"]
