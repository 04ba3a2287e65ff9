"""Probes: linear classifiers over pooled SAE features of labeled texts, read through the features' labels.

After Gallifant, Chen et al. (arXiv 2502.11367): a text's per-token SAE activations are pooled into one
vector (the sum over tokens of top-n one-hots, the sum, mean or maximum of the activations, or the last
token's), optionally binarised (x > threshold), and a class-balanced logistic regression is trained on
them, its regularisation chosen by stratified cross-validation on the training split alone. Baselines go
through the same classifier: the subject model's hidden state at the SAE's hook (mean-pooled and at the
last token) and TF-IDF 1-2-grams of the raw text.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler

from workers.corpus import read_columns
from workers.harvest import GROUP_VALUES
from workers.sae import SAE
from workers.subject import SubjectModel


def _top_n(z: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Per latent, on how many tokens it is among the token's n strongest active latents."""
    values, index = z.topk(min(n, z.shape[-1]), dim=-1)
    # Only active latents count: where fewer than n fire, the rest of topk is an arbitrary choice among zeros.
    hits = ((values > 0) & mask[..., None]).to(z.dtype)
    return torch.zeros(z.shape[0], z.shape[-1], dtype=z.dtype).scatter_add_(1, index.flatten(1), hits.flatten(1))


def _last(z: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """The values at each text's last real token (zeros for a text without tokens)."""
    last = (mask * torch.arange(mask.shape[1])).argmax(1)
    return z[torch.arange(len(z)), last]


# Pooling over a text's tokens: f(values [texts, tokens, width] zero outside the text, mask [texts, tokens],
# top_n) -> [texts, width]. Values are >= 0 for SAE latents, so the zeros outside a text never win the max.
POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "top-n": _top_n,
    "sum": lambda z, mask, n: z.sum(1),
    "mean": lambda z, mask, n: z.sum(1) / mask.sum(1, keepdim=True).clamp(min=1),
    "max": lambda z, mask, n: z.amax(1),
    "last": _last,
}
HIDDEN_POOLINGS = {"hidden-mean": "mean", "hidden-last": "last"}


def column(pooling: str) -> str:
    """The features-table column holding the SAE features of `pooling`."""
    return "sae_" + pooling.replace("-", "_")


FEATURES_SCHEMA = pa.schema(
    [("row", pa.int64()), ("tokens", pa.int32()), ("sae_ids", pa.list_(pa.int32()))]
    + [(column(p), pa.list_(pa.float32())) for p in POOLINGS]
    + [(name.replace("-", "_"), pa.list_(pa.float32())) for name in HIDDEN_POOLINGS]
)


