"""Full fine-tuning: layer-wise lr decay with the intended factors, a frozen patch embedding,
a zero-initialised head, bidirectional attention and drop-path, RandAugment on the uint8 crop,
label smoothing applied once to mixed targets, a model that learns, seeded determinism, and
``nepa eval finetune`` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nepa.cli import main
from nepa.data.base import build_dataset
from nepa.eval.features import eval_subset
from nepa.eval.finetune import (
    FinetuneConfig,
    TrainView,
    batch_mix,
    build_optimizer,
    finetune,
    finetune_classifier,
)
from nepa.eval.run import eval_splits, finetune_eval
from nepa.train.build import build_objective

NO_AUG = [
    "eval.finetune.mixup=0",
    "eval.finetune.cutmix=0",
    "eval.finetune.randaugment=null",
    "eval.finetune.label_smoothing=0",
]


def _model(cfg, num_classes: int = 10):
    objective = build_objective(cfg)
    return objective, finetune_classifier(objective, num_classes, cfg.eval.finetune)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("fixed", [0.65**3, 0.65**2, 0.65, 1.0]),
        ("linear", [0.35, 0.35 + 0.65 / 3, 0.35 + 0.65 * 2 / 3, 1.0]),
    ],
)
def test_layer_decay_groups(tiny_cfg, mode: str, expected: list[float]) -> None:
    cfg = tiny_cfg(f"eval.finetune.layer_decay_mode={mode}", "eval.finetune.lr=1e-3")
    _, model = _model(cfg)  # depth 2: layers 0 (embedding, start), 1, 2, 3 (norms, head)
    opt = build_optimizer(model, cfg.eval.finetune)
    where = {n: g for g in opt.param_groups for n in g["names"]}
    for g in opt.param_groups:
        assert g["lr_scale"] == pytest.approx(expected[g["layer_id"]], abs=1e-12)
        assert g["lr"] == pytest.approx(1e-3 * expected[g["layer_id"]], abs=1e-15)
    layer = {n: g["layer_id"] for n, g in where.items()}
    assert layer["backbone.predictor.start_token"] == 0
    assert layer["backbone.predictor.blocks.0.attn.qkv.weight"] == 1
    assert layer["backbone.predictor.blocks.1.mlp.fc2.weight"] == 2
    top = (layer["backbone.predictor.norm.weight"], layer["fc_norm.bias"], layer["head.weight"])
    assert top == (3, 3, 3)
    wd = {n: g["weight_decay"] for n, g in where.items()}
    assert wd["head.weight"] == wd["backbone.predictor.blocks.1.attn.qkv.weight"] == 0.05
    assert wd["backbone.predictor.start_token"] == wd["head.bias"] == wd["fc_norm.weight"] == 0.0
    # The patch embedding is frozen and not in the optimizer; everything else is, once.
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.encoder.proj.weight", "backbone.encoder.proj.bias"}
    assert set(where) == {n for n, _ in model.named_parameters()} - frozen
    assert sum(len(g["params"]) for g in opt.param_groups) == len(where)


def test_head_is_zero_initialised_and_weights_are_copied(tiny_cfg) -> None:
    objective, model = _model(tiny_cfg())
    assert not model.head.weight.any() and not model.head.bias.any()
    logits = model.eval()({"image": torch.randn(3, 1, 28, 28)})
    assert logits.shape == (3, 10) and not logits.any()  # logits start at exactly zero
    src = objective.state_dict()
    copied = model.backbone.state_dict()
    assert set(copied) == set(src)
    for name, value in copied.items():
        assert torch.equal(value, src[name])
        assert value.data_ptr() != src[name].data_ptr()  # a copy: fine-tuning leaves it alone


def test_attention_is_bidirectional_with_drop_path(tiny_cfg) -> None:
    # Without LayerScale (init 1e-5) so that attention moves the outputs visibly at init.
    cfg = tiny_cfg("eval.finetune.drop_path=0.2", "predictor.layerscale=null")
    objective, model = _model(cfg)
    x = {"image": torch.randn(2, 1, 28, 28)}
    later = {"image": x["image"].clone()}
    later["image"][..., 21:, 21:] += 1.0  # the last patch in raster order
    assert model.attn == "bidirectional"
    model.eval()
    f, f2 = (model.backbone(b, layers=[2], attn=model.attn) for b in (x, later))
    start, start2 = f.summary[0], f2.summary[0]  # the start token's outputs
    assert ((start - start2).abs().amax(-1) > 1e-3).all()  # the start token sees it
    first, first2 = f.layers[0][:, 0], f2.layers[0][:, 0]
    assert ((first - first2).abs().amax(-1) > 1e-3).all()  # and so does the first patch
    causal = objective.eval().features(x, layers=[2]).layers[0]
    causal2 = objective.features(later, layers=[2]).layers[0]
    assert torch.allclose(causal[:, 0], causal2[:, 0], atol=1e-6)  # the pretraining mask: no
    blocks = model.backbone.predictor.blocks
    assert [b.drop_path.p for b in blocks] == pytest.approx([0.0, 0.2])
    assert model.train().backbone.predictor.blocks[1].drop_path.active
    # the objective's own modules keep their settings (the classifier holds a copy)
    assert [b.drop_path.p for b in objective.predictor.blocks] == [0.0, 0.0]


def test_randaugment_runs_on_the_uint8_crop(tiny_cfg) -> None:
    cfg = tiny_cfg("eval.max_train=100")
    split, _ = eval_splits(cfg)  # a seeded subset of the eval-transform train split
    plain = TrainView(split, None)
    trainer_ds = build_dataset(cfg.data, split="train", train=True)
    sample = plain[(5, 123)]
    ref = trainer_ds[(split.indices[5], 123)]
    assert set(sample) == {"image", "label"} and sample["label"].dtype == torch.int64
    assert torch.equal(sample["image"], ref["image"])  # pretraining's crop
    assert int(sample["label"]) == int(ref["label"]) == int(split.labels[5])
    seen = []
    marked = TrainView(split, lambda img: seen.append(img.dtype) or 255 - img)
    assert seen == [] and not torch.allclose(marked[(5, 123)]["image"], sample["image"])
    assert seen == [torch.uint8]


def test_label_smoothing_is_applied_once_to_mixed_targets() -> None:
    torch.manual_seed(0)
    mix = batch_mix(FinetuneConfig(cutmix=0.0), num_classes=5)
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 5, (8,))
    _, soft = mix(x, y)
    assert soft.shape == (8, 5) and torch.allclose(soft.sum(1), torch.ones(8))
    logits, eps = torch.randn(8, 5), 0.1
    timm_target = (1 - eps) * soft + eps / 5  # = lam * smooth(y_a) + (1 - lam) * smooth(y_b)
    expected = -(timm_target * logits.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(F.cross_entropy(logits, soft, label_smoothing=eps), expected)


def test_overfits_a_small_split_and_is_deterministic(tiny_cfg) -> None:
    cfg = tiny_cfg(
        *NO_AUG,
        "eval.finetune.lr=1e-2",
        "eval.finetune.epochs=30",
        "eval.finetune.batch_size=16",
        "data.crop_scale=[1.0, 1.0]",
    )
    train, _ = eval_splits(cfg)
    small = eval_subset(train, 64)
    r = finetune_eval(cfg, build_objective(cfg), torch.device("cpu"), splits=(small, small))
    assert r["top1"] >= 0.9 and r["steps"] == 120  # 64 digits learned from a random init
    assert r["last_epoch_loss"] < 0.5 < math.log(10)
    runs = []
    for _ in range(2):  # with every augmentation on: RandAugment, mixup/cutmix, drop-path
        seeded = tiny_cfg("eval.finetune.epochs=1", "eval.finetune.batch_size=32")
        _, model = _model(seeded)
        finetune(model, small, seeded.eval.finetune, device=torch.device("cpu"), seed=seeded.seed)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert runs[0]["head.weight"].any()  # it trained


@pytest.mark.slow
@pytest.mark.parametrize("random_init", [False, True])
def test_eval_finetune_cli(tiny_run: Path, tmp_path: Path, random_init: bool) -> None:
    out = tmp_path / "finetune.json"
    sets = ["--set", "eval.finetune.epochs=1", "--set", "eval.finetune.batch_size=64"]
    init = ["--random-init"] if random_init else []
    assert main(["eval", "finetune", str(tiny_run), *sets, *init, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["protocol"] == "finetune" and 0.0 <= r["top1"] <= 1.0
    assert r["random_init"] is random_init and r["mix_field"] == "image"
    assert (r["n_train"], r["n_test"], r["steps"], r["epochs"]) == (256, 128, 4, 1)
    assert (r["attn"], r["pool"], r["layer_decay_mode"]) == ("bidirectional", "mean", "linear")
    assert (r["mixup"], r["cutmix"], r["randaugment"], r["drop_path"]) == (0.8, 1.0, [2, 9], 0.1)


@pytest.mark.slow
def test_bad_finetune_override_exits_2(tiny_run: Path) -> None:
    for bad in ("eval.finetune.epoch=3", "eval.finetune.layer_decay_mode=cubic"):
        assert main(["eval", "finetune", str(tiny_run), "--set", bad]) == 2
