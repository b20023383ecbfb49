"""k-nearest-neighbour classification of frozen features (the DINO protocol).

Cosine similarity to every training feature, the k most similar vote for their class with
weight exp(similarity / T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    train_ND: torch.Tensor,
    train_y: torch.Tensor,
    test_MD: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predicted labels (M,) for ``test_MD`` given a labelled bank ``train_ND``."""
    bank = F.normalize(train_ND.float(), dim=-1)
    k = min(k, bank.shape[0])
    preds = []
    for q in F.normalize(test_MD.float(), dim=-1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=-1)  # (m, k)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_y[idx], weights)
        preds.append(votes.argmax(-1))
    return torch.cat(preds)


def knn_top1(train_ND, train_y, test_MD, test_y, **kw) -> float:
    return (knn_predict(train_ND, train_y, test_MD, **kw) == test_y).float().mean().item()
