"""Evaluation protocols, one registry entry each: kNN, linear and attentive probes on frozen
features, and full fine-tuning.

An entry is ``fn(cfg, objective, device, splits=None, store=None) -> dict`` (``splits``: the
(train, test) datasets, built from ``cfg.data`` when None; ``store``: the
:class:`~nepa.eval.store.FeatureStore` of these weights, a fresh one when None); it reads the
model only through the objective (``features``, ``backbone``) and the store. A protocol that
declares what it reads (:func:`reads`) lets :func:`plan` have every protocol's features
extracted in one pass. The registry drives ``nepa eval <protocol>`` and ``nepa compare --eval``,
so a new protocol (zero-shot classification, retrieval) is one entry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from nepa.config import RunConfig
from nepa.data.base import build_dataset
from nepa.eval.attentive import attentive_probe
from nepa.eval.features import TOKENS, Need, eval_subset, labels_of, loader
from nepa.eval.finetune import classify_top1, finetune, finetune_classifier
from nepa.eval.knn import knn_top1
from nepa.eval.linear import linear_probe
from nepa.eval.store import FeatureStore
from nepa.objectives.base import Objective
from nepa.registry import Registry
from nepa.train.build import eval_precision, place, resolve_precision

Protocol = Callable[..., dict]
#: name -> ``fn(cfg, objective, device, splits=None, store=None) -> dict``; its docstring's
#: first line is the help of ``nepa eval <name>``
PROTOCOLS: Registry[Protocol] = Registry("evaluation protocol")
#: what a protocol reads: ``needs(cfg, depth) -> [Need]`` (at its own attention mode)
Needs = Callable[[RunConfig, int], list[Need]]


def reads(needs: Needs) -> Callable[[Protocol], Protocol]:
    """Decorator: declare the features a protocol reads from each split."""

    def deco(fn: Protocol) -> Protocol:
        fn.needs = needs  # type: ignore[attr-defined]
        return fn

    return deco


def evaluate(
    name: str,
    cfg: RunConfig,
    objective: Objective,
    device: torch.device,
    *,
    random_init: bool,
    splits: tuple[Dataset, Dataset] | None = None,
    store: FeatureStore | None = None,
) -> dict:
    """Run protocol ``name``; the result says which protocol and whether it was random init."""
    result = PROTOCOLS.get(name)(cfg, objective, device, splits=splits, store=store)
    return {"protocol": name, "random_init": random_init, **result}


def data_key(cfg: RunConfig) -> str:
    """What names the evaluation splits of ``cfg``: its data config and subset sizes."""
    return json.dumps([cfg.data.model_dump(mode="json"), cfg.eval.max_train, cfg.eval.max_test])


def feature_store(
    cfg: RunConfig, objective: Objective, device: torch.device, folder: Path | None = None
) -> FeatureStore:
    """The feature store of ``objective``'s current weights, at the evaluation batch size and
    precision; ``folder``: where pooled features persist (a run directory's ``features/``)."""
    place(objective, device)
    bf16, _ = eval_precision(cfg.eval.precision, device)
    return FeatureStore(
        objective,
        device,
        data_key=data_key(cfg),
        bf16=bf16,
        batch_size=cfg.eval.batch_size,
        folder=folder,
    )


def plan(store: FeatureStore, names: list[str], cfg: RunConfig) -> None:
    """Declare to ``store`` what protocols ``names`` will read, so the first pass over each
    split extracts all of it."""
    backbone = store.objective.backbone()
    attn = cfg.eval.attn or backbone.attn
    for name in names:
        needs = getattr(PROTOCOLS.get(name), "needs", None)
        if needs is not None:
            store.plan(attn, needs(cfg, backbone.depth))


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


def _setup(cfg: RunConfig, objective: Objective, device: torch.device, splits, store):
    """(train split, test split, backbone depth, resolved attention mode, feature store)."""
    train_ds, test_ds = splits or eval_splits(cfg)
    store = store or feature_store(cfg, objective, device)
    backbone = objective.backbone()
    return train_ds, test_ds, backbone.depth, cfg.eval.attn or backbone.attn, store


def _pooled(cfg: RunConfig, depth: int) -> list[Need]:
    return [Need(resolve_layer(cfg.eval.layer, depth), cfg.eval.pool)]


def knn_sweep(
    cfg: RunConfig,
    objective: Objective,
    device: torch.device,
    *,
    layers: list[int] | None = None,
    pools: list[str] | None = None,
    attns: list[str | None] | None = None,
    splits: tuple[Dataset, Dataset] | None = None,
    store: FeatureStore | None = None,
) -> list[dict]:
    """One kNN result per (attn, layer, pool); defaults come from ``cfg.eval``. Features of all
    layers and pools come from one pass over each split per attention mode."""
    e = cfg.eval
    train_ds, test_ds, depth, own_attn, store = _setup(cfg, objective, device, splits, store)
    layers = [resolve_layer(l, depth) for l in (layers or [e.layer])]
    pools = pools or [e.pool]
    ytr, yte = labels_of(train_ds), labels_of(test_ds)
    results = []
    for attn in attns or [e.attn]:
        attn = attn or own_attn
        t0 = time.perf_counter()
        store.plan(attn, [Need(l, p) for l in layers for p in pools])
        for layer in layers:
            for pool in pools:
                need = Need(layer, pool)
                top1 = knn_top1(
                    store.get("train", train_ds, attn, need),
                    ytr,
                    store.get("test", test_ds, attn, need),
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
                        "precision": store.precision,
                        "seconds": time.perf_counter() - t0,
                    }
                )
    return results


