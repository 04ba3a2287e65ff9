"""Supervised dictionaries (Makelov, Lange & Nanda, arXiv 2405.08366): features of known meaning.

For data whose contexts carry known binary attributes, the supervised feature of attribute c is
u_c = E[a | attr_c] - E[a], with `a` a context's activation at the SAE's hook. Planted into a labeling
run as an SAE whose latents read those directions, they measure label accuracy against ground truth;
the F1 of a real latent's firing against each attribute gives ground truth for real latents too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from workers.sae import SAE, SAEConfig, build_sae
from workers.subject import SubjectModel


@torch.no_grad()
def context_activations(
    subject: SubjectModel, sae: SAE, texts: list[str], context_length: int, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per context, over its first `context_length` real tokens: the mean hook activation [N, d], and each
    latent's maximum [N, L] (the context activation the harvest uses)."""
    pooled, latents = [], []
    for start in range(0, len(texts), batch_size):
        acts, mask, _ = subject.activations(texts[start : start + batch_size], context_length + 2)
        mask &= mask.cumsum(1) <= context_length
        weights = mask.float()
        pooled.append((acts * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1))
        # Latents are >= 0, so zeroed padding never wins the maximum.
        latents.append((sae.encode(acts).float() * weights[..., None]).amax(1))
    return torch.cat(pooled), torch.cat(latents)


def supervised_dictionary(acts: torch.Tensor, attributes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[a] [d], u [C, d]) with u_c = E[a | attributes[:, c]] - E[a]; `acts` [N, d], `attributes` [N, C] bool."""
    counts = attributes.sum(0)
    if (counts == 0).any():
        raise ValueError(f"attribute(s) {torch.nonzero(counts == 0).flatten().tolist()} hold for no context")
    mean = acts.mean(0)
    conditional = (attributes.T.float() @ acts) / counts[:, None]
    return mean, conditional - mean


def planted_sae(directions: torch.Tensor, mean: torch.Tensor, thresholds: torch.Tensor, model: str, hook: str) -> SAE:
    """A JumpReLU SAE whose latent c is the projection of (a - mean) onto unit direction c, zero up to thresholds[c]."""
    unit = F.normalize(directions, dim=-1)
    cfg = SAEConfig("jumprelu", d_in=unit.shape[1], d_sae=unit.shape[0], model_name=model, hook_name=hook)
    sae = build_sae(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(unit.T)
        sae.W_dec.copy_(unit)
        sae.b_dec.copy_(mean)  # subtracted before the encoder (apply_b_dec_to_input)
        sae.threshold.copy_(thresholds)
    return sae.eval().requires_grad_(False)


def f1_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of the cut `scores > threshold` with the best F1 against `positive`."""
    positive = positive.astype(bool)
    order = np.argsort(-scores, kind="stable")
    s, tp = scores[order], np.cumsum(positive[order])
    # Only cuts between distinct scores are thresholds.
    last = np.r_[s[1:] != s[:-1], True]
    k = np.arange(1, len(s) + 1)
    f1 = np.where(last, 2 * tp / (k + positive.sum()), -1.0)
    best = int(np.argmax(f1))
    below = s[best + 1] if best + 1 < len(s) else s[best] - 1.0
    return float((s[best] + below) / 2), float(f1[best])


def f1_matrix(firing: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """F1 [L, C] of each latent's firing [N, L] as a predictor of each attribute [N, C] (both bool)."""
    firing, attributes = firing.astype(np.float64), attributes.astype(np.float64)
    tp = firing.T @ attributes
    total = firing.sum(0)[:, None] + attributes.sum(0)[None, :]
    return np.divide(2 * tp, total, out=np.zeros_like(tp), where=total > 0)
