"""Token-space gradient descent: find, for many features at once, the K-token label the discriminator
finds most predictive of where each feature fires.

A label is a logit vector `v` over the label vocabulary per slot. `st-gumbel` (default) feeds the
discriminator the one-hot argmax of Gumbel-perturbed logits and passes the softmax gradient back
(straight-through), so the loss is always measured on a real token; `soft` is the paper's plain
relaxation, the expected embedding `softmax(v / T) @ E`; `exhaustive` scores every single token.
All modes end the same way: candidate labels reranked by their discrete training AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from workers.discriminators import Discriminator
from workers.scoring import batched_auc


@dataclass
class OptimiserConfig:
    """How labels are searched for."""

    mode: str = "st-gumbel"
    """st-gumbel | soft | exhaustive"""
    label_tokens: int = 1
    """K, tokens per label"""
    steps: int = 100
    """gradient steps per batch of features"""
    lr: float = 0.1
    """step size on the vocabulary logits"""
    temperature: float = 1.0
    """softmax temperature T"""
    entropy_weight: float = 0.02
    """weight of the entropy of softmax(v/T), ramped up linearly from 0 over the steps"""
    naturalness_weight: float = 0.0
    """weight of the label's surprisal under the discriminator's own next-token distribution (causal LMs)"""
    candidates: int = 10
    """candidates per feature reranked by discrete training AUROC"""
    update: str = "mirror"
    """mirror: logits step along the standardised gradient w.r.t. the token weights | adam: Adam on the logits"""
    seed: int = 0


MODES = ("st-gumbel", "soft", "exhaustive")
SCORE_ROWS = 1024  # discrete labels scored per discriminator pass


@dataclass
class FeatureBatch:
    """Examples of F features as rows of indices into one encoded text set (padded to n)."""

    index: torch.Tensor  # [F, n] long
    positive: torch.Tensor  # [F, n] bool, feature active
    train: torch.Tensor  # [F, n] bool, valid training example
    test: torch.Tensor  # [F, n] bool, valid held-out example


@dataclass
class Search:
    """Outcome for one feature: candidates (token ids, training AUROC), best first, and loss terms."""

    candidates: list[tuple[tuple[int, ...], float]]
    losses: dict[str, float] = field(default_factory=dict)
    steps: int = 0


def class_weights(positive: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example loss weights [F, n]: positives and negatives each weigh one half, whatever their counts."""
    pos = (positive & mask).float()
    neg = (~positive & mask).float()
    return 0.5 * pos / pos.sum(-1, keepdim=True).clamp(min=1) + 0.5 * neg / neg.sum(-1, keepdim=True).clamp(min=1)


