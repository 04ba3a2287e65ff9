"""Held-out scores of a label: ROC AUC, balanced accuracy and F1 of a real-valued predictor."""

from __future__ import annotations

import numpy as np
import torch


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Boundaries of runs of equal values; every member of a run gets the run's mean rank.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC with ties counted half; None when one class is missing."""
    positive = positive.astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """Threshold maximising balanced accuracy of `scores > t` on these examples."""
    positive = positive.astype(bool)
    values = np.unique(scores)
    # Midpoints between distinct scores, plus one below all of them.
    candidates = np.r_[values[0] - 1.0, (values[1:] + values[:-1]) / 2] if len(values) > 1 else values - 1.0
    pred = scores[None, :] > candidates[:, None]
    tpr = (pred & positive).sum(1) / max(positive.sum(), 1)
    tnr = (~pred & ~positive).sum(1) / max((~positive).sum(), 1)
    return float(candidates[np.argmax(tpr + tnr)])


def classification_scores(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Balanced accuracy and F1 of `scores > threshold`."""
    positive = positive.astype(bool)
    pred = scores > threshold
    tp = int((pred & positive).sum())
    fp = int((pred & ~positive).sum())
    fn = int((~pred & positive).sum())
    tn = int((~pred & ~positive).sum())
    if tp + fn == 0 or tn + fp == 0:
        return {"balanced_accuracy": None, "f1": None}
    bacc = 0.5 * (tp / (tp + fn) + tn / (tn + fp))
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {"balanced_accuracy": float(bacc), "f1": float(f1)}


def batched_auc(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ROC AUC along the last axis for many score rows at once (ties broken arbitrarily).

    `scores` [..., n]; `positive` and `valid` [..., n] bool masks broadcastable to it.
    Rows with one class missing give 0.5.
    """
    positive = positive & valid
    scores = scores.masked_fill(~valid, float("-inf"))
    ranks = scores.argsort(-1).argsort(-1).to(scores.dtype) + 1
    n_invalid = (~valid).sum(-1, keepdim=True).to(scores.dtype)
    # Invalid entries take the lowest ranks; shift them away so ranks start at 1 among valid ones.
    ranks = ranks - n_invalid
    n_pos = positive.sum(-1).to(scores.dtype)
    n_neg = valid.sum(-1).to(scores.dtype) - n_pos
    rank_sum = (ranks * positive).sum(-1)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg).clamp(min=1)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, 0.5))
