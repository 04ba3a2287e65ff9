"""Harvest: run the subject model and SAE over corpus contexts and keep, per latent, what labeling needs.

Per latent a context's activation is the maximum over its tokens. A harvest keeps a streaming top-k of
contexts per latent (with per-token activations), firing counts and maxima, and every latent's
activation on a fixed random pool of contexts from which non-activating examples are drawn. Partial
harvests of disjoint corpus chunks merge exactly: ties are broken by context id, so any sharding gives
the same result as one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from workers.sae import SAE
from workers.subject import SubjectModel

EXAMPLES_SCHEMA = pa.schema(
    [
        ("feature_id", pa.int64()),
        ("text", pa.string()),
        ("activation", pa.float32()),
        ("kind", pa.string()),
        ("context_id", pa.int64()),
        ("tokens", pa.list_(pa.string())),
        ("token_activations", pa.list_(pa.float32())),
    ]
)
LATENTS_SCHEMA = pa.schema(
    [("feature_id", pa.int64()), ("n_active", pa.int64()), ("density", pa.float64()), ("max_activation", pa.float32())]
)


@dataclass
class Harvest:
    """Per-latent top-k contexts and statistics over some set of contexts."""

    top_acts: np.ndarray  # [L, k] float32, -inf where empty
    top_ctx: np.ndarray  # [L, k] int64, -1 where empty
    top_tokens: np.ndarray  # [L, k, T] float32 per-token activations of those contexts
    n_active: np.ndarray  # [L] int64 contexts where the latent fires
    max_act: np.ndarray  # [L] float32
    n_contexts: int = 0
    tokens: dict[int, list[str]] = field(default_factory=dict)  # context id -> its tokens
    pool_ctx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [m] pool contexts seen
    pool_acts: np.ndarray | None = None  # [m, L] float32

    @classmethod
    def empty(cls, n_latents: int, k: int, length: int) -> Harvest:
        return cls(
            top_acts=np.full((n_latents, k), -np.inf, np.float32),
            top_ctx=np.full((n_latents, k), -1, np.int64),
            top_tokens=np.zeros((n_latents, k, length), np.float32),
            n_active=np.zeros(n_latents, np.int64),
            max_act=np.zeros(n_latents, np.float32),
            pool_acts=np.zeros((0, n_latents), np.float32),
        )

    def merge(self, other: Harvest) -> Harvest:
        """Combine harvests of disjoint contexts; the top-k of the union, ties to the lower context id."""
        k = self.top_acts.shape[1]
        acts = np.concatenate([self.top_acts, other.top_acts], 1)
        ctx = np.concatenate([self.top_ctx, other.top_ctx], 1)
        order = np.lexsort((np.where(ctx < 0, np.iinfo(np.int64).max, ctx), -acts), axis=-1)[:, :k]
        top_ctx = np.take_along_axis(ctx, order, 1)
        rows = np.arange(len(acts))[:, None]
        top_tokens = np.concatenate([self.top_tokens, other.top_tokens], 1)[rows, order]
        kept = set(top_ctx[top_ctx >= 0].tolist())
        tokens = {c: t for part in (self.tokens, other.tokens) for c, t in part.items() if c in kept}
        return Harvest(
            top_acts=np.take_along_axis(acts, order, 1),
            top_ctx=top_ctx,
            top_tokens=top_tokens,
            n_active=self.n_active + other.n_active,
            max_act=np.maximum(self.max_act, other.max_act),
            n_contexts=self.n_contexts + other.n_contexts,
            tokens=tokens,
            pool_ctx=np.concatenate([self.pool_ctx, other.pool_ctx]),
            pool_acts=np.concatenate([self.pool_acts, other.pool_acts]),
        )


class Harvester:
    """Holds a subject model and an SAE; turns batches of contexts into Harvests."""

    def __init__(self, subject: SubjectModel, sae: SAE, context_length: int, top_k: int, batch_size: int = 64):
        if subject.d_model != sae.cfg.d_in:
            raise ValueError(
                f"SAE d_in={sae.cfg.d_in} does not match the width {subject.d_model} of "
                f"{subject.name!r} at hook {subject.hook!r}"
            )
        self.subject = subject
        self.sae = sae
        self.length = context_length
        self.k = top_k
        self.batch_size = batch_size

    @torch.no_grad()
    def harvest(self, texts: list[str], first_id: int, pool: np.ndarray) -> Harvest:
        """Harvest contexts `texts` with ids first_id, first_id+1, ...; `pool` holds the pool's context ids."""
        total = Harvest.empty(self.sae.cfg.d_sae, self.k, self.length)
        # Batches of similar length waste little compute on padding; the merge is order-independent.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            picked = order[start : start + self.batch_size]
            total = total.merge(self._batch([texts[i] for i in picked], first_id + picked, pool))
        return total

    def _batch(self, texts: list[str], ids: np.ndarray, pool: np.ndarray) -> Harvest:
        acts, mask, tokens = self.subject.activations(texts, self.length + 2)
        n, seq = mask.shape
        z = torch.zeros(n, seq, self.sae.cfg.d_sae)
        z[mask] = self.sae.encode(acts[mask])
        # Left-align each context's real tokens so position j is its j-th token, whatever the tokenizer's specials.
        aligned = torch.zeros(n, self.length, self.sae.cfg.d_sae)
        for i in range(n):
            real = z[i][mask[i]][: self.length]
            aligned[i, : len(real)] = real
        per_ctx = aligned.amax(1)  # [n, L]
        active = (per_ctx > 0).numpy()
        top_acts = np.where(active.T, per_ctx.T.numpy(), -np.inf).astype(np.float32)
        in_pool = np.isin(ids, pool)
        part = Harvest(
            top_acts=top_acts,
            top_ctx=np.where(active.T, ids[None, :], -1),
            top_tokens=aligned.permute(2, 0, 1).numpy(),
            n_active=active.sum(0).astype(np.int64),
            max_act=per_ctx.amax(0).clamp(min=0).numpy(),
            n_contexts=n,
            tokens={int(c): t[: self.length] for c, t in zip(ids, tokens)},
            pool_ctx=ids[in_pool],
            pool_acts=per_ctx.numpy()[in_pool],
        )
        empty = Harvest.empty(self.sae.cfg.d_sae, self.k, self.length)
        # Merging into an empty harvest trims the batch to its top-k per latent.
        return empty.merge(part)