class LabelOptimiser:
    """Searches labels for batches of features against one discriminator."""

    def __init__(self, discriminator: Discriminator, vocab: torch.Tensor, config: OptimiserConfig):
        if config.mode not in MODES:
            raise ValueError(f"unknown optimiser mode {config.mode!r}; expected one of {MODES}")
        if config.mode == "exhaustive" and config.label_tokens != 1:
            raise ValueError(f"exhaustive search is single-token only; got label_tokens={config.label_tokens}")
        discriminator.check_label_tokens(config.label_tokens)
        self.disc = discriminator
        self.config = config
        self.device = discriminator.embedding_matrix.device
        self.vocab = vocab.to(self.device)
        self.vocab_embeddings = discriminator.embedding_matrix[self.vocab]

    def search(self, batch: FeatureBatch, texts: object) -> list[Search]:
        """Candidate labels for every feature of the batch, best training AUROC first."""
        if self.config.mode == "exhaustive":
            proposals, losses, steps = self._exhaustive(batch, texts), {}, 0
        else:
            proposals, losses, steps = self._descend(batch, texts)
        ranked = self._rerank(proposals, batch, texts)
        return [Search(cands, {k: float(v[f]) for k, v in losses.items()}, steps) for f, cands in enumerate(ranked)]

    def _descend(self, batch: FeatureBatch, texts: object):
        cfg = self.config
        n_feat, k, n_vocab = len(batch.index), cfg.label_tokens, len(self.vocab)
        dev = self.device
        gen = torch.Generator(device=dev).manual_seed(cfg.seed)
        v = (0.01 * torch.randn(n_feat, k, n_vocab, generator=gen, device=dev)).requires_grad_()
        # Per-feature affine read-out of the raw logit: the discriminator's scale is arbitrary.
        log_scale = torch.full((n_feat, 1), 2.0, device=dev, requires_grad=True)
        bias = torch.zeros(n_feat, 1, device=dev, requires_grad=True)
        opt = torch.optim.Adam([{"params": [v], "lr": cfg.lr}, {"params": [log_scale, bias], "lr": 0.05}])
        weight = class_weights(batch.positive, batch.train)
        # Examples per forward pass, so that memory is bounded by the discriminator's pair budget.
        cols = max(1, self.disc.pair_batch // n_feat)
        # Naturalness: the label's surprisal under the model's own next-token distribution at the slot.
        prior = self.disc.label_prior(self.vocab, texts, batch.index, weight * batch.positive)
        seen: list[set[tuple[int, ...]]] = [set() for _ in range(n_feat)]
        for step in range(cfg.steps):
            logits = v / cfg.temperature
            if cfg.mode == "st-gumbel":
                u = torch.rand(v.shape, generator=gen, device=dev).clamp_(1e-9, 1 - 1e-9)
                soft = torch.softmax(logits - torch.log(-torch.log(u)), -1)
                hard = F.one_hot(soft.argmax(-1), n_vocab).to(soft.dtype)
                mix = hard - soft.detach() + soft
            else:
                mix = torch.softmax(logits, -1)
            mix.retain_grad()
            embeds = mix @ self.vocab_embeddings
            opt.zero_grad()
            prediction = torch.zeros(n_feat, device=dev)
            for c in range(0, batch.index.shape[1], cols):
                part = slice(c, c + cols)
                raw = self.disc.logits(embeds, texts, batch.index[:, part])
                target = (batch.positive[:, part]).float()
                bce = F.binary_cross_entropy_with_logits(log_scale.exp() * raw + bias, target, reduction="none")
                loss_part = (bce * weight[:, part]).sum(-1)
                loss_part.sum().backward(retain_graph=True)
                prediction += loss_part.detach()
            probs = torch.softmax(logits, -1)
            entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum(-1).mean(-1)
            regular = cfg.entropy_weight * (step + 1) / cfg.steps * entropy
            surprisal = None if prior is None else -(mix[:, 0] * prior).sum(-1)
            if surprisal is not None:
                regular = regular + cfg.naturalness_weight * surprisal
            regular.sum().backward()
            if cfg.update == "mirror":
                g = mix.grad
                with torch.no_grad():
                    v -= cfg.lr * (g - g.mean(-1, keepdim=True)) / g.std(-1, keepdim=True).clamp(min=1e-12)
                v.grad = None
            opt.step()
            if step >= cfg.steps // 2:
                # The argmax labels visited late in the descent are candidates too.
                for f, ids in enumerate(v.detach().argmax(-1).tolist()):
                    seen[f].add(tuple(self.vocab[ids].tolist()))
        losses = {
            "loss_prediction": prediction,
            "loss_entropy": entropy.detach(),
            "loss_total": prediction + regular.detach(),
        }
        if surprisal is not None:
            losses["loss_naturalness"] = surprisal.detach()
        top = v.detach().topk(min(cfg.candidates, n_vocab), dim=-1).indices  # [F, K, C]
        proposals = []
        for f in range(n_feat):
            best = top[f, :, 0]
            cands = set(seen[f])
            # Single-slot variations of the best label by each slot's runners-up.
            for slot in range(k):
                for alt in top[f, slot]:
                    ids = best.clone()
                    ids[slot] = alt
                    cands.add(tuple(self.vocab[ids].tolist()))
            proposals.append(sorted(cands))
        return proposals, losses, cfg.steps

    @torch.no_grad()
    def _exhaustive(self, batch: FeatureBatch, texts: object) -> list[list[tuple[int, ...]]]:
        proposals = []
        for start in range(0, len(batch.index), 8):
            part = slice(start, start + 8)
            raw = self.disc.token_logits(self.vocab, texts, batch.index[part])  # [f, T, n]
            auc = batched_auc(raw, batch.positive[part, None, :], batch.train[part, None, :])
            best = auc.topk(min(self.config.candidates, len(self.vocab)), dim=-1).indices
            proposals += [[(int(self.vocab[i]),) for i in row] for row in best]
        return proposals

    @torch.no_grad()
    def label_logits(self, owner: torch.Tensor, labels: torch.Tensor, batch: FeatureBatch, texts: object):
        """Raw logits [R, n] of discrete labels `labels` [R, K] (token ids) on the examples of features `owner`
        [R], SCORE_ROWS labels per pass: bounds the [labels, examples, d] gather of an embedding model."""
        return torch.cat(
            [
                self.disc.score(
                    self.disc.embedding_matrix[labels[i : i + SCORE_ROWS]],
                    texts,
                    batch.index[owner[i : i + SCORE_ROWS]],
                )
                for i in range(0, len(labels), SCORE_ROWS)
            ]
        )

    @torch.no_grad()
    def _rerank(self, proposals: list[list[tuple[int, ...]]], batch: FeatureBatch, texts: object):
        """Score every candidate as a discrete label on the training split; best first."""
        owner = torch.tensor([f for f, cands in enumerate(proposals) for _ in cands], device=self.device)
        labels = torch.tensor([ids for cands in proposals for ids in cands], device=self.device)
        raw = self.label_logits(owner, labels, batch, texts)
        aucs = batched_auc(raw, batch.positive[owner], batch.train[owner])
        ranked: list[list[tuple[tuple[int, ...], float]]] = [[] for _ in proposals]
        for f, ids, auc in zip(owner.tolist(), labels.tolist(), aucs.tolist()):
            ranked[f].append((tuple(ids), auc))
        # Stable sort: among equal training AUROCs the proposal order decides, so results are deterministic.
        return [sorted(r, key=lambda c: -c[1]) for r in ranked]