@PROTOCOLS.register("knn")
@reads(_pooled)
def knn_eval(
    cfg: RunConfig, objective: Objective, device: torch.device, splits=None, store=None
) -> dict:
    """k-NN classification of frozen features (k=20, cosine, temperature-weighted votes)"""
    return knn_sweep(cfg, objective, device, splits=splits, store=store)[0]


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
@reads(_pooled)
def linear_eval(
    cfg: RunConfig, objective: Objective, device: torch.device, splits=None, store=None
) -> dict:
    """linear probe: standardised features, L2 chosen on a validation split of train"""
    e = cfg.eval
    train_ds, test_ds, depth, attn, store = _setup(cfg, objective, device, splits, store)
    (need,) = _pooled(cfg, depth)
    t0 = time.perf_counter()
    ftr = store.get("train", train_ds, attn, need)
    fte = store.get("test", test_ds, attn, need)
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
        "layer": need.layer,
        "pool": e.pool,
        "attn": attn,
        "features": int(ftr.shape[1]),
        "precision": store.precision,
        "seconds": time.perf_counter() - t0,
    }


def _tokens(cfg: RunConfig, depth: int) -> list[Need]:
    return [Need(resolve_layer(cfg.eval.layer, depth), TOKENS)]


@PROTOCOLS.register("attentive")
@reads(_tokens)
def attentive_eval(
    cfg: RunConfig, objective: Objective, device: torch.device, splits=None, store=None
) -> dict:
    """attentive probe: learned queries over frozen tokens (eval.attentive.*), lr chosen on a
    validation split of train"""
    e, a = cfg.eval, cfg.eval.attentive
    train_ds, test_ds, depth, attn, store = _setup(cfg, objective, device, splits, store)
    (need,) = _tokens(cfg, depth)
    t0 = time.perf_counter()
    train = store.get("train", train_ds, attn, need)
    test = store.get("test", test_ds, attn, need)
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
        "layer": need.layer,
        "attn": attn,
        "queries": a.queries,
        "heads": heads,
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "lr_grid": list(a.lr_grid),
        "weight_decay": a.weight_decay,
        "tokens": int(train[0].shape[1]),
        "precision": store.precision,
        "seconds": time.perf_counter() - t0,
    }


@PROTOCOLS.register("finetune")
def finetune_eval(
    cfg: RunConfig, objective: Objective, device: torch.device, splits=None, store=None
) -> dict:
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