class FeatureExtractor:
    """Subject model + SAE: texts in, one features-table row per text (every pooling, and the hidden states)."""

    def __init__(self, subject: SubjectModel, sae: SAE, context_length: int, top_n: int = 5, batch_size: int = 64):
        if subject.d_model != sae.cfg.d_in:
            raise ValueError(
                f"SAE d_in={sae.cfg.d_in} does not match the width {subject.d_model} of "
                f"{subject.name!r} at hook {subject.hook!r}"
            )
        self.subject, self.sae = subject, sae
        self.length, self.top_n, self.batch_size = context_length, top_n, batch_size

    @torch.no_grad()
    def pool(self, texts: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({pooling or hidden-*: [texts, width]}, tokens per text) over each text's first context_length tokens."""
        acts, mask, _ = self.subject.activations(texts, self.length + 2)
        mask &= mask.cumsum(1) <= self.length
        n_latents = self.sae.cfg.d_sae
        # Groups keep texts x tokens x latents near GROUP_VALUES float32 values, whatever the width.
        group = max(1, GROUP_VALUES // (acts.shape[1] * n_latents))
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(texts), group):
            a, m = acts[start : start + group], mask[start : start + group]
            z = torch.zeros(*m.shape, n_latents)
            z[m] = self.sae.encode(a[m].to(self.sae.W_enc.device)).float().cpu()
            for name, pooling in POOLINGS.items():
                parts.setdefault(name, []).append(pooling(z, m, self.top_n))
            hidden = a * m[..., None]
            for name, pooling in HIDDEN_POOLINGS.items():
                parts.setdefault(name, []).append(POOLINGS[pooling](hidden, m, self.top_n))
        return {name: torch.cat(p) for name, p in parts.items()}, mask.sum(1)

    def table(self, texts: list[str], first_row: int) -> pa.Table:
        """Features rows of `texts` (rows first_row, first_row + 1, ...): SAE features as one sparse list of
        latent ids active anywhere in the text with each pooling's values there, hidden states dense."""
        pooled, tokens = {}, []
        for start in range(0, len(texts), self.batch_size):
            batch, n = self.pool(texts[start : start + self.batch_size])
            for name, values in batch.items():
                pooled.setdefault(name, []).append(values)
            tokens.append(n)
        pooled = {name: torch.cat(v) for name, v in pooled.items()}
        # A latent is active somewhere in the text exactly where its max is > 0; every pooling is 0 elsewhere.
        rows, ids = pooled["max"].nonzero(as_tuple=True)
        offsets = pa.array(np.r_[0, np.cumsum(np.bincount(rows.numpy(), minlength=len(texts)))], pa.int32())

        def sparse(values: torch.Tensor) -> pa.Array:
            return pa.ListArray.from_arrays(offsets, pa.array(values.numpy(), pa.float32()))

        def dense(values: torch.Tensor) -> pa.Array:
            width = values.shape[1]
            flat = pa.array(values.numpy().ravel(), pa.float32())
            return pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1) * width, pa.int32()), flat)

        columns = {
            "row": pa.array(np.arange(first_row, first_row + len(texts)), pa.int64()),
            "tokens": pa.array(torch.cat(tokens).numpy(), pa.int32()),
            "sae_ids": pa.ListArray.from_arrays(offsets, pa.array(ids.numpy(), pa.int32())),
        }
        columns |= {column(p): sparse(pooled[p][rows, ids]) for p in POOLINGS}
        columns |= {name.replace("-", "_"): dense(pooled[name]) for name in HIDDEN_POOLINGS}
        return pa.Table.from_pydict(columns, schema=FEATURES_SCHEMA)


def sae_matrix(table: pa.Table, pooling: str, n_latents: int) -> sp.csr_matrix:
    """[texts, latents] sparse matrix of one pooling's SAE features, from features rows in row order."""
    ids = table.column("sae_ids").combine_chunks()
    values = table.column(column(pooling)).combine_chunks()
    indptr = np.asarray(ids.offsets) - ids.offsets[0].as_py()
    # Arrow buffers are read-only; the matrix owns copies it can prune in place.
    data = np.array(values.flatten(), np.float32)
    matrix = sp.csr_matrix((data, np.array(ids.flatten(), np.int32), indptr), shape=(table.num_rows, n_latents))
    matrix.eliminate_zeros()  # top-n and last are zero at many active latents
    return matrix


def hidden_matrix(table: pa.Table, name: str) -> np.ndarray:
    """[texts, d] hidden states (`name`: one of HIDDEN_POOLINGS), from features rows in row order."""
    values = table.column(name.replace("-", "_")).combine_chunks()
    return np.asarray(values.flatten(), np.float32).reshape(table.num_rows, -1)


def binarise(matrix: sp.csr_matrix, threshold: float) -> sp.csr_matrix:
    """1 where a feature is above `threshold`, else 0 (as the paper binarises pooled features)."""
    out = matrix.copy()
    out.data = (out.data > threshold).astype(np.float32)
    out.eliminate_zeros()
    return out


def read_labeled(
    path: str, text_column: str, label_column: str, limit: int | None = None
) -> tuple[list[str], list[str]]:
    """(texts, labels) of a .jsonl / .parquet file or hf: dataset: rows with a non-empty text and a label, at
    most `limit` of them; labels as strings."""
    if text_column == label_column:
        raise ValueError(f"dataset {path}: the text column and the label column are both {text_column!r}")
    data = read_columns(path, [text_column, label_column], limit, limit_option="--max-texts")
    pairs = [
        (t.strip(), str(label))
        for t, label in zip(data[text_column], data[label_column])
        if isinstance(t, str) and t.strip() and label is not None
    ][:limit]
    if not pairs:
        raise ValueError(f"dataset {path}: no row has both a non-empty {text_column!r} and a {label_column!r}")
    texts, labels = zip(*pairs)
    return list(texts), list(labels)


