"""Features extracted once per weights: one pass per split serves every planned protocol, a
second store of the same weights reads them from disk, and other weights or data never do."""

from __future__ import annotations

import logging

import pytest
import torch

from nepa.eval import features as features_mod
from nepa.eval.features import TOKENS, Need, extract
from nepa.eval.load import load_run
from nepa.eval.run import eval_splits, evaluate, feature_store, knn_sweep, plan
from nepa.eval.store import weights_hash

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded(tiny_run):
    cfg, objective = load_run(tiny_run)
    return cfg, objective, eval_splits(cfg)


def _count_passes(monkeypatch) -> list[set[Need]]:
    calls: list[set[Need]] = []
    real = features_mod.extract_needs

    def counting(objective, dataset, needs, **kw):
        calls.append(set(needs))
        return real(objective, dataset, needs, **kw)

    monkeypatch.setattr("nepa.eval.store.extract_needs", counting)
    return calls


def test_planned_protocols_share_one_pass_per_split(loaded, monkeypatch) -> None:
    cfg, objective, splits = loaded
    alone = {
        name: evaluate(name, cfg, objective, CPU, random_init=False, splits=splits)
        for name in ("knn", "linear")
    }
    calls = _count_passes(monkeypatch)
    store = feature_store(cfg, objective, CPU)
    plan(store, ["knn", "linear", "attentive"], cfg)
    shared = {
        name: evaluate(name, cfg, objective, CPU, random_init=False, splits=splits, store=store)
        for name in ("knn", "linear", "attentive")
    }
    assert len(calls) == 2  # train and test, each once, for all three protocols
    assert calls[0] == {Need(1, cfg.eval.pool), Need(1, TOKENS)}
    for name in ("knn", "linear"):  # the same numbers as each protocol extracting alone
        assert shared[name]["top1"] == alone[name]["top1"]


def test_a_sweep_extracts_once_per_split_and_attention_mode(loaded, monkeypatch) -> None:
    cfg, objective, splits = loaded
    calls = _count_passes(monkeypatch)
    results = knn_sweep(
        cfg,
        objective,
        CPU,
        layers=[1, 2],
        pools=["mean", "grid2", "last"],
        attns=["causal", "bidirectional"],
        splits=splits,
    )
    assert len(results) == 12 and len(calls) == 4
    assert all(len(c) == 6 for c in calls)  # every (layer, pool) in each pass


def test_features_persist_by_weights_and_data(loaded, tmp_path, monkeypatch, caplog) -> None:
    cfg, objective, splits = loaded
    train, _ = splits
    need = Need(1, "grid2")
    first = feature_store(cfg, objective, CPU, folder=tmp_path)
    x = first.get("train", train, "causal", need)
    first.flush()  # written in the background
    (file,) = (tmp_path / first.hash[:16]).iterdir()
    calls = _count_passes(monkeypatch)
    again = feature_store(cfg, objective, CPU, folder=tmp_path)
    assert torch.equal(again.get("train", train, "causal", need), x) and calls == []
    # equal to extracting directly
    direct = extract(
        objective, train, layers=[1], pools=["grid2"], attn="causal", device=CPU, bf16=first.bf16
    )
    assert torch.equal(direct[(1, "grid2")], x)
    # other data (a different subset size) or another attention mode: not read from the file
    other = feature_store(
        cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"max_train": 9})}),
        objective,
        CPU,
        folder=tmp_path,
    )
    other.get("train", train, "causal", need)
    again.get("train", train, "bidirectional", need)
    assert len(calls) == 2
    # other weights: another hash, so another folder
    original = {k: v.clone() for k, v in objective.state_dict().items()}
    h = weights_hash(objective)
    with torch.no_grad():
        next(objective.parameters()).add_(1e-3)
    try:
        assert weights_hash(objective) != h
    finally:
        objective.load_state_dict(original)
    assert weights_hash(objective) == h
    # a damaged file is said and extracted again, never trusted
    file.write_bytes(b"not a safetensors file")
    caplog.set_level(logging.WARNING)
    fresh = feature_store(cfg, objective, CPU, folder=tmp_path)
    assert torch.equal(fresh.get("train", train, "causal", need), x)
    assert "unreadable" in caplog.text and len(calls) == 3


def test_the_backbone_stops_at_the_deepest_layer_asked_for(loaded) -> None:
    cfg, objective, splits = loaded
    blocks = objective.backbone().predictor.blocks
    ran: list[int] = []
    hooks = [
        b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(blocks)
    ]
    try:
        extract(objective, splits[1], layers=[1], pools=["mean"], attn="causal", device=CPU)
    finally:
        for h in hooks:
            h.remove()
    assert set(ran) == {0} and len(blocks) == 2


def test_extraction_precision_is_recorded_and_keys_the_cache(loaded, tmp_path) -> None:
    from nepa.train.build import eval_precision, native_cpu_bf16

    cfg, objective, splits = loaded
    assert eval_precision("auto", CPU) == (
        native_cpu_bf16(),
        f"auto: {'native' if native_cpu_bf16() else 'no native'} bf16 on cpu",
    )
    fp32 = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"precision": "fp32"})})
    r = evaluate("knn", fp32, objective, CPU, random_init=False, splits=splits)
    assert r["precision"] == "fp32"
    a = feature_store(fp32, objective, CPU, folder=tmp_path)
    b16 = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"precision": "bf16"})})
    b = feature_store(b16, objective, CPU, folder=tmp_path)
    need = Need(1, "mean")
    xa, xb = a.get("test", splits[1], "causal", need), b.get("test", splits[1], "causal", need)
    assert (a.precision, b.precision) == ("fp32", "bf16")
    a.flush(), b.flush()
    assert len(list((tmp_path / a.hash[:16]).iterdir())) == 2  # one file per precision
    torch.testing.assert_close(xa, xb, rtol=0.05, atol=0.05)  # bf16 rounding, not other data


def test_features_files_are_written_in_the_background_and_failures_are_said(
    loaded, tmp_path, monkeypatch, caplog
) -> None:
    """A file that cannot be written (here: the folder is a file) is logged, and the features
    are still returned; an unexpected error in the writer is raised by ``flush``, never lost."""
    cfg, objective, splits = loaded
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    store = feature_store(cfg, objective, CPU, folder=blocked)
    caplog.set_level(logging.WARNING)
    x = store.get("test", splits[1], "causal", Need(1, "mean"))
    store.flush()
    assert x.shape[0] == len(splits[1]) and "not cached" in caplog.text

    def broken(*args, **kw):
        raise RuntimeError("writer bug")

    monkeypatch.setattr("nepa.eval.store.save_file", broken)
    store = feature_store(cfg, objective, CPU, folder=tmp_path / "features")
    store.get("test", splits[1], "causal", Need(1, "mean"))
    with pytest.raises(RuntimeError, match="writer bug"):
        store.flush()
