"""Label a set of features from their examples table: validate, split, search, score held out."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from workers.discriminators import Discriminator
from workers.optimiser import FeatureBatch, LabelOptimiser, OptimiserConfig, Search
from workers.scoring import best_threshold, classification_scores, roc_auc
from workers.vocab import decode_label, label_token_ids

ALTERNATIVES = 5

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
    ):
        self.disc = discriminator
        self.optimiser = LabelOptimiser(discriminator, vocab, optimiser)
        self.batch_size = batch_size
        self.test_fraction = test_fraction
        self.config_hash = config_hash

    def label(self, examples: pa.Table, feature_ids: list[int], progress=None) -> pa.Table:
        """Labels table rows for `feature_ids` (features absent from `examples` are dead)."""
        rows, live = self._triage(examples, feature_ids)
        for start in range(0, len(live), self.batch_size):
            part = live[start : start + self.batch_size]
            t0 = time.perf_counter()
            searches, batch, texts = self._search(part)
            raws = self._candidate_logits(searches, batch, texts)
            seconds = (time.perf_counter() - t0) / len(part)
            rows += [self._scored_row(ex, s, raw, seconds) for ex, s, raw in zip(part, searches, raws)]
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

    @torch.no_grad()
    def _candidate_logits(self, searches: list[Search], batch: FeatureBatch, texts) -> list[np.ndarray]:
        """Per feature, the raw logits [alternatives, n] of its best candidates on all its examples; the
        candidates of the whole batch go through the discriminator together."""
        owner = [f for f, s in enumerate(searches) for _ in s.candidates[:ALTERNATIVES]]
        ids = [c[0] for s in searches for c in s.candidates[:ALTERNATIVES]]
        raw = self.optimiser.label_logits(owner, ids, batch, texts).cpu().numpy()
        return np.split(raw, np.cumsum([min(len(s.candidates), ALTERNATIVES) for s in searches])[:-1])

    def _scored_row(self, ex: FeatureExamples, search: Search, raw: np.ndarray, seconds: float) -> dict:
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
        )

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
