"""The offline demo's recipe: MNIST digits shipped inside the package (nepa/assets/demo)."""

from __future__ import annotations

from nepa.config import EvalConfig, OptimConfig, RunConfig, TrainConfig
from nepa.data.images import ImageNpzConfig
from nepa.encoders.image import ImageEncoderConfig
from nepa.objectives.nepa import NepaConfig
from nepa.predictor.config import PredictorConfig

DEMO_DATA = "nepa:assets/demo/demo.npz"


def demo() -> RunConfig:
    return RunConfig(
        name="demo",
        data=ImageNpzConfig(
            path=DEMO_DATA, image_size=28, channels=1, hflip=False, crop_scale=(0.5, 1.0)
        ),
        encoder=ImageEncoderConfig(patch_size=4, scan="raster"),
        predictor=PredictorConfig(dim=128, depth=4, heads=4, layerscale=None),
        objective=NepaConfig(monitor_every=50),
        optim=OptimConfig(lr=2e-3, warmup=0.05),
        train=TrainConfig(steps=400, batch_size=64, precision="auto", log_every=10, ckpt_every=100),
        eval=EvalConfig(max_train=5000, max_test=2000),
    )