def check_classes(labels: list[str], dataset: str, least: int = 5, needs: str = "a stratified test split") -> None:
    """Refuse fewer than two classes, or a class with fewer than `least` examples (`needs`: what needs them)."""
    counts = Counter(labels)
    if len(counts) < 2:
        raise ValueError(f"dataset {dataset}: needs at least 2 classes to classify; found {sorted(counts)}")
    small = {c: n for c, n in sorted(counts.items()) if n < least}
    if small:
        raise ValueError(
            f"dataset {dataset}: class(es) {small} have fewer than {least} examples; each class needs at least "
            f"{least} ({needs}); drop or merge them"
        )


@dataclass(frozen=True)
class ClassifierConfig:
    """The classifier and its evaluation."""

    test_fraction: float = 0.2
    """stratified share of the texts held out for the reported scores"""
    folds: int = 5
    """stratified cross-validation folds (training split only) that choose C"""
    grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    """inverse regularisation strengths C tried"""
    seed: int = 0
    max_iter: int = 1000


# What a classifier's input goes through first: a name per input kind, each a fresh scikit-learn step.
PREPROCESSING: dict[str, Callable[[], object]] = {
    # Keeps SAE features sparse and puts each on [0, 1] (its training maximum), so a weight is the logit
    # change at the feature's largest value and weights compare across features.
    "sae": MaxAbsScaler,
    "hidden": StandardScaler,
    "tfidf": lambda: TfidfVectorizer(ngram_range=(1, 2)),
}


def split(labels: list[str], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified (train, test) row indices, each sorted."""
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed, shuffle=True
    )
    return np.sort(train), np.sort(test)


@dataclass
class ProbeFit:
    """A fitted probe's scores and weights."""

    C: float
    cv_macro_f1: float
    macro_f1: float
    accuracy: float
    classes: list[str]
    coef: np.ndarray  # [classes, features] (one row for two classes: the second class's side), after preprocessing
    features: int  # input columns (the TF-IDF vocabulary for text)
    converged: bool
    seconds: float


def fit_probe(
    x, labels: list[str], train: np.ndarray, test: np.ndarray, preprocessing: str, config: ClassifierConfig
) -> ProbeFit:
    """Choose C by stratified k-fold macro F1 on the training rows, refit on them all, score the test rows.

    `x` is a matrix (rows = texts) or, for "tfidf", an array of the texts themselves.
    """
    t0 = time.perf_counter()
    y = np.asarray(labels, dtype=object)
    model = make_pipeline(
        PREPROCESSING[preprocessing](),
        LogisticRegression(class_weight="balanced", max_iter=config.max_iter, random_state=config.seed),
    )
    search = GridSearchCV(
        model,
        {"logisticregression__C": list(config.grid)},
        scoring="f1_macro",
        cv=StratifiedKFold(config.folds, shuffle=True, random_state=config.seed),
        refit=True,
    )
    with warnings.catch_warnings():
        # Folds that stop at max_iter are part of the search; the refit's convergence is reported.
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(x[train], y[train])
    best = search.best_estimator_
    classifier = best[-1]
    predicted = best.predict(x[test])
    return ProbeFit(
        C=float(search.best_params_["logisticregression__C"]),
        cv_macro_f1=float(search.best_score_),
        macro_f1=float(f1_score(y[test], predicted, average="macro")),
        accuracy=float(accuracy_score(y[test], predicted)),
        classes=[str(c) for c in classifier.classes_],
        coef=classifier.coef_.astype(np.float32),
        features=int(classifier.coef_.shape[1]),
        converged=bool(np.all(classifier.n_iter_ < config.max_iter)),
        seconds=time.perf_counter() - t0,
    )


def top_features(fit: ProbeFit, k: int) -> list[dict]:
    """Per class, its k features of largest positive weight: (class, rank, feature_id, weight) rows."""
    # Two classes share one weight row: positive speaks for the second class, negative for the first.
    weights = np.vstack([-fit.coef[0], fit.coef[0]]) if len(fit.classes) == 2 else fit.coef
    rows = []
    for c, w in zip(fit.classes, weights):
        order = np.argsort(-w, kind="stable")[:k]
        for rank, fid in enumerate(order[w[order] > 0], 1):
            rows.append({"class": c, "rank": rank, "feature_id": int(fid), "weight": float(w[fid])})
    return rows


def names_class(label: str | None, accept: set[str]) -> bool:
    """Whether a (possibly multi-word) label names a class: one of its words is in the class's accept list."""
    return any(word in accept for word in (label or "").lower().split())
