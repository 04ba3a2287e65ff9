"""Harvest: run the subject model and SAE over corpus contexts and keep, per latent, what labeling needs.

Per latent a context's activation is the maximum over its tokens. A harvest keeps, per latent, two
bounded reservoirs of contexts with their per-token activations: the top-k by activation, and a
uniform sample of the active contexts chosen by a seeded hash priority of (context, latent), from which
activation-quantile examples are drawn. It also keeps firing counts and maxima, and which latents fire on
a fixed random pool of contexts (random and hard negatives are drawn from it). Both reservoirs keep the
entries with the smallest (key, context id), so partial harvests of disjoint corpus chunks merge exactly:
any sharding gives the same result as one pass.

Memory is bounded by the dictionary size, never by the corpus: the reservoirs hold
L x (top_k + sample) x context_length float16 values, the pool one bit per (pool context, latent), and a
batch is encoded in groups small enough that group x longest context x L float32 stays near 32 MiB.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

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
# Encode at most this many (token, latent) float32 values at once: bounds a batch's memory at any width.
GROUP_VALUES = 1 << 23
# The quantile reservoir holds this many times the quantile examples asked for, so bins can be filled.
SAMPLE_OVERSAMPLING = 2
# Token strings of contexts no reservoir keeps are dropped every this many batches, so they never pile up.
PRUNE_EVERY = 32
_NO_CTX = np.iinfo(np.int64).max


def priority(ctx: np.ndarray, latent: np.ndarray, seed: int) -> np.ndarray:
    """Seeded hash of (context id, latent) pairs, uniform in [0, 1): the same on any shard that sees the pair."""
    with np.errstate(over="ignore"):
        x = ctx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= latent.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0xD1B54A32D192ED03)
        # splitmix64 finaliser: consecutive ids give unrelated priorities.
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass
class Reservoir:
    """Per latent, the `size` entries with the smallest (key, context id), with their per-token activations."""

    key: np.ndarray  # [L, n] float64, +inf where empty
    ctx: np.ndarray  # [L, n] int64, -1 where empty
    act: np.ndarray  # [L, n] float32 context activation
    tokens: np.ndarray  # [L, n, T] float16 per-token activations

    @classmethod
    def empty(cls, n_latents: int, size: int, length: int) -> Reservoir:
        return cls(
            key=np.full((n_latents, size), np.inf),
            ctx=np.full((n_latents, size), -1, np.int64),
            act=np.zeros((n_latents, size), np.float32),
            tokens=np.zeros((n_latents, size, length), np.float16),
        )

    def bound(self) -> np.ndarray:
        """[L] the largest key kept; a candidate with a larger key cannot enter."""
        return self.key[:, -1] if self.key.shape[1] else np.full(len(self.key), -np.inf)

    def insert(self, rows: np.ndarray, key: np.ndarray, ctx: np.ndarray, act: np.ndarray, tokens: np.ndarray) -> None:
        """Merge candidates [R, w] (empty slots: key +inf, ctx -1) into the distinct latents `rows`, in place."""
        n = self.key.shape[1]
        keys = np.concatenate([self.key[rows], key], 1)
        ctxs = np.concatenate([self.ctx[rows], ctx], 1)
        order = np.lexsort((np.where(ctxs < 0, _NO_CTX, ctxs), keys), axis=-1)[:, :n]
        r = np.arange(len(rows))[:, None]
        self.key[rows] = keys[r, order]
        self.ctx[rows] = ctxs[r, order]
        self.act[rows] = np.concatenate([self.act[rows], act], 1)[r, order]
        self.tokens[rows] = np.concatenate([self.tokens[rows], tokens], 1)[r, order]

    def merge(self, other: Reservoir) -> None:
        """Merge another reservoir of disjoint contexts into this one, in place."""
        rows = np.flatnonzero((other.ctx >= 0).any(1))
        self.insert(rows, other.key[rows], other.ctx[rows], other.act[rows], other.tokens[rows])

    def insert_pairs(self, latent: np.ndarray, key: np.ndarray, ctx: np.ndarray, act: np.ndarray, tokens) -> None:
        """Insert candidates given as flat (latent, key, ctx, act, tokens[P, T]) lists."""
        if not len(latent):
            return
        order = np.argsort(latent, kind="stable")
        rows, start, counts = np.unique(latent[order], return_index=True, return_counts=True)
        row = np.repeat(np.arange(len(rows)), counts)
        slot = np.arange(len(order)) - np.repeat(start, counts)
        shape = (len(rows), int(counts.max()))
        keys, ctxs = np.full(shape, np.inf), np.full(shape, -1, np.int64)
        acts, toks = np.zeros(shape, np.float32), np.zeros((*shape, self.tokens.shape[2]), np.float16)
        keys[row, slot], ctxs[row, slot], acts[row, slot] = key[order], ctx[order], act[order]
        toks[row, slot] = tokens[order]
        self.insert(rows, keys, ctxs, acts, toks)


@dataclass
class Harvest:
    """Per-latent top-k contexts, a priority sample of active contexts, and statistics over some contexts."""

    top: Reservoir  # key = -activation: the top-k, ties to the lower context id
    sample: Reservoir  # key = priority(context, latent): a uniform sample of the active contexts
    n_active: np.ndarray  # [L] int64 contexts where the latent fires
    max_act: np.ndarray  # [L] float32
    n_contexts: int = 0
    tokens: dict[int, list[str]] = field(default_factory=dict)  # context id -> its tokens
    pool_ctx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [m] pool contexts seen
    pool_bits: np.ndarray | None = None  # [m, ceil(L / 8)] uint8: bit l of row i = latent l fires on pool_ctx[i]

    @classmethod
    def empty(cls, n_latents: int, k: int, length: int, sample_size: int = 0) -> Harvest:
        return cls(
            top=Reservoir.empty(n_latents, k, length),
            sample=Reservoir.empty(n_latents, sample_size, length),
            n_active=np.zeros(n_latents, np.int64),
            max_act=np.zeros(n_latents, np.float32),
            pool_bits=np.zeros((0, (n_latents + 7) // 8), np.uint8),
        )

    @property
    def n_latents(self) -> int:
        return len(self.n_active)

    def merge(self, other: Harvest) -> Harvest:
        """Fold in a harvest of disjoint contexts, in place; the result equals one pass over both."""
        # Arrays that came through Ray's object store are read-only views; the first merge copies them.
        for part in (self, self.top, self.sample):
            for f in fields(part):
                value = getattr(part, f.name)
                if isinstance(value, np.ndarray) and not value.flags.writeable:
                    setattr(part, f.name, value.copy())
        self.top.merge(other.top)
        self.sample.merge(other.sample)
        self.n_active += other.n_active
        np.maximum(self.max_act, other.max_act, out=self.max_act)
        self.n_contexts += other.n_contexts
        self.tokens.update(other.tokens)
        self.pool_ctx = np.concatenate([self.pool_ctx, other.pool_ctx])
        self.pool_bits = np.concatenate([self.pool_bits, other.pool_bits])
        self.prune_tokens()
        return self

    def prune_tokens(self) -> None:
        """Drop the token strings of contexts no reservoir keeps."""
        kept = set(np.unique(np.concatenate([self.top.ctx.ravel(), self.sample.ctx.ravel()])).tolist())
        self.tokens = {c: t for c, t in self.tokens.items() if c in kept}

    def pool_active(self, feature_id: int) -> np.ndarray:
        """[m] whether latent `feature_id` fires on each pool context."""
        return ((self.pool_bits[:, feature_id >> 3] >> (7 - (feature_id & 7))) & 1).astype(bool)


class Harvester:
    """Holds a subject model and an SAE; turns batches of contexts into Harvests."""

    def __init__(
        self,
        subject: SubjectModel,
        sae: SAE,
        context_length: int,
        top_k: int,
        batch_size: int = 64,
        sample_size: int = 0,
        seed: int = 0,
    ):
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
        self.sample_size = sample_size
        self.seed = seed

    @torch.no_grad()
    def harvest(self, texts: list[str], first_id: int, pool: np.ndarray) -> Harvest:
        """Harvest contexts `texts` with ids first_id, first_id+1, ...; `pool` holds the pool's context ids."""
        total = Harvest.empty(self.sae.cfg.d_sae, self.k, self.length, self.sample_size)
        # Batches of similar length waste little compute on padding; the result is order-independent.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for n, start in enumerate(range(0, len(texts), self.batch_size), 1):
            picked = order[start : start + self.batch_size]
            self._batch(total, [texts[i] for i in picked], first_id + picked, pool)
            if n % PRUNE_EVERY == 0:
                total.prune_tokens()
        total.prune_tokens()
        return total

    def _batch(self, total: Harvest, texts: list[str], ids: np.ndarray, pool: np.ndarray) -> None:
        """Run one batch through model and SAE and fold it into `total`."""
        acts, mask, tokens = self.subject.activations(texts, self.length + 2)
        mask &= mask.cumsum(1) <= self.length  # each context's first `length` real tokens
        total.n_contexts += len(texts)
        total.tokens.update({int(c): t[: self.length] for c, t in zip(ids, tokens)})
        in_pool = np.isin(ids, pool)
        total.pool_ctx = np.concatenate([total.pool_ctx, ids[in_pool]])
        # Groups hold about GROUP_VALUES (token, latent) values at the batch's longest context length.
        width = max(1, int(mask.sum(1).max()))
        group = max(1, GROUP_VALUES // (width * self.sae.cfg.d_sae))
        bits = []
        for start in range(0, len(texts), group):
            rows = slice(start, start + group)
            bits.append(self._group(total, acts[rows], mask[rows], ids[rows]))
        total.pool_bits = np.concatenate([total.pool_bits, np.concatenate(bits)[in_pool]])

    def _group(self, total: Harvest, acts: torch.Tensor, mask: torch.Tensor, ids: np.ndarray) -> np.ndarray:
        """Encode a group of contexts, update `total`; return the packed firing bits of each context."""
        n, n_latents = len(ids), self.sae.cfg.d_sae
        # Left-align each context's real tokens: position j is its j-th token, whatever the specials.
        width = max(1, int(mask.sum(1).max()))
        where = mask.nonzero()
        flat = where[:, 0] * width + (mask.cumsum(1) - 1)[mask]
        aligned = torch.zeros(n * width, n_latents)
        aligned[flat] = self.sae.encode(acts[mask].to(self.sae.W_enc.device)).float().cpu()
        aligned = aligned.view(n, width, n_latents)
        per_ctx = aligned.amax(1)  # [n, L]; latents are >= 0, so padding (0) never wins
        active = (per_ctx > 0).numpy()
        values = per_ctx.numpy()
        total.n_active += active.sum(0)
        np.maximum(total.max_act, values.max(0), out=total.max_act)
        ci, li = np.nonzero(active)
        act = values[ci, li]
        # Only pairs that can enter a reservoir are gathered: few once the reservoirs fill.
        top = -act <= total.top.bound()[li]
        self._offer(total.top, li[top], -act[top].astype(np.float64), ids, ci[top], act[top], aligned)
        if self.sample_size:
            prio = priority(ids[ci], li, self.seed)
            take = prio <= total.sample.bound()[li]
            self._offer(total.sample, li[take], prio[take], ids, ci[take], act[take], aligned)
        return np.packbits(active, axis=1)

    @staticmethod
    def _offer(res: Reservoir, li, key, ids, ci, act, aligned: torch.Tensor) -> None:
        """Insert (latent, context) candidates into `res` with their per-token activations."""
        tokens = aligned[torch.from_numpy(ci), :, torch.from_numpy(li)].numpy()
        res.insert_pairs(li, key, ids[ci], act, np.pad(tokens, ((0, 0), (0, res.tokens.shape[2] - tokens.shape[1]))))


def negative_pool(n_contexts: int, size: int, seed: int) -> np.ndarray:
    """Seeded sample of context ids whose firing is kept for every latent (sorted)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_contexts, size=min(size, n_contexts), replace=False))


def quantile_picks(h: Harvest, fid: int, bins: int, per_bin: int, exclude: set[int]) -> list[int]:
    """Slots of h.sample for feature `fid`: per activation bin of (0, max], the `per_bin` lowest priorities."""
    res, top_max = h.sample, float(h.max_act[fid])
    slots = [j for j in np.flatnonzero(res.ctx[fid] >= 0) if int(res.ctx[fid, j]) not in exclude]
    if not slots or top_max <= 0:
        return []
    # Bin q holds activations in (q * max / Q, (q + 1) * max / Q]; the sample is sorted by priority already.
    which = np.clip(np.ceil(res.act[fid, slots] * bins / top_max).astype(int) - 1, 0, bins - 1)
    taken = np.zeros(bins, int)
    picks = []
    for slot, q in zip(slots, which):
        if taken[q] < per_bin:
            taken[q] += 1
            picks.append(int(slot))
    return picks


def hard_negative_ids(
    h: Harvest, feature_ids: list[int], texts: list[str], n: int, embed: Callable[[list[str]], torch.Tensor]
) -> dict[int, list[int]]:
    """Per feature, the `n` quiet pool contexts nearest (cosine) to the mean embedding of its top contexts."""
    pool = np.sort(h.pool_ctx)
    order = np.argsort(h.pool_ctx)
    pool_emb = torch.nn.functional.normalize(embed([texts[c] for c in pool]).float(), dim=-1)
    out: dict[int, list[int]] = {}
    for fid in feature_ids:
        tops = h.top.ctx[fid][h.top.ctx[fid] >= 0]
        if not len(tops):
            continue
        centre = torch.nn.functional.normalize(embed([texts[c] for c in tops]).float().mean(0), dim=0)
        sims = (pool_emb @ centre).numpy()
        sims[h.pool_active(fid)[order]] = -np.inf
        best = np.argsort(-sims, kind="stable")[:n]
        out[fid] = [int(pool[i]) for i in best if np.isfinite(sims[i])]
    return out


def examples_table(
    h: Harvest,
    feature_ids: list[int],
    texts: list[str],
    n_negatives: int,
    seed: int,
    quantile_bins: int = 0,
    quantile_per_bin: int = 0,
    hard: dict[int, list[int]] | None = None,
) -> pa.Table:
    """Examples rows per feature: top contexts and quantile samples with per-token detail, then negatives."""
    cols: dict[str, list] = {name: [] for name in EXAMPLES_SCHEMA.names}

    def add(fid, ctx, act, kind, token_acts=None):
        toks = h.tokens[ctx] if token_acts is not None else None
        cols["feature_id"].append(fid)
        cols["text"].append(texts[ctx])
        cols["activation"].append(float(act))
        cols["kind"].append(kind)
        cols["context_id"].append(int(ctx))
        cols["tokens"].append(toks)
        cols["token_activations"].append(None if toks is None else token_acts[: len(toks)].astype(np.float32).tolist())

    for fid in feature_ids:
        if h.n_active[fid] == 0:
            continue  # dead: no examples; the labeler marks it
        top = h.top
        for j in np.flatnonzero(top.ctx[fid] >= 0):
            add(fid, int(top.ctx[fid, j]), top.act[fid, j], "top", top.tokens[fid, j])
        if quantile_bins and quantile_per_bin:
            shown = set(top.ctx[fid].tolist())
            for j in quantile_picks(h, fid, quantile_bins, quantile_per_bin, shown):
                add(fid, int(h.sample.ctx[fid, j]), h.sample.act[fid, j], "quantile", h.sample.tokens[fid, j])
        quiet = h.pool_ctx[~h.pool_active(fid)]
        rng = np.random.default_rng([seed, fid])
        randoms = [int(c) for c in rng.permutation(np.sort(quiet))[:n_negatives]]
        for ctx in randoms:
            add(fid, ctx, 0.0, "random")
        for ctx in (hard or {}).get(fid, []):
            if ctx not in randoms:
                add(fid, ctx, 0.0, "hard")
    return pa.Table.from_pydict(cols, schema=EXAMPLES_SCHEMA)


def latents_table(h: Harvest, feature_ids: list[int]) -> pa.Table:
    """Firing count, density and maximum activation per latent (n_active = 0: a dead latent)."""
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
