"""CIFAR-10 recipes (32x32). Data: ``${NEPA_DATA_DIR}/cifar10-png.tar.gz`` (ImageFolder layout).

nepa train recipes/cifar10.py:tiny --set train.steps=2000

``shards`` streams WebDataset shards instead; write them once, then train on one process or
several::

    nepa shards write ${NEPA_DATA_DIR}/cifar10-png.tar.gz shards/cifar10 --split train
    nepa shards write ${NEPA_DATA_DIR}/cifar10-png.tar.gz shards/cifar10 --split test
    nepa train recipes/cifar10.py:shards
    torchrun --nproc_per_node 2 -m nepa.cli train recipes/cifar10.py:shards
    nepa train recipes/cifar10.py:shards --set 'data.source=pipe:curl -sf http://host/cifar10/{name}'
"""

from nepa import RunConfig
from nepa.config import EvalConfig, OptimConfig, TrainConfig
from nepa.data.images import ImageFolderConfig
from nepa.data.shards.image import ImageShardsConfig
from nepa.encoders.image import ImageEncoderConfig
from nepa.objectives.jepa import JepaConfig
from nepa.objectives.nepa import NepaConfig
from nepa.objectives.token import TokenConfig
from nepa.predictor.config import PredictorConfig

CIFAR10 = ImageFolderConfig(
    root="${NEPA_DATA_DIR}/cifar10-png.tar.gz",
    image_size=32,
    channels=3,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)


def tiny() -> RunConfig:
    """ViT-Tiny-like predictor (dim 192, depth 6, 3 heads) at patch 4: 64 tokens per image."""
    return RunConfig(
        name="cifar10-tiny",
        data=CIFAR10,
        encoder=ImageEncoderConfig(patch_size=4, scan="raster"),
        predictor=PredictorConfig(dim=192, depth=6, heads=3),
        objective=NepaConfig(),
        optim=OptimConfig(lr=1.5e-3, warmup=0.05),
        train=TrainConfig(
            steps=2000,
            batch_size=128,
        ),
        eval=EvalConfig(max_train=10000, max_test=2000),
    )


def small() -> RunConfig:
    """ViT-S-sized predictor (dim 384, depth 12, 6 heads), for a GPU."""
    cfg = tiny()
    return cfg.model_validate(
        {
            **cfg.model_dump(),
            "name": "cifar10-small",
            "predictor": PredictorConfig(dim=384, depth=12, heads=6).model_dump(),
            "train": TrainConfig(
                steps=20000,
                batch_size=512,
            ).model_dump(),
        }
    )


def nepa_tiny() -> RunConfig:
    """A small, fast model for comparisons on a CPU budget (``nepa compare``; docs/results.md):
    dim 128, depth 4, 4 heads at patch 4, 500 steps of batch 128 (about 5 minutes on 2 cores).
    Evaluation: kNN and linear probe on 10,000 train / 2,000 test images."""
    cfg = tiny()
    return cfg.model_validate(
        {
            **cfg.model_dump(),
            "name": "cifar10-nepa-tiny",
            "predictor": PredictorConfig(dim=128, depth=4, heads=4).model_dump(),
            "train": TrainConfig(steps=500, batch_size=128, log_every=10).model_dump(),
        }
    )


def vit_s2() -> RunConfig:
    """The GPU-scale recipe: ViT-S/2 (dim 384, depth 12, 6 heads, patch 2: 256 tokens) for 300
    epochs of batch 512 (29,300 steps), bf16 on CUDA, reading shards written by
    ``nepa shards write``. lr 3e-4 x 512/256 as the reference scales it."""
    cfg = shards()
    return cfg.model_validate(
        {
            **cfg.model_dump(),
            "name": "cifar10-vit-s2",
            "encoder": {**cfg.encoder.model_dump(), "patch_size": 2},
            "predictor": PredictorConfig(dim=384, depth=12, heads=6).model_dump(),
            "optim": OptimConfig(lr=6e-4, warmup=0.025).model_dump(),
            "train": TrainConfig(
                steps=29300, batch_size=512, num_workers=8, ckpt_every=2000, log_every=50
            ).model_dump(),
            "eval": EvalConfig(max_train=None, max_test=None).model_dump(),
        }
    )


def hilbert() -> RunConfig:
    """The tiny recipe reading patches along a generalized Hilbert curve."""
    cfg = tiny()
    return cfg.model_validate(
        {
            **cfg.model_dump(),
            "name": "cifar10-tiny-hilbert",
            "encoder": {**cfg.encoder.model_dump(), "scan": "hilbert"},
        }
    )


def shards() -> RunConfig:
    """The tiny recipe streaming shards written by ``nepa shards write`` (exact epochs; one
    loader worker per process, which keeps 2 CPU cores for the model; see benchmarks/)."""
    cfg = tiny()
    data = ImageShardsConfig(
        source="shards/cifar10",
        image_size=32,
        channels=3,
        mean=CIFAR10.mean,
        std=CIFAR10.std,
        shuffle_buffer=2000,
    )
    return cfg.model_validate(
        {
            **cfg.model_dump(),
            "name": "cifar10-tiny-shards",
            "data": data.model_dump(),
            "train": {**cfg.train.model_dump(), "num_workers": 1},
        }
    )


def jepa_tiny() -> RunConfig:
    """I-JEPA at the size of ``nepa_tiny`` (dim 128, depth 4, patch 4: an 8 x 8 grid): a
    bidirectional context encoder, an EMA target encoder (momentum 0.996 -> 1), a narrow
    predictor (dim 64, depth 4) and I-JEPA's masks (4 targets of 15-20%, a context block of
    85-100% minus them, at least 10 context tokens); features from the target encoder."""
    cfg = nepa_tiny().model_dump()
    cfg["name"] = "cifar10-jepa-tiny"
    cfg["predictor"].update(attn="bidirectional", start_token=False)
    cfg["objective"] = JepaConfig(predictor_depth=4, predictor_dim=64).model_dump()
    cfg["eval"]["attn"] = None
    return RunConfig.model_validate(cfg)


def token_tiny() -> RunConfig:
    """The discrete next-token baseline at the size of ``nepa_tiny``: a k-means codebook of
    1,024 codes over the normalised 4 x 4 patches (fitted on 5,000 training images at the start
    of the run, or ``--set objective.tokenizer=FILE`` from ``nepa tokenizer fit``), the same
    causal predictor and scan, an embedding table in and a linear head out, cross-entropy."""
    cfg = nepa_tiny().model_dump()
    cfg["name"] = "cifar10-token-tiny"
    cfg["objective"] = TokenConfig(codes=1024, fit_samples=5000).model_dump()
    return RunConfig.model_validate(cfg)
