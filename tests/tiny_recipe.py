"""A tiny recipe on the MNIST subset shipped inside the package, for end-to-end tests.

Importable as a module (``from tiny_recipe import tiny``, tests/ is on sys.path) and usable by
path from the command line (``nepa train tests/tiny_recipe.py:tiny``), also under torchrun.
"""

from __future__ import annotations

from pathlib import Path

from nepa.config import EvalConfig, OptimConfig, RunConfig, TrainConfig, apply_overrides
from nepa.data.images import ImageNpzConfig
from nepa.encoders.image import ImageEncoderConfig
from nepa.objectives.nepa import NepaConfig
from nepa.predictor.config import PredictorConfig

DEMO = "nepa:assets/demo/demo.npz"
TESTS = Path(__file__).resolve().parent
TINY_RECIPE = f"{TESTS / 'tiny_recipe.py'}:tiny"  # by path, as a user would pass it


def tiny() -> RunConfig:
    """dim 32, depth 2, patch 7 (4x4 = 16 tokens), 6 steps of batch 16 on 256 demo digits.

    mean/std are given so no statistics cache is read or written.
    """
    return RunConfig(
        name="tiny",
        seed=0,
        data=ImageNpzConfig(
            path=DEMO,
            image_size=28,
            channels=1,
            hflip=False,
            crop_scale=(0.6, 1.0),
            mean=(0.1307,),
            std=(0.3081,),
            limit_train=256,
            limit_test=128,
        ),
        encoder=ImageEncoderConfig(patch_size=7, scan="raster"),
        predictor=PredictorConfig(dim=32, depth=2, heads=2, attn_backend="sdpa"),
        objective=NepaConfig(monitor_every=2),
        optim=OptimConfig(lr=3e-3, warmup=2, min_lr_ratio=0.1),
        train=TrainConfig(
            steps=6,
            batch_size=16,
            precision="fp32",
            device="cpu",
            log_every=1,
            ckpt_every=100,
            keep_ckpts=2,
        ),
        eval=EvalConfig(k=10, max_train=256, max_test=128, batch_size=128),
    )


def tiny_with(*overrides: str) -> RunConfig:
    """``tiny()`` with ``--set``-style overrides, re-validated."""
    return apply_overrides(tiny(), list(overrides))


def jepa_tiny() -> RunConfig:
    """``tiny()`` trained by JEPA: bidirectional context encoder without a start token, a
    narrow predictor of depth 1 and width 16, at least 4 context tokens of the 16."""
    return apply_overrides(
        tiny(),
        [
            "predictor.attn=bidirectional",
            "predictor.start_token=false",
            'objective={"kind": "jepa", "predictor_depth": 1, "predictor_dim": 16, '
            '"min_keep": 4, "monitor_every": 2}',
        ],
    )


def token_tiny() -> RunConfig:
    """``tiny()`` trained on discrete codes: a 32-code k-means codebook of the 7 x 7 patches,
    fitted on 64 training digits at the start of the run."""
    return apply_overrides(
        tiny(),
        [
            'objective={"kind": "token", "codes": 32, "fit_samples": 64, "kmeans_iters": 5, '
            '"monitor_every": 2}',
        ],
    )
