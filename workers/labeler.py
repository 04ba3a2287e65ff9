"""Label a set of features from their examples table: validate, split, search, name, score held out."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from workers.discriminators import Discriminator
from workers.namers import Namer
from workers.optimiser import FeatureBatch, LabelOptimiser, OptimiserConfig, Search
from workers.scoring import batched_auc, best_threshold, classification_scores, roc_auc
from workers.vocab import decode_label, label_token_ids

ALTERNATIVES = 5
PROPOSALS = 16
"""category proposals the namer makes per feature, each verified by the discriminator"""
NAMING_MARGIN = 1.0
"""the search's first label gives way only to a label the namer scores this much higher (log-probability): the
tied labels predict about equally well, and a weak preference is not worth a change"""

LABELS_SCHEMA = pa.schema(
    [
        ("feature_id", pa.int64()),
        ("label", pa.string()),
        ("score", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("balanced_accuracy", pa.float64()),
        ("f1", pa.float64()),
        ("train_score", pa.float64()),
        ("alternatives", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
        ("label_source", pa.string()),
        (
            "proposals",
            pa.list_(
                pa.struct(
                    [
                        ("label", pa.string()),
                        ("train_score", pa.float64()),
                        ("namer_score", pa.float64()),
                        ("verified", pa.bool_()),
                    ]
                )
            ),
        ),
        ("namer", pa.string()),
        ("namer_error", pa.string()),
        ("loss_prediction", pa.float64()),
        ("loss_entropy", pa.float64()),
        ("loss_naturalness", pa.float64()),
        ("loss_total", pa.float64()),
        ("steps", pa.int64()),
        ("seconds", pa.float64()),
        ("n_train", pa.int64()),
        ("n_test", pa.int64()),
        ("n_active", pa.int64()),
        ("empty_texts", pa.int64()),
        ("discriminator", pa.string()),
        ("optimiser", pa.string()),
        ("label_tokens", pa.int64()),
        ("config_hash", pa.string()),
    ]
)


@dataclass
class FeatureExamples:
    """One feature's usable examples."""

    feature_id: int
    texts: list[str]
    positive: np.ndarray
    test: np.ndarray
    empty_texts: int


@dataclass
class Named:
    """What naming did to one feature's search: where its label came from, the namer's proposals with their
    training AUROC and whether they were verified, and the namer's error on its batch, if any."""

    source: str = "search"
    proposals: list[dict] = field(default_factory=list)
    error: str | None = None


def check_examples(table: pa.Table) -> None:
    """Refuse an examples table without the required columns or with non-finite activations."""
    required = {"feature_id": pa.types.is_integer, "text": pa.types.is_string, "activation": pa.types.is_floating}
    for name, ok in required.items():
        if name not in table.column_names:
            raise ValueError(f"examples table has no column {name!r}; found {table.column_names}")
        if not ok(table.schema.field(name).type):
            raise ValueError(
                f"examples column {name!r} has type {table.schema.field(name).type}; "
                "expected feature_id int64, text string, activation float32"
            )
    act = table.column("activation").to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(act)
    if bad.any():
        ids = np.unique(table.column("feature_id").to_numpy()[bad])
        raise ValueError(f"examples table has NaN or infinite activations for feature(s) {ids[:10].tolist()}")
    if "split" in table.column_names:
        splits = set(table.column("split").unique().to_pylist()) - {None}
        if not splits <= {"train", "test"}:
            raise ValueError(f"examples column 'split' holds {sorted(splits)}; expected 'train' or 'test'")


def group_examples(table: pa.Table, test_fraction: float, seed: int) -> dict[int, FeatureExamples]:
    """Split the table by feature; a missing `split` column gets a seeded stratified split per feature."""
    cols = table.to_pydict()
    by_feature: dict[int, list[int]] = {}
    for row, fid in enumerate(cols["feature_id"]):
        by_feature.setdefault(int(fid), []).append(row)
    out = {}
    for fid, rows in by_feature.items():
        keep = [r for r in rows if cols["text"][r] and cols["text"][r].strip()]
        positive = np.array([cols["activation"][r] > 0 for r in keep], dtype=bool)
        if "split" in cols:
            test = np.array([cols["split"][r] == "test" for r in keep], dtype=bool)
        else:
            test = stratified_test_mask(positive, test_fraction, seed + fid)
        out[fid] = FeatureExamples(fid, [cols["text"][r] for r in keep], positive, test, len(rows) - len(keep))
    return out


