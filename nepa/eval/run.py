"""Evaluation of a run: kNN, linear and attentive probes on frozen features, and full
fine-tuning. Each protocol takes the run's config, its objective, a device and optional
(train, test) splits, and returns a JSON-ready dict."""

from __future__ import annotations

import time

import torch
from torch.utils.data import Dataset

from nepa.config import RunConfig, apply_overrides
from nepa.data.base import build_dataset
from nepa.eval.attentive import attentive_probe, extract_tokens
from nepa.eval.features import eval_subset, extract
from nepa.eval.finetune import Classifier, classify_top1, finetune
from nepa.eval.knn import knn_top1
from nepa.eval.linear import linear_probe
from nepa.objectives.base import Objective
from nepa.train.build import build_objective, resolve_precision


def eval_splits(cfg: RunConfig):
    """The memory bank (train split) and the queries (test split), eval transform, each a
    seeded random subset of at most ``eval.max_train`` / ``eval.max_test`` items."""
    e = cfg.eval
    train_ds = build_dataset(cfg.data, split="train", train=False)
    test_ds = build_dataset(cfg.data, split="test", train=False)
    return eval_subset(train_ds, e.max_train), eval_subset(test_ds, e.max_test, seed=1)


def resolve_layer(layer: int, depth: int) -> int:
    resolved = layer if layer > 0 else depth + 1 + layer
    if not 1 <= resolved <= depth:
        raise ValueError(
            f"eval.layer={layer} is outside 1..{depth} (negative counts from the last block)"
        )
    return resolved


def knn_eval(
    cfg: RunConfig,
    objective: Objective,
    device: torch.device,
    *,
    layers: list[int] | None = None,
    pools: list[str] | None = None,
    attns: list[str] | None = None,
    splits: tuple[Dataset, Dataset] | None = None,
) -> list[dict]:
    """One result dict per (attn, layer, pool); defaults come from ``cfg.eval``."""
    e = cfg.eval
    depth = cfg.predictor.depth
    layers = [resolve_layer(l, depth) for l in (layers or [e.layer])]
    pools = pools or [e.pool]
    attns = attns or [e.attn]
    train_ds, test_ds = splits or eval_splits(cfg)
    ytr, yte = train_ds.labels, test_ds.labels
    objective.to(device)
    bf16, _ = resolve_precision(cfg.train.precision, device)
    results = []
    for attn in attns:
        t0 = time.perf_counter()
        kw = dict(
            layers=layers, pools=pools, attn=attn, device=device, batch_size=e.batch_size, bf16=bf16
        )
        ftr = extract(objective, train_ds, **kw)
        fte = extract(objective, test_ds, **kw)
        for layer in layers:
            for pool in pools:
                top1 = knn_top1(
                    ftr[(layer, pool)],
                    ytr,
                    fte[(layer, pool)],
                    yte,
                    num_classes=train_ds.num_classes,
                    k=e.k,
                    temperature=e.temperature,
                )
                results.append(
                    {
                        "protocol": "knn",
                        "top1": top1,
                        "n_train": len(ytr),
                        "n_test": len(yte),
                        "layer": layer,
                        "pool": pool,
                        "attn": attn,
                        "k": e.k,
                        "temperature": e.temperature,
                        "seconds": time.perf_counter() - t0,
                    }
                )
    return results


@torch.no_grad()
def raw_pixel_knn(cfg: RunConfig, splits: tuple[Dataset, Dataset] | None = None) -> dict:
    """The floor every learned feature should be compared with: kNN on centred raw inputs."""
    e = cfg.eval
    train_ds, test_ds = splits or eval_splits(cfg)
    ytr, yte = train_ds.labels, test_ds.labels
    xtr = torch.stack([train_ds[i][0].flatten() for i in range(len(ytr))])
    xte = torch.stack([test_ds[i][0].flatten() for i in range(len(yte))])
    mean = xtr.mean(0)
    top1 = knn_top1(
        xtr - mean,
        ytr,
        xte - mean,
        yte,
        num_classes=train_ds.num_classes,
        k=e.k,
        temperature=e.temperature,
    )
    return {
        "top1": top1,
        "n_train": len(ytr),
        "n_test": len(yte),
        "layer": None,
        "pool": "raw_pixels",
    }


