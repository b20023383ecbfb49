"""MNIST recipes (28x28 grayscale). Data: ``${NEPA_DATA_DIR}/mnist.npz``.

nepa train recipes/mnist.py:tiny
"""

from nepa import RunConfig
from nepa.config import EvalConfig, OptimConfig, TrainConfig
from nepa.data.images import ImageNpzConfig
from nepa.encoders.image import ImageEncoderConfig
from nepa.objectives.nepa import NepaConfig
from nepa.predictor.config import PredictorConfig

MNIST = ImageNpzConfig(path="${NEPA_DATA_DIR}/mnist.npz", image_size=28, channels=1, hflip=False)


def tiny() -> RunConfig:
    """dim 128, depth 4, patch 4 (7x7 = 49 tokens)."""
    return RunConfig(
        name="mnist-tiny",
        data=MNIST,
        encoder=ImageEncoderConfig(patch_size=4, scan="raster"),
        predictor=PredictorConfig(dim=128, depth=4, heads=4),
        objective=NepaConfig(),
        optim=OptimConfig(lr=1.5e-3, warmup=0.05),
        train=TrainConfig(
            steps=1000,
            batch_size=128,
        ),
        eval=EvalConfig(max_train=10000, max_test=2000),
    )
