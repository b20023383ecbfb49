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
from nepa.objectives.jepa import JepaConfig
from nepa.objectives.nepa import NepaConfig
from nepa.objectives.token import TokenConfig
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


def jepa_tiny() -> RunConfig:
    """JEPA at the size of ``tiny``: I-JEPA's 2-D blocks on each clip's real (time, frequency)
    patches, 4 targets of 15-20% of them and the rest of a context block of 85-100%, at least 4
    context patches (a clip has about 17 real patches of the 48: 2 of 6 in time); narrow
    predictor dim 32, depth 4; features from the EMA target encoder. Time spans over every
    frequency leave a 2-step clip no context, hence blocks."""
    cfg = tiny().model_dump()
    cfg["name"] = "fsdd-jepa-tiny"
    cfg["predictor"].update(attn="bidirectional", start_token=False)
    cfg["objective"] = JepaConfig(
        masks="blocks", min_keep=4, predictor_depth=4, predictor_dim=32
    ).model_dump()
    return RunConfig.model_validate(cfg)


def token_tiny() -> RunConfig:
    """The discrete next-token baseline at the size of ``tiny``: 1,024 k-means codes of the
    16 x 16 fbank patches, fitted on 2,000 training clips at the start of the run."""
    cfg = tiny().model_dump()
    cfg["name"] = "fsdd-token-tiny"
    cfg["objective"] = TokenConfig(codes=1024, fit_samples=2000).model_dump()
    return RunConfig.model_validate(cfg)