def linear_eval(
    cfg: RunConfig,
    objective: Objective,
    device: torch.device,
    splits: tuple[Dataset, Dataset] | None = None,
) -> dict:
    """Linear probe on the features ``cfg.eval`` names (layer, pool, attention)."""
    e = cfg.eval
    layer = resolve_layer(e.layer, cfg.predictor.depth)
    train_ds, test_ds = splits or eval_splits(cfg)
    objective.to(device)
    bf16, _ = resolve_precision(cfg.train.precision, device)
    t0 = time.perf_counter()
    kw = dict(
        layers=[layer],
        pools=[e.pool],
        attn=e.attn,
        device=device,
        batch_size=e.batch_size,
        bf16=bf16,
    )
    ftr = extract(objective, train_ds, **kw)[(layer, e.pool)]
    fte = extract(objective, test_ds, **kw)[(layer, e.pool)]
    result = linear_probe(
        ftr,
        train_ds.labels,
        fte,
        test_ds.labels,
        num_classes=train_ds.num_classes,
        l2_grid=e.linear_l2,
        val_fraction=e.val_fraction,
        seed=cfg.seed,
    )
    return {
        "protocol": "linear",
        **result,
        "n_train": len(train_ds.labels),
        "n_test": len(test_ds.labels),
        "layer": layer,
        "pool": e.pool,
        "attn": e.attn,
        "features": int(ftr.shape[1]),
        "seconds": time.perf_counter() - t0,
    }


def attentive_eval(
    cfg: RunConfig,
    objective: Objective,
    device: torch.device,
    splits: tuple[Dataset, Dataset] | None = None,
) -> dict:
    """Attentive probe on the tokens of block ``eval.layer`` under ``eval.attn``."""
    e, a = cfg.eval, cfg.eval.attentive
    layer = resolve_layer(e.layer, cfg.predictor.depth)
    train_ds, test_ds = splits or eval_splits(cfg)
    objective.to(device)
    bf16, _ = resolve_precision(cfg.train.precision, device)
    t0 = time.perf_counter()
    kw = dict(layer=layer, attn=e.attn, device=device, batch_size=e.batch_size, bf16=bf16)
    train = extract_tokens(objective, train_ds, **kw)
    test = extract_tokens(objective, test_ds, **kw)
    heads = a.heads or cfg.predictor.heads
    result = attentive_probe(
        train,
        train_ds.labels,
        test,
        test_ds.labels,
        num_classes=train_ds.num_classes,
        cfg=a,
        heads=heads,
        val_fraction=e.val_fraction,
        seed=cfg.seed,
        device=device,
    )
    return {
        "protocol": "attentive",
        **result,
        "n_train": len(train_ds.labels),
        "n_test": len(test_ds.labels),
        "layer": layer,
        "attn": e.attn,
        "queries": a.queries,
        "heads": heads,
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "lr_grid": list(a.lr_grid),
        "weight_decay": a.weight_decay,
        "tokens": int(train[0].shape[1]),
        "seconds": time.perf_counter() - t0,
    }


def finetune_classifier(cfg: RunConfig, objective: Objective, num_classes: int) -> Classifier:
    """The objective's encoder + predictor (its weights copied) rebuilt with bidirectional
    attention and ``eval.finetune.drop_path``, under a fresh pooled head."""
    sets = [
        f"predictor.drop_path={cfg.eval.finetune.drop_path}",
        "predictor.attn=bidirectional",
        "predictor.prefix_len=0",
    ]
    rebuilt = build_objective(apply_overrides(cfg, sets))
    for part in ("encoder", "predictor"):
        if not isinstance(getattr(rebuilt, part, None), torch.nn.Module):
            raise TypeError(f"{type(rebuilt).__name__} has no {part} to fine-tune")
    rebuilt.load_state_dict(objective.state_dict())
    model = Classifier(rebuilt.encoder, rebuilt.predictor, num_classes)
    model.encoder.requires_grad_(False)  # the patch embedding stays frozen (as the reference)
    return model


def finetune_eval(
    cfg: RunConfig,
    objective: Objective,
    device: torch.device,
    splits: tuple[Dataset, Dataset] | None = None,
) -> dict:
    """Fine-tune a copy of ``objective`` on the train split, score top-1 on the test split."""
    f = cfg.eval.finetune
    train_ds, test_ds = splits or eval_splits(cfg)
    t0 = time.perf_counter()
    model = finetune_classifier(cfg, objective, train_ds.num_classes)
    model.to(device)
    model.predictor.set_backend(device)
    bf16, _ = resolve_precision(cfg.train.precision, device)
    stats = finetune(model, train_ds, f, device=device, bf16=bf16, seed=cfg.seed)
    top1 = classify_top1(model, test_ds, device=device, batch_size=cfg.eval.batch_size, bf16=bf16)
    return {
        "protocol": "finetune",
        "top1": top1,
        "n_train": len(train_ds.labels),
        "n_test": len(test_ds.labels),
        **stats,
        "attn": "bidirectional",
        "pool": "mean",
        **f.model_dump(mode="json"),
        "seconds": time.perf_counter() - t0,
    }
