"""Moving MNIST recipes (two MNIST digits bouncing in 64 x 64 frames, 20 frames per clip).

Data: generated on the fly from ``${NEPA_DATA_DIR}/mnist.npz`` (train digits for the train
split, test digits for test). ``nepa train recipes/moving_mnist.py:tiny``; evaluation labels are
the unordered pair of digits (55 classes, ``data.label=pair``) or the first digit's direction of
motion (8 classes, ``data.label=direction``). Compare time-major readings with
``nepa compare recipes/moving_mnist.py:tiny --vary encoder.scan=raster,snake,hilbert,random``.
"""

from nepa import RunConfig
from nepa.config import EvalConfig, OptimConfig, TrainConfig
from nepa.data.shards.array import ArrayShardsConfig
from nepa.data.video import MovingMnistConfig
from nepa.encoders.video import VideoEncoderConfig
from nepa.objectives.nepa import NepaConfig
from nepa.predictor.config import PredictorConfig


def tiny() -> RunConfig:
    """Tubelets of 4 frames x 16 x 16 pixels: a (5, 4, 4) grid of 80 tokens read time-major,
    3-D RoPE; dim 64, depth 4; a few minutes on 2 CPU cores."""
    return RunConfig(
        name="moving-mnist-tiny",
        data=MovingMnistConfig(train_videos=10000, test_videos=2000),
        encoder=VideoEncoderConfig(tubelet=(4, 16, 16), scan="raster"),
        predictor=PredictorConfig(dim=64, depth=4, heads=4),
        objective=NepaConfig(),
        optim=OptimConfig(lr=1e-3, warmup=0.05),
        train=TrainConfig(steps=600, batch_size=32, log_every=20, ckpt_every=200),
        eval=EvalConfig(pool="mean"),
    )


def small() -> RunConfig:
    """VideoMAE / V-JEPA's 2 x 16 x 16 tubelets at this size: a (10, 4, 4) grid of 160 tokens;
    dim 128, depth 6."""
    cfg = tiny().model_dump()
    cfg["name"] = "moving-mnist-small"
    cfg["encoder"]["tubelet"] = (2, 16, 16)
    cfg["predictor"].update(dim=128, depth=6, heads=4)
    cfg["train"].update(steps=2000)
    return RunConfig.model_validate(cfg)


def shards() -> RunConfig:
    """``tiny`` streamed from shards (write them first, into ``shards/moving-mnist``):
    ``nepa shards write ${NEPA_DATA_DIR}/mnist.npz shards/moving-mnist --kind moving_mnist
    --split train`` (and ``--split test``). Pixels 0-255, normalised by the train statistics
    of ``tiny`` (mean 0.0476, std 0.1966 of pixels / 255)."""
    cfg = tiny().model_dump()
    cfg["name"] = "moving-mnist-shards"
    cfg["data"] = ArrayShardsConfig(
        source="shards/moving-mnist",
        shape=(20, 64, 64),
        view=(1, 20, 64, 64),
        field="video",
        mean=(0.0476 * 255,),
        std=(0.1966 * 255,),
    ).model_dump()
    return RunConfig.model_validate(cfg)
