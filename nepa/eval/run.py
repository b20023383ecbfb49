"""Evaluation protocols, one registry entry each: kNN, linear and attentive probes on frozen
features, and full fine-tuning.

An entry is ``fn(cfg, objective, device, splits=None) -> dict`` (``splits``: the (train, test)
datasets, built from ``cfg.data`` when None); it reads the model only through the objective
(``features``, ``backbone``). The registry drives ``nepa eval <protocol>`` and
``nepa compare --eval``, so a new protocol (zero-shot classification, retrieval) is one entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from nepa.config import RunConfig
from nepa.data.base import build_dataset
from nepa.eval.attentive import attentive_probe, extract_tokens
from nepa.eval.features import eval_subset, extract, labels_of, loader
from nepa.eval.finetune import classify_top1, finetune, finetune_classifier
from nepa.eval.knn import knn_top1
from nepa.eval.linear import linear_probe
from nepa.objectives.base import Objective
from nepa.registry import Registry
from nepa.train.build import place, resolve_precision

Protocol = Callable[..., dict]
#: name -> ``fn(cfg, objective, device, splits=None) -> dict``; its docstring's first line is
#: the help of ``nepa eval <name>``
PROTOCOLS: Registry[Protocol] = Registry("evaluation protocol")


def evaluate(
    name: str,
    cfg: RunConfig,
    objective: Objective,
    device: torch.device,
    *,
    random_init: bool,
    splits: tuple[Dataset, Dataset] | None = None,
) -> dict:
    """Run protocol ``name``; the result says which protocol and whether it was random init."""
    result = PROTOCOLS.get(name)(cfg, objective, device, splits=splits)
    return {"protocol": name, "random_init": random_init, **result}


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


def _setup(cfg: RunConfig, objective: Objective, device: torch.device, splits):
    """(train split, test split, backbone depth, resolved attention mode, bf16)."""
    train_ds, test_ds = splits or eval_splits(cfg)
    place(objective, device)
    backbone = objective.backbone()
    bf16, _ = resolve_precision(cfg.train.precision, device)
    return train_ds, test_ds, backbone.depth, cfg.eval.attn or backbone.attn, bf16


def knn_sweep(
    cfg: RunConfig,
    objective: Objective,
    device: torch.device,
    *,
    layers: list[int] | None = None,
    pools: list[str] | None = None,
    attns: list[str | None] | None = None,
    splits: tuple[Dataset, Dataset] | None = None,
) -> list[dict]:
    """One kNN result per (attn, layer, pool); defaults come from ``cfg.eval``. Features of all
    layers and pools come from one pass over each split per attention mode."""
    e = cfg.eval
    train_ds, test_ds, depth, own_attn, bf16 = _setup(cfg, objective, device, splits)
    layers = [resolve_layer(l, depth) for l in (layers or [e.layer])]
    pools = pools or [e.pool]
    ytr, yte = labels_of(train_ds), labels_of(test_ds)
    results = []
    for attn in attns or [e.attn]:
        attn = attn or own_attn
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


@PROTOCOLS.register("knn")
def knn_eval(cfg: RunConfig, objective: Objective, device: torch.device, splits=None) -> dict:
    """k-NN classification of frozen features (k=20, cosine, temperature-weighted votes)"""
    return knn_sweep(cfg, objective, device, splits=splits)[0]


@torch.no_grad()
def raw_input_knn(cfg: RunConfig, splits: tuple[Dataset, Dataset] | None = None) -> dict:
    """The floor every learned feature should be compared with: kNN on the centred raw inputs
    (every float field of the samples, flattened and concatenated)."""
    e = cfg.eval
    train_ds, test_ds = splits or eval_splits(cfg)

    def flat(ds: Dataset) -> torch.Tensor:
        return torch.cat(
            [
                torch.cat([v.flatten(1).float() for v in b.values() if v.is_floating_point()], 1)
                for b in loader(ds, e.batch_size)
            ]
        )

    xtr, xte = flat(train_ds), flat(test_ds)
    ytr, yte = labels_of(train_ds), labels_of(test_ds)
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
        "protocol": "knn",
        "top1": top1,
        "n_train": len(ytr),
        "n_test": len(yte),
        "layer": None,
        "pool": "raw_pixels",
    }


@PROTOCOLS.register("linear")
def linear_eval(cfg: RunConfig, objective: Objective, device: torch.device, splits=None) -> dict:
    """linear probe: standardised features, L2 chosen on a validation split of train"""
    e = cfg.eval
    train_ds, test_ds, depth, attn, bf16 = _setup(cfg, objective, device, splits)
    layer = resolve_layer(e.layer, depth)
    t0 = time.perf_counter()
    kw = dict(
        layers=[layer], pools=[e.pool], attn=attn, device=device, batch_size=e.batch_size, bf16=bf16
    )
    ftr = extract(objective, train_ds, **kw)[(layer, e.pool)]
    fte = extract(objective, test_ds, **kw)[(layer, e.pool)]
    ytr, yte = labels_of(train_ds), labels_of(test_ds)
    result = linear_probe(
        ftr,
        ytr,
        fte,
        yte,
        num_classes=train_ds.num_classes,
        l2_grid=e.linear_l2,
        val_fraction=e.val_fraction,
        seed=cfg.seed,
    )
    return {
        **result,
        "n_train": len(ytr),
        "n_test": len(yte),
        "layer": layer,
        "pool": e.pool,
        "attn": attn,
        "features": int(ftr.shape[1]),
        "seconds": time.perf_counter() - t0,
    }


@PROTOCOLS.register("attentive")
def attentive_eval(cfg: RunConfig, objective: Objective, device: torch.device, splits=None) -> dict:
    """attentive probe: learned queries over frozen tokens (eval.attentive.*), lr chosen on a
    validation split of train"""
    e, a = cfg.eval, cfg.eval.attentive
    train_ds, test_ds, depth, attn, bf16 = _setup(cfg, objective, device, splits)
    layer = resolve_layer(e.layer, depth)
    t0 = time.perf_counter()
    kw = dict(layer=layer, attn=attn, device=device, batch_size=e.batch_size, bf16=bf16)
    train = extract_tokens(objective, train_ds, **kw)
    test = extract_tokens(objective, test_ds, **kw)
    heads = a.heads or objective.backbone().heads
    ytr, yte = labels_of(train_ds), labels_of(test_ds)
    result = attentive_probe(
        train,
        ytr,
        test,
        yte,
        num_classes=train_ds.num_classes,
        cfg=a,
        heads=heads,
        val_fraction=e.val_fraction,
        seed=cfg.seed,
        device=device,
    )
    return {
        **result,
        "n_train": len(ytr),
        "n_test": len(yte),
        "layer": layer,
        "attn": attn,
        "queries": a.queries,
        "heads": heads,
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "lr_grid": list(a.lr_grid),
        "weight_decay": a.weight_decay,
        "tokens": int(train[0].shape[1]),
        "seconds": time.perf_counter() - t0,
    }


@PROTOCOLS.register("finetune")
def finetune_eval(cfg: RunConfig, objective: Objective, device: torch.device, splits=None) -> dict:
    """full fine-tuning: bidirectional attention, layer-wise lr decay, RandAugment,
    mixup/cutmix (eval.finetune.*)"""
    f = cfg.eval.finetune
    train_ds, test_ds = splits or eval_splits(cfg)
    t0 = time.perf_counter()
    place(objective, device)  # the copy keeps the attention backend resolved for the device
    model = finetune_classifier(objective, train_ds.num_classes, f)
    model.to(device)
    bf16, _ = resolve_precision(cfg.train.precision, device)
    stats = finetune(model, train_ds, f, device=device, bf16=bf16, seed=cfg.seed)
    top1 = classify_top1(model, test_ds, device=device, batch_size=cfg.eval.batch_size, bf16=bf16)
    return {
        "top1": top1,
        "n_train": len(train_ds),
        "n_test": len(test_ds),
        **stats,
        "attn": model.attn,
        "pool": "mean",
        **f.model_dump(mode="json"),
        "seconds": time.perf_counter() - t0,
    }


def protocol_help(name: str) -> str:
    doc: Any = PROTOCOLS.get(name).__doc__ or name
    return " ".join(doc.split())
