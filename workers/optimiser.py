"""Token-space gradient descent: find, for many features at once, the K-token label the discriminator
finds most predictive of where each feature fires.

A label is a logit vector `v` over the label vocabulary per slot. `st-gumbel` (default) feeds the
discriminator each slot's Gumbel-max token, so the loss is always measured on a real token, and moves the
logits along the standardised gradient with respect to the token weights (a mirror-descent step). For a
one-token label and a discriminator with a state per token (embedding models), the forward pass mixes the
tokens' own label states, which is exact for a real token and needs no encoder pass; longer labels go
through the model. `soft` is the paper's plain relaxation, the expected embedding `softmax(v / T) @ E`
with an entropy term and Adam; `exhaustive` scores every single token.

All modes end the same way: candidate labels reranked by their discrete training AUROC, where labels
within `tie_window` of the best count as tied and the one most like the other tied ones leads (see
`_name_first`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from workers.discriminators import Discriminator
from workers.scoring import batched_auc
from workers.vocab import token_frequencies


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
    """step size on the vocabulary logits (st-gumbel: of the mirror step; soft: Adam's)"""
    temperature: float = 1.0
    """softmax temperature T"""
    entropy_weight: float = 0.02
    """soft mode: weight of the entropy of softmax(v/T), ramped up linearly from 0 over the steps (st-gumbel's
    forward pass is one token already)"""
    naturalness_weight: float = 0.0
    """weight of the label's surprisal under the discriminator's own next-token distribution (causal LMs)"""
    candidates: int = 10
    """candidates per feature reranked by discrete training AUROC"""
    tie_window: float = 0.05
    """candidates this close to the best training AUROC are tied (about two standard errors of an AUROC
    on 100 examples per class); the one most like the others names the feature (0: plain AUROC order)"""
    seed: int = 0


MODES = ("st-gumbel", "soft", "exhaustive")
SCORE_ROWS = 1024  # discrete labels scored per discriminator pass
MAX_TIED = 256  # tied candidates per feature: exhaustive search proposes, and naming compares, at most this many
FREQUENCY_BONUS = 0.02  # naming among ties: centrality gained per unit of Zipf word frequency (x10 per billion)


@dataclass
class FeatureBatch:
    """Examples of F features as rows of indices into one encoded text set (padded to n)."""

    feature_ids: list[int]  # [F] each feature's id: its random draws depend on it alone, not on the batch
    index: torch.Tensor  # [F, n] long
    positive: torch.Tensor  # [F, n] bool, feature active
    train: torch.Tensor  # [F, n] bool, valid training example
    test: torch.Tensor  # [F, n] bool, valid held-out example

    def training_columns(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index, positive, valid) [F, t] of each feature's training examples alone, first t columns: the
        descent never runs held-out or padding columns."""
        order = torch.sort((~self.train).to(torch.uint8), dim=1, stable=True).indices
        width = max(int(self.train.sum(1).max()), 1)
        cols = order[:, :width]
        return self.index.gather(1, cols), self.positive.gather(1, cols), self.train.gather(1, cols)


@dataclass
class Search:
    """Outcome for one feature: candidates (token ids, training AUROC), best first, and loss terms."""

    candidates: list[tuple[tuple[int, ...], float]]
    losses: dict[str, float] = field(default_factory=dict)
    steps: int = 0


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per feature [F], averaged over the label slots."""
    probs = torch.softmax(logits, -1)
    return -(probs * torch.log(probs.clamp(min=1e-12))).sum(-1).mean(-1)


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
        self.device = discriminator.device
        self.vocab = vocab.to(self.device)
        # In float32 whatever the model dtype: the optimiser mixes rows with float32 token weights.
        self.vocab_embeddings = discriminator.embed_tokens(self.vocab).float()
        self.frequency = token_frequencies(discriminator.tokenizer, vocab)

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
        soft_mode = cfg.mode == "soft"
        # One generator per feature, seeded by its id: a feature's label does not depend on its batch.
        gens = [torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + fid) for fid in batch.feature_ids]
        v = torch.stack([0.01 * torch.randn(k, n_vocab, generator=g, device=dev) for g in gens])
        v.requires_grad_(soft_mode)
        # Per-feature affine read-out of the raw logit: the discriminator's scale is arbitrary.
        log_scale = torch.full((n_feat, 1), 2.0, device=dev, requires_grad=True)
        bias = torch.zeros(n_feat, 1, device=dev, requires_grad=True)
        params = [{"params": [log_scale, bias], "lr": 0.05}] + ([{"params": [v], "lr": cfg.lr}] if soft_mode else [])
        opt = torch.optim.Adam(params)
        index, positive, valid = batch.training_columns()
        weight = class_weights(positive, valid)
        # Examples per forward pass, so that memory is bounded by the discriminator's pair budget.
        cols = max(1, self.disc.pair_batch // n_feat)
        # Naturalness: the label's surprisal under the model's own next-token distribution at the slot.
        prior = None
        if cfg.naturalness_weight > 0:
            prior = self.disc.label_prior(self.vocab, texts, index, weight * positive)
        seen: list[set[tuple[int, ...]]] = [set() for _ in range(n_feat)]
        # A one-token st-gumbel label is always a real token, so where the discriminator has a state per token
        # (embedding models) mixing token states gives the exact forward pass without an encoder pass.
        states = self.disc.token_states(self.vocab) if not soft_mode and k == 1 else None
        rows = self.vocab_embeddings if states is None else states  # [V, d]: what a label mixes
        for step in range(cfg.steps):
            logits = v / cfg.temperature if cfg.temperature != 1 else v
            if soft_mode:
                mix = torch.softmax(logits, -1)
                embeds = mix @ rows
            else:
                # Straight-through Gumbel: the forward pass sees each slot's Gumbel-max token, the update follows
                # the gradient with respect to the token weights.
                noise = torch.stack([torch.rand(k, n_vocab, generator=g, device=dev) for g in gens])
                noise = noise.clamp_(1e-9, 1 - 1e-9).log_().neg_().log_()
                pick = noise.neg_().add_(logits).argmax(-1)  # [F, K]: argmax of logits + Gumbel noise
                embeds = rows[pick].requires_grad_()  # [F, K, d]
            opt.zero_grad()
            prediction = torch.zeros(n_feat, device=dev)
            for c in range(0, index.shape[1], cols):
                part = slice(c, c + cols)
                if states is None:
                    raw = self.disc.logits(embeds, texts, index[:, part], valid[:, part])
                else:
                    raw = self.disc.state_logits(embeds[:, 0], texts, index[:, part])
                target = positive[:, part].float()
                bce = F.binary_cross_entropy_with_logits(log_scale.exp() * raw + bias, target, reduction="none")
                loss_part = (bce * weight[:, part]).sum(-1)
                loss_part.sum().backward(retain_graph=soft_mode)
                prediction += loss_part.detach()
            if prior is None:
                surprisal = None
            elif soft_mode:
                surprisal = -(mix[:, 0] * prior).sum(-1)
            else:
                surprisal = -prior.gather(1, pick[:, :1])[:, 0]
            regular = torch.zeros(n_feat, device=dev) if surprisal is None else cfg.naturalness_weight * surprisal
            if soft_mode:
                # The paper's objective, with Adam on the logits: prediction + ramped entropy + naturalness.
                regular = regular + cfg.entropy_weight * (step + 1) / cfg.steps * _entropy(logits)
                regular.sum().backward()
            else:
                # Mirror step: the logits move along the standardised gradient w.r.t. the token weights (Adam's
                # per-coordinate normalisation would give every token with a positive gradient the same step).
                grad = embeds.grad @ rows.T  # [F, K, V]
                if prior is not None:
                    grad[:, 0] -= cfg.naturalness_weight * prior
                grad -= grad.mean(-1, keepdim=True)
                std = grad.square().mean(-1, keepdim=True).sqrt_().clamp_(min=1e-12)  # faster than Tensor.std
                v.sub_(grad.div_(std), alpha=cfg.lr)
            opt.step()
            if step >= cfg.steps // 2:
                # The argmax labels visited late in the descent are candidates too.
                for f, ids in enumerate(self.vocab[v.detach().argmax(-1)].tolist()):
                    seen[f].add(tuple(ids))
        losses = {
            "loss_prediction": prediction,
            "loss_entropy": _entropy(v.detach() / cfg.temperature),  # how far from one token the search ended
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
            # A label says each word once: "animals animals" is proposed as "animals".
            cands = {tuple(dict.fromkeys(c)) for c in cands}
            proposals.append(sorted(cands))
        return proposals, losses, cfg.steps

    @torch.no_grad()
    def _exhaustive(self, batch: FeatureBatch, texts: object) -> list[list[tuple[int, ...]]]:
        proposals = []
        for start in range(0, len(batch.index), 8):
            part = slice(start, start + 8)
            raw = self.disc.token_logits(self.vocab, texts, batch.index[part])  # [f, T, n]
            auc = batched_auc(raw, batch.positive[part, None, :], batch.train[part, None, :])
            # The best few, and every token tied with the best, so the tie rule sees them all.
            tied = (auc >= auc.max(-1, keepdim=True).values - self.config.tie_window).sum(-1).max().item()
            width = min(max(self.config.candidates, min(tied, MAX_TIED)), len(self.vocab))
            best = auc.topk(width, dim=-1).indices
            proposals += [[(int(self.vocab[i]),) for i in row] for row in best]
        return proposals

    @torch.no_grad()
    def label_logits(
        self, owner: list[int], labels: list[tuple[int, ...]], batch: FeatureBatch, texts: object, split: str = "all"
    ):
        """Raw logits [R, n] of discrete labels `labels` (token ids, any lengths) on the examples of features
        `owner` [R], on their training examples only for split "train" (a model that sees each pair runs no
        others; the rest read 0); labels of one length go through the discriminator together, SCORE_ROWS per
        pass (bounds the [labels, examples, d] gather of an embedding model)."""
        needed = batch.train if split == "train" else batch.train | batch.test
        out = torch.empty(len(labels), batch.index.shape[1], device=self.device)
        by_length: dict[int, list[int]] = {}
        for row, ids in enumerate(labels):
            by_length.setdefault(len(ids), []).append(row)
        for length, rows in by_length.items():
            for i in range(0, len(rows), SCORE_ROWS):
                part = rows[i : i + SCORE_ROWS]
                ids = torch.tensor([labels[r] for r in part], device=self.device)
                features = torch.tensor([owner[r] for r in part], device=self.device)
                index = batch.index[features]
                states = self.disc.token_states(ids[:, 0]) if length == 1 else None
                if states is not None:  # one-token labels: their kept states, no encoder pass
                    out[part] = self.disc.state_logits(states, texts, index).float()
                else:
                    out[part] = self.disc.score(self.disc.embed_tokens(ids), texts, index, needed[features]).float()
        return out

    @torch.no_grad()
    def _rerank(self, proposals: list[list[tuple[int, ...]]], batch: FeatureBatch, texts: object):
        """Score every candidate as a discrete label on the training split; best first."""
        owner = [f for f, cands in enumerate(proposals) for _ in cands]
        labels = [ids for cands in proposals for ids in cands]
        raw = self.label_logits(owner, labels, batch, texts, split="train")
        rows = torch.tensor(owner, device=self.device)
        aucs = batched_auc(raw, batch.positive[rows], batch.train[rows])
        ranked: list[list[tuple[tuple[int, ...], float]]] = [[] for _ in proposals]
        for f, ids, auc in zip(owner, labels, aucs.tolist()):
            ranked[f].append((ids, auc))
        # Stable sorts: among equal scores the proposal order decides, so results are deterministic.
        return [self._name_first(sorted(r, key=lambda c: -c[1])) for r in ranked]

    def _name_first(self, ranked: list[tuple[tuple[int, ...], float]]) -> list[tuple[tuple[int, ...], float]]:
        """Candidates best AUROC first, except that among those tied with the best (within `tie_window`) the
        label most like the other tied ones leads, common words a little favoured.

        The tied labels predict equally well: they are alternative names of one concept (members, neighbours,
        the category itself), and the one nearest all of them, the medoid, names what they share; the best
        single predictor is often a frequent member ("horse") or a rare near-synonym."""
        if not ranked or self.config.tie_window <= 0:
            return ranked
        tied = [c for c in ranked if c[1] >= ranked[0][1] - self.config.tie_window][:MAX_TIED]
        vectors = F.normalize(torch.stack([self.disc.embed_tokens(c[0]).float().mean(0) for c in tied]), dim=-1)
        centrality = (vectors @ vectors.T).mean(1).cpu()
        frequency = torch.tensor([min(float(self.frequency[i]) for i in c[0]) for c in tied])
        lead = tied[int((centrality + FREQUENCY_BONUS * frequency).argmax())]
        return [lead] + [c for c in ranked if c is not lead]