def stratified_test_mask(positive: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded held-out mask taking `fraction` of each class (at least one where a class has two)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(positive), dtype=bool)
    for cls in (True, False):
        members = np.flatnonzero(positive == cls)
        n = int(round(fraction * len(members)))
        n = max(n, 1) if len(members) >= 2 else 0
        test[rng.permutation(members)[:n]] = True
    return test


class Labeler:
    """Holds a discriminator and labels any number of features, `batch_size` at a time."""

    def __init__(
        self,
        discriminator: Discriminator,
        vocab: torch.Tensor,
        optimiser: OptimiserConfig,
        batch_size: int = 64,
        test_fraction: float = 0.3,
        config_hash: str = "",
        namer: Namer | None = None,
        proposals: int = PROPOSALS,
    ):
        self.disc = discriminator
        self.optimiser = LabelOptimiser(discriminator, vocab, optimiser)
        self.batch_size = batch_size
        self.test_fraction = test_fraction
        self.config_hash = config_hash
        self.namer = namer
        self.proposals = proposals

    def label(self, examples: pa.Table, feature_ids: list[int], progress=None) -> pa.Table:
        """Labels table rows for `feature_ids` (features absent from `examples` are dead)."""
        rows, live = self._triage(examples, feature_ids)
        for start in range(0, len(live), self.batch_size):
            part = live[start : start + self.batch_size]
            t0 = time.perf_counter()
            searches, batch, texts = self._search(part)
            named = self._name(searches, batch, texts)
            raws = self._candidate_logits(searches, batch, texts)
            seconds = (time.perf_counter() - t0) / len(part)
            rows += [self._scored_row(ex, s, raw, seconds, n) for ex, s, raw, n in zip(part, searches, raws, named)]
            if progress is not None:
                progress(len(part))
        rows.sort(key=lambda r: r["feature_id"])
        return pa.Table.from_pylist(rows, schema=LABELS_SCHEMA)

    def score_labels(self, examples: pa.Table, labels: dict[int, str], progress=None) -> pa.Table:
        """Labels table rows for given labels (feature id -> label text), scored exactly as found labels are:
        same split, same held-out metrics. `train_score` is the label's training-split ROC AUC."""
        rows, live = self._triage(examples, list(labels))
        for start in range(0, len(live), self.batch_size):
            part = live[start : start + self.batch_size]
            t0 = time.perf_counter()
            batch, texts = self._encode(part)
            given = [label_token_ids(self.disc.tokenizer, labels[ex.feature_id]) for ex in part]
            raws = self.optimiser.label_logits(list(range(len(part))), given, batch, texts).cpu().numpy()
            seconds = (time.perf_counter() - t0) / len(part)
            for ex, ids, raw in zip(part, given, raws):
                train = roc_auc(raw[: len(ex.texts)][~ex.test], ex.positive[~ex.test])
                rows.append(self._scored_row(ex, Search([(ids, train)]), raw[None], seconds))
            if progress is not None:
                progress(len(part))
        rows.sort(key=lambda r: r["feature_id"])
        return pa.Table.from_pylist(rows, schema=LABELS_SCHEMA)

    def _triage(self, examples: pa.Table, feature_ids: list[int]) -> tuple[list[dict], list[FeatureExamples]]:
        """(rows of the features that cannot be labeled, examples of those that can)."""
        check_examples(examples)
        groups = group_examples(examples, self.test_fraction, self.optimiser.config.seed)
        rows, live = [], []
        for fid in feature_ids:
            ex = groups.get(fid)
            problem = _problem(ex)
            if problem is None:
                live.append(ex)
            else:
                rows.append(self._row(fid, status=problem[0], error=problem[1], ex=ex))
        return rows, live

    def _search(self, part: list[FeatureExamples]):
        batch, texts = self._encode(part)
        return self.optimiser.search(batch, texts), batch, texts

    def _encode(self, part: list[FeatureExamples]) -> tuple[FeatureBatch, object]:
        """The features' examples as one batch over their encoded unique texts."""
        unique: dict[str, int] = {}
        for ex in part:
            for t in ex.texts:
                unique.setdefault(t, len(unique))
        texts = self.disc.encode_texts(list(unique))
        n = max(len(ex.texts) for ex in part)
        index = torch.zeros(len(part), n, dtype=torch.long)
        positive = torch.zeros(len(part), n, dtype=torch.bool)
        valid = torch.zeros(len(part), n, dtype=torch.bool)
        test = torch.zeros(len(part), n, dtype=torch.bool)
        for f, ex in enumerate(part):
            m = len(ex.texts)
            index[f, :m] = torch.tensor([unique[t] for t in ex.texts])
            positive[f, :m] = torch.from_numpy(ex.positive)
            valid[f, :m] = True
            test[f, :m] = torch.from_numpy(ex.test)
        masks = (index, positive, valid & ~test, valid & test)
        ids = [ex.feature_id for ex in part]
        return FeatureBatch(ids, *(m.to(self.optimiser.device) for m in masks)), texts

    def _name(self, searches: list[Search], batch: FeatureBatch, texts) -> list[Named]:
        """Name each feature of the batch (see `_verify_and_choose`); where the namer fails, the searches stand
        as they are and each feature's row says why."""
        if self.namer is None:
            return [Named() for _ in searches]
        tok = self.disc.tokenizer
        by_score = [sorted(s.candidates, key=lambda c: -c[1]) for s in searches]
        try:
            namings = self.namer.name_features(
                [[decode_label(tok, ids) for ids, _ in cands] for cands in by_score],
                self.proposals,
                self.optimiser.config.label_tokens,
            )
            return self._verify_and_choose(searches, namings, batch, texts)
        except Exception as err:  # noqa: BLE001 - a namer failure must never cost the search's labels
            error = f"{type(err).__name__}: {err}"
            print(f"namer {self.namer.name!r} failed on features {batch.feature_ids[:5]}...: {error}", file=sys.stderr)
            return [Named(error=error) for _ in searches]

    @torch.no_grad()
    def _verify_and_choose(self, searches: list[Search], namings, batch: FeatureBatch, texts) -> list[Named]:
        """Score every proposal as a discrete label on its feature's training split, as found labels are; a
        proposal is verified when it is within `tie_window` of the best candidate. Among the tied candidates
        and the verified proposals that also reach the search's first label on training (a word from outside
        the search must not trade accuracy for generality: picked among many, its training score flatters it),
        the label the namer scores highest as the name of the others leads where it beats the search's first
        label by NAMING_MARGIN (or the namer cannot read that one); its feature's candidates are reordered in
        place."""
        tok, window, k = self.disc.tokenizer, self.optimiser.config.tie_window, self.optimiser.config.label_tokens
        owner, ids, texts_of = [], [], []
        for f, naming in enumerate(namings):
            for text, _ in naming.proposals:
                token_ids = label_token_ids(tok, text)
                if 1 <= len(token_ids) <= k:
                    owner.append(f)
                    ids.append(token_ids)
                    texts_of.append(text)
        aucs = []
        if ids:
            raw = self.optimiser.label_logits(owner, ids, batch, texts, split="train")
            rows = torch.tensor(owner, device=self.optimiser.device)
            aucs = batched_auc(raw, batch.positive[rows], batch.train[rows]).tolist()
        verified: list[dict[str, tuple[tuple[int, ...], float]]] = [{} for _ in searches]
        for f, token_ids, text, auc in zip(owner, ids, texts_of, aucs):
            verified[f][text] = (token_ids, auc)
        out = []
        for f, (search, naming) in enumerate(zip(searches, namings)):
            best = max(c[1] for c in search.candidates)
            proposed = dict(naming.proposals)
            rows = [
                {
                    "label": text,
                    "train_score": verified[f][text][1] if text in verified[f] else None,
                    "namer_score": score,
                    "verified": text in verified[f] and verified[f][text][1] >= best - window,
                }
                for text, score in naming.proposals
            ]
            pool = [(c, naming.scores.get(decode_label(tok, c[0]))) for c in search.candidates if c[1] >= best - window]
            floor = max(best - window, search.candidates[0][1])
            pool += [
                (verified[f][r["label"]], proposed[r["label"]])
                for r in rows
                if r["verified"] and verified[f][r["label"]][1] >= floor
            ]
            judged = [(score, c) for c, score in pool if score is not None]
            current = next((score for score, c in judged if c[0] == search.candidates[0][0]), float("-inf"))
            source = "search"
            if judged and max(j[0] for j in judged) >= current + NAMING_MARGIN:
                lead = max(judged, key=lambda j: (j[0], j[1][1]))[1]
                found = [c for c in search.candidates if c[0] != lead[0]]
                source = "search" if len(found) < len(search.candidates) else "namer"
                search.candidates[:] = [lead] + found
            out.append(Named(source, rows))
        return out

    @torch.no_grad()
    def _candidate_logits(self, searches: list[Search], batch: FeatureBatch, texts) -> list[np.ndarray]:
        """Per feature, the raw logits [alternatives, n] of its best candidates on all its examples; the
        candidates of the whole batch go through the discriminator together."""
        owner = [f for f, s in enumerate(searches) for _ in s.candidates[:ALTERNATIVES]]
        ids = [c[0] for s in searches for c in s.candidates[:ALTERNATIVES]]
        raw = self.optimiser.label_logits(owner, ids, batch, texts).cpu().numpy()
        return np.split(raw, np.cumsum([min(len(s.candidates), ALTERNATIVES) for s in searches])[:-1])

    def _scored_row(
        self, ex: FeatureExamples, search: Search, raw: np.ndarray, seconds: float, named: Named | None = None
    ) -> dict:
        """The labels row of a searched feature, from its candidates' raw logits [alternatives, n]."""
        best = search.candidates[:ALTERNATIVES]
        m = len(ex.texts)
        train = ~ex.test
        alternatives = [
            {
                "label": decode_label(self.disc.tokenizer, c[0]),
                "score": roc_auc(raw[i, :m][ex.test], ex.positive[ex.test]),
            }
            for i, c in enumerate(best)
        ]
        top = raw[0, :m]
        threshold = best_threshold(top[train], ex.positive[train])
        cls = classification_scores(top[ex.test], ex.positive[ex.test], threshold)
        return self._row(
            ex.feature_id,
            status="ok",
            ex=ex,
            label=alternatives[0]["label"],
            score=alternatives[0]["score"],
            train_score=best[0][1],
            alternatives=alternatives,
            steps=search.steps,
            seconds=seconds,
            **cls,
            **search.losses,
            **self._naming_values(named),
        )

    def _naming_values(self, named: Named | None) -> dict:
        if named is None:  # a given label (`score_labels`): neither searched nor named
            return {}
        return {
            "label_source": named.source,
            "proposals": named.proposals,
            "namer": None if self.namer is None else self.namer.name,
            "namer_error": named.error,
        }

    def _row(self, fid: int, status: str, ex: FeatureExamples | None, error: str | None = None, **values) -> dict:
        row = dict.fromkeys(LABELS_SCHEMA.names)
        row.update(
            feature_id=fid,
            status=status,
            error=error,
            discriminator=self.disc.name,
            optimiser=self.optimiser.config.mode,
            label_tokens=self.optimiser.config.label_tokens,
            config_hash=self.config_hash,
            alternatives=[],
            proposals=[],
        )
        if ex is not None:
            row.update(
                n_train=int((~ex.test).sum()),
                n_test=int(ex.test.sum()),
                n_active=int(ex.positive.sum()),
                empty_texts=ex.empty_texts,
            )
        row.update(values)
        return row


def _problem(ex: FeatureExamples | None) -> tuple[str, str | None] | None:
    """Why a feature cannot be labeled, as (status, error), or None when it can."""
    if ex is None or not ex.positive.any():
        return "dead", None
    if ex.positive.all():
        return "failed", (
            f"feature {ex.feature_id} is active on all {len(ex.positive)} of its examples; "
            "labeling needs non-activating examples too"
        )
    for split, mask in (("training", ~ex.test), ("held-out", ex.test)):
        if not ex.positive[mask].any() or ex.positive[mask].all():
            return "failed", (
                f"feature {ex.feature_id} has no active or no inactive example in its {split} split "
                f"({int(ex.positive.sum())} active of {len(ex.positive)})"
            )
    return None
