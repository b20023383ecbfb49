"""UCI HAPT recipes (6-channel 50 Hz smartphone signals, UCI HAR protocol windows).

Data: ``${NEPA_DATA_DIR}/hapt.npz``. ``nepa train recipes/hapt.py:tiny``; compare the readings of
the channel-independent grid with
``nepa compare recipes/hapt.py:independent --vary encoder.scan=raster,column --seeds 3``.
"""

from nepa import RunConfig
from nepa.config import EvalConfig, OptimConfig, TrainConfig
from nepa.data.sensors import HaptConfig
from nepa.data.uea import UeaConfig
from nepa.encoders.sensor import SensorEncoderConfig
from nepa.objectives.nepa import NepaConfig
from nepa.predictor.config import PredictorConfig


def tiny() -> RunConfig:
    """Channel-mixing patches (16 steps every 8: 15 tokens per 2.56 s window), dim 64, depth 4;
    a few minutes on 2 CPU cores."""
    return RunConfig(
        name="hapt-tiny",
        data=HaptConfig(jitter=0.05),
        encoder=SensorEncoderConfig(patch=16, stride=8, channels="mixing"),
        predictor=PredictorConfig(dim=64, depth=4, heads=4),
        objective=NepaConfig(),
        optim=OptimConfig(lr=1e-3, warmup=0.05),
        train=TrainConfig(steps=600, batch_size=64, log_every=20, ckpt_every=200),
        eval=EvalConfig(pool="mean"),
    )


def independent() -> RunConfig:
    """Channel-independent tokens (6 channels x 8 patches of 16 = 48 tokens, grid (channel,
    time));
    ``encoder.scan=raster`` reads channel-major, ``column`` time-major."""
    cfg = tiny().model_dump()
    cfg["name"] = "hapt-independent"
    cfg["encoder"].update(channels="independent", patch=16, stride=16, scan="raster")
    return RunConfig.model_validate(cfg)


def basic_motions() -> RunConfig:
    """UEA BasicMotions (6 channels, 100 steps at 10 Hz, 4 activities; 40 train / 40 test
    series, shipped inside sktime's wheel): patches of 20 every 10 steps (9 tokens); tiny by
    design, the set is 40 series."""
    return RunConfig(
        name="basic-motions",
        data=UeaConfig(name="BasicMotions", jitter=0.05),
        encoder=SensorEncoderConfig(patch=20, stride=10, channels="mixing"),
        predictor=PredictorConfig(dim=64, depth=4, heads=4),
        objective=NepaConfig(),
        optim=OptimConfig(lr=1e-3, warmup=0.05),
        train=TrainConfig(steps=300, batch_size=32, log_every=20, ckpt_every=100),
        eval=EvalConfig(pool="mean"),
    )