def negative_pool(n_contexts: int, size: int, seed: int) -> np.ndarray:
    """Seeded sample of context ids whose activations are kept for every latent (sorted)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_contexts, size=min(size, n_contexts), replace=False))


def examples_table(h: Harvest, feature_ids: list[int], texts: list[str], n_negatives: int, seed: int) -> pa.Table:
    """Examples rows for `feature_ids`: top contexts with per-token detail, then random non-activating ones."""
    cols: dict[str, list] = {name: [] for name in EXAMPLES_SCHEMA.names}

    def add(fid, ctx, act, kind, tokens=None, token_acts=None):
        cols["feature_id"].append(fid)
        cols["text"].append(texts[ctx])
        cols["activation"].append(float(act))
        cols["kind"].append(kind)
        cols["context_id"].append(int(ctx))
        cols["tokens"].append(tokens)
        cols["token_activations"].append(token_acts)

    pool_order = np.argsort(h.pool_ctx)
    pool_ctx, pool_acts = h.pool_ctx[pool_order], h.pool_acts[pool_order]
    for fid in feature_ids:
        if h.n_active[fid] == 0:
            continue  # dead: no examples; the labeler marks it
        for j in np.flatnonzero(h.top_ctx[fid] >= 0):
            ctx = int(h.top_ctx[fid, j])
            toks = h.tokens[ctx]
            add(fid, ctx, h.top_acts[fid, j], "top", toks, h.top_tokens[fid, j, : len(toks)].tolist())
        quiet = pool_ctx[pool_acts[:, fid] <= 0]
        rng = np.random.default_rng([seed, fid])
        for ctx in rng.permutation(quiet)[:n_negatives]:
            add(fid, int(ctx), 0.0, "random")
    return pa.Table.from_pydict(cols, schema=EXAMPLES_SCHEMA)


def latents_table(h: Harvest, feature_ids: list[int]) -> pa.Table:
    """Firing count, density and maximum activation per latent."""
    ids = np.asarray(feature_ids, dtype=np.int64)
    return pa.Table.from_pydict(
        {
            "feature_id": ids,
            "n_active": h.n_active[ids],
            "density": h.n_active[ids] / max(h.n_contexts, 1),
            "max_activation": h.max_act[ids],
        },
        schema=LATENTS_SCHEMA,
    )
