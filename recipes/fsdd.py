"""Free Spoken Digit Dataset recipes (3,000 recordings of 10 digits by 6 speakers, 8 kHz).

Data: ``${NEPA_DATA_DIR}/fsdd-recordings.tar.gz``, resampled to 16 kHz, 128-bin log-mel fbank.
``nepa train recipes/fsdd.py:tiny``; ``:speakers`` holds out a speaker instead of the official
split (recordings 0-4 of every digit and speaker are the official test set).
"""

from nepa import RunConfig
from nepa.config import EvalConfig, OptimConfig, TrainConfig
from nepa.data.audio import AudioFolderConfig
from nepa.data.shards.audio import AudioShardsConfig
from nepa.encoders.audio import SpectrogramEncoderConfig
from nepa.objectives.nepa import NepaConfig
from nepa.predictor.config import PredictorConfig


def tiny() -> RunConfig:
    """0.96 s crops, 16 x 16 patches on a (6 time, 8 freq) grid read time-major; dim 64,
    depth 4; a few minutes on 2 CPU cores."""
    return RunConfig(
        name="fsdd-tiny",
        data=AudioFolderConfig(target_frames=96),
        encoder=SpectrogramEncoderConfig(patch_time=16, patch_freq=16, scan="raster"),
        predictor=PredictorConfig(dim=64, depth=4, heads=4),
        objective=NepaConfig(),
        optim=OptimConfig(lr=1e-3, warmup=0.05),
        train=TrainConfig(steps=600, batch_size=64, log_every=20, ckpt_every=200),
        eval=EvalConfig(pool="mean"),
    )


def speakers() -> RunConfig:
    """``tiny`` on the speaker-held-out split (speaker ``theo`` is the test set)."""
    cfg = tiny().model_dump()
    cfg["name"] = "fsdd-speakers"
    cfg["data"]["split_by"] = "speaker"
    return RunConfig.model_validate(cfg)


def shards() -> RunConfig:
    """``tiny`` streamed from shards, the front end running in the loader workers. Write them
    first: ``nepa shards write ${NEPA_DATA_DIR}/fsdd-recordings.tar.gz shards/fsdd --split
    train`` (and ``--split test``); the fbank statistics come from their manifest."""
    cfg = tiny().model_dump()
    cfg["name"] = "fsdd-shards"
    cfg["data"] = AudioShardsConfig(source="shards/fsdd", target_frames=96).model_dump()
    cfg["train"]["num_workers"] = 2
    return RunConfig.model_validate(cfg)
