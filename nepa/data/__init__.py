"""Data sources: config -> dataset of dict samples. Importing registers the built-ins."""

from nepa.data import audio, images, sensors, uea, video  # noqa: F401  (registration)
from nepa.data.base import DATASETS, DataConfig, build_dataset
from nepa.data.shards import array as _array_shards  # noqa: F401  (registration)
from nepa.data.shards import audio as _audio_shards  # noqa: F401  (registration)
from nepa.data.shards import image as _image_shards  # noqa: F401  (registration)

__all__ = ["DATASETS", "DataConfig", "build_dataset"]
