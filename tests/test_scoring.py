import numpy as np
import torch

from workers.scoring import average_ranks, batched_auc, best_threshold, classification_scores, roc_auc


def pairwise_auc(scores, positive):
    pos, neg = scores[positive], scores[~positive]
    return ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, size=30).astype(float)
        positive = rng.random(30) < 0.4
        assert abs(roc_auc(scores, positive) - pairwise_auc(scores, positive)) < 1e-12


def test_roc_auc_none_without_both_classes():
    assert roc_auc(np.array([1.0, 2.0]), np.array([True, True])) is None


def test_average_ranks_share_ties():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_batched_auc_equals_exact_auc_and_ignores_padding():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 12, generator=gen)
    positive = torch.rand(4, 12, generator=gen) < 0.5
    positive[:, 0], positive[:, 1] = True, False
    valid = torch.ones(4, 12, dtype=torch.bool)
    valid[2, 9:] = False
    got = batched_auc(scores, positive, valid)
    for f in range(4):
        m = valid[f].numpy()
        assert abs(got[f].item() - roc_auc(scores[f].numpy()[m], positive[f].numpy()[m])) < 1e-6


def test_threshold_and_classification_scores():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    positive = np.array([False, False, False, True, True])
    t = best_threshold(scores, positive)
    assert 0.3 < t < 0.8
    assert classification_scores(scores, positive, t) == {"balanced_accuracy": 1.0, "f1": 1.0}
