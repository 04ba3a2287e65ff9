"""`toklabel eval`: how well labels name features of known meaning, against baselines, in one table.

The evaluation set (`data/eval/`, built by `data/build_eval.py`) is English sentences annotated with the
WordNet categories of their nouns. On it:

1. Planted features. A supervised dictionary (Makelov, Lange & Nanda, arXiv 2405.08366) at the SAE's
   hook: u_c = E[a | category c] - E[a], with `a` a sentence's mean activation. Each u_c becomes a
   latent of a JumpReLU SAE (activation = projection of the centred activation onto u_c, zero up to the
   threshold with the best F1 against the category), written in SAELens format and run through the normal
   harvest and labeling over the evaluation sentences. A label is correct when the category's accept list
   holds it.
2. Ground-truth latents. Each latent of the evaluated SAE is matched to the category whose indicator its
   firing (sentence activation > 0) predicts with the best F1; for latents with F1 >= MATCH_F1 the
   label is checked against that category's accept list.
3. Held-out AUROC. The evaluated SAE (by default the demo SAE, every latent) is harvested and labeled as
   `toklabel demo` does; the median held-out ROC AUC over its live latents.

Methods, all scored by the labeler's own held-out scoring on the same examples and split: the run's
optimiser (st-gumbel by default), exhaustive single-token search, and two labels that need no search:
the most frequent peak token of the top contexts, and the vocabulary token nearest the decoder row in
the subject model's input-embedding space.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from pipeline import driver
from pipeline.config import REPO, RunConfig, parse_features
from pipeline.progress import Progress, format_seconds
from pipeline.storage import RunStore
from workers.baselines import decoder_token_labels, top_token_labels
from workers.discriminators import load_discriminator
from workers.labeler import Labeler
from workers.sae import load_sae, save_saelens
from workers.subject import SubjectModel, check_hook
from workers.supervised import context_activations, f1_matrix, f1_threshold, planted_sae, supervised_dictionary
from workers.vocab import label_vocab

EVAL_DATA = REPO / "data" / "eval"
SENTENCES_FILE = "sentences.parquet"
ACCEPT_FILE = "accept.json"
MATCH_F1 = 0.5
"""a latent counts as matching a category from this F1 of its firing against the category on"""
BASELINES = ("exhaustive", "top-token", "decoder-token")
PLANTED, SAE_RUN = "planted", "sae"


@dataclass
class EvalSet:
    """Sentences with the categories each one carries."""

    texts: list[str]
    categories: list[str]
    attributes: np.ndarray  # [N, C] bool: sentence n carries category c
    accept: dict[str, set[str]]  # category -> labels that name it


def load_eval_set(folder: Path = EVAL_DATA, limit: int | None = None) -> EvalSet:
    """The evaluation set (its first `limit` sentences); categories are those of the accept file."""
    paths = [folder / SENTENCES_FILE, folder / ACCEPT_FILE]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"evaluation set incomplete: {missing} missing (build it: python data/build_eval.py)")
    rows = pq.read_table(paths[0], columns=["text", "categories"]).to_pylist()[:limit]
    accept = {c: {w.lower() for w in v["accept"]} for c, v in json.loads(paths[1].read_text()).items()}
    categories = sorted(accept)
    attributes = np.array([[c in r["categories"] for c in categories] for r in rows], dtype=bool)
    present = attributes.any(0)
    if not present.all():
        dropped = [c for c, p in zip(categories, present) if not p]
        raise ValueError(f"evaluation set: categories {dropped} hold for none of the {len(rows)} sentences used")
    return EvalSet([r["text"] for r in rows], categories, attributes, accept)


def sub_configs(config: RunConfig, sentences: int | None) -> dict[str, RunConfig]:
    """The two labeling runs: planted features over the evaluation sentences, and the evaluated SAE."""
    out = Path(config.out)
    planted = dataclasses.replace(
        config,
        out=str(out / PLANTED),
        sae=str(out / "planted-sae"),
        corpus=str(EVAL_DATA / SENTENCES_FILE),
        text_column="text",
        max_contexts=sentences,
        split_documents=False,
        min_context_tokens=None,
        features="all",
    )
    return {PLANTED: planted, SAE_RUN: dataclasses.replace(config, out=str(out / SAE_RUN))}


def evaluate(
    config: RunConfig, sentences: int | None = None, baselines: tuple[str, ...] = BASELINES, address: str | None = None
) -> dict:
    """Run the whole evaluation into `config.out` (local); the results, also written as eval.md and eval.json."""
    t0 = time.perf_counter()
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected some of {list(BASELINES)}")
    if "://" in config.out:
        raise ValueError(f"eval writes a planted SAE next to its runs: --out must be a local folder, got {config.out}")
    if config.label_tokens != 1:
        raise ValueError("eval compares single-token labels (baselines are one token): use label_tokens 1")
    # Every cheap check first: the data, the SAE and hook, the features, the runs' storage.
    data = load_eval_set(limit=sentences)
    sae = load_sae(config.sae, model_name=config.model, hook_name=config.hook)
    model, hook = config.model or sae.cfg.model_name, config.hook or sae.cfg.hook_name
    check_hook(model, hook, sae.cfg.d_in)
    feature_ids = parse_features(config.features, sae.cfg.d_sae)
    runs = sub_configs(dataclasses.replace(config, model=model, hook=hook), sentences)
    for cfg in runs.values():
        driver.prepare_store(cfg)
    seconds: dict[str, float] = {}

    stage(f"subject model over {len(data.texts)} evaluation sentences: supervised dictionary, latent firing")
    subject = SubjectModel.load(model, hook)
    pooled, latents = context_activations(subject, sae, data.texts, config.context_length)
    firing = (latents[:, feature_ids] > 0).numpy()
    planted = plant(subject, pooled, data, config.context_length)
    save_saelens(planted.pop("sae"), runs[PLANTED].sae)
    seconds["dictionary"] = time.perf_counter() - t0

    started = driver.connect(address)
    try:
        for name, cfg in runs.items():
            t1 = time.perf_counter()
            stage(f"labeling run {name!r} in {cfg.out}")
            driver.run(cfg, address)
            seconds[f"run {name}"] = time.perf_counter() - t1
    finally:
        if started:
            ray.shutdown()

    t1 = time.perf_counter()
    disc = load_discriminator(config.discriminator, **config.discriminator_options())
    vocab = label_vocab(disc.tokenizer)
    labeler = Labeler(disc, vocab, config.optimiser_config(), config.features_per_batch, config.test_fraction)
    sae_ids = {PLANTED: list(range(len(data.categories))), SAE_RUN: feature_ids}
    decoders = {PLANTED: load_sae(runs[PLANTED].sae).W_dec, SAE_RUN: sae.W_dec}
    labels: dict[str, dict[str, pa.Table]] = {}
    for name, cfg in runs.items():
        store = RunStore(cfg.out)
        labels[name] = {"toklabel": store.dataset("labels").to_table().sort_by("feature_id")}
        for method in baselines:
            stage(f"baseline {method} on run {name!r}")
            labels[name][method] = baseline(method, store, labeler, subject, decoders[name], sae_ids[name])
    seconds["baselines"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0

    results = score_methods(labels, data, firing, feature_ids, planted)
    results["settings"] = {
        "sae": config.sae,
        "model": model,
        "hook": hook,
        "features": len(feature_ids),
        "sentences": len(data.texts),
        "categories": len(data.categories),
        "optimiser": config.optimiser,
        "steps": config.steps,
        "discriminator": config.discriminator,
        "match_f1": MATCH_F1,
    }
    results["seconds"] = seconds
    out = Path(config.out)
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "eval.md").write_text(markdown(results))
    return results


def stage(message: str) -> None:
    print(f"eval: {message}", file=sys.stderr, flush=True)


def plant(subject: SubjectModel, pooled: torch.Tensor, data: EvalSet, context_length: int) -> dict:
    """The planted-feature SAE (latent c = category c) and, per category, its threshold and F1."""
    mean, u = supervised_dictionary(pooled, torch.from_numpy(data.attributes))
    name, hook = subject.name, subject.hook
    # First with thresholds 0, to measure each direction's sentence activations, then cut at the best F1.
    _, projection = context_activations(
        subject, planted_sae(u, mean, torch.zeros(len(u)), name, hook), data.texts, context_length
    )
    cuts = [f1_threshold(projection[:, c].numpy(), data.attributes[:, c]) for c in range(len(u))]
    # A threshold below 0 would be no threshold: JumpReLU latents are ReLU'd anyway.
    thresholds = torch.tensor([max(t, 0.0) for t, _ in cuts])
    return {
        "sae": planted_sae(u, mean, thresholds, name, hook),
        "thresholds": thresholds.tolist(),
        "f1": [f for _, f in cuts],
    }


def baseline(method: str, store: RunStore, labeler: Labeler, subject, decoder, feature_ids: list[int]) -> pa.Table:
    """The labels table of a baseline on a run's examples (read back when already written)."""
    name = f"{method}.parquet"
    if store.exists(f"baselines/{name}"):
        return store.read_table("baselines", name)
    examples = store.dataset("examples").to_table()
    progress = Progress(len(feature_ids), method, "features")
    if method == "exhaustive":
        exhaustive = Labeler(
            labeler.disc,
            labeler.optimiser.vocab,
            dataclasses.replace(labeler.optimiser.config, mode="exhaustive"),
            labeler.batch_size,
            labeler.test_fraction,
        )
        table = exhaustive.label(examples, feature_ids, progress.update)
    else:
        if method == "top-token":
            words = set(labeler.disc.tokenizer.convert_ids_to_tokens(labeler.optimiser.vocab.tolist()))
            found = top_token_labels(examples, words, subject.tokenizer)
        else:
            embedding = subject.model.get_input_embeddings().weight.detach()
            vocab = label_vocab(subject.tokenizer)
            found = decoder_token_labels(decoder, embedding, vocab, subject.tokenizer, feature_ids)
        table = labeler.score_labels(examples, {f: found[f] for f in feature_ids if f in found}, progress.update)
    store.write_table("baselines", name, table)
    return table


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _ok_scores(labels_by_id: dict[int, dict]) -> list[float]:
    """Held-out scores of the labeled (status ok) features."""
    return [r["score"] for r in labels_by_id.values() if r["status"] == "ok" and r["score"] is not None]


def _judge(rows, labels_by_id: dict[int, dict], accept: dict[str, set[str]], method: str) -> int:
    """Record under `method` each row's label and whether its category's accept list holds it; count the hits."""
    hits = 0
    for row in rows:
        got = labels_by_id.get(row["feature_id"], {})
        hit = (got.get("label") or "").lower() in accept[row["category"]]
        hits += hit
        row[method] = {"label": got.get("label"), "score": got.get("score"), "correct": hit}
    return hits


def score_methods(
    labels: dict[str, dict[str, pa.Table]], data: EvalSet, firing: np.ndarray, feature_ids: list[int], planted: dict
) -> dict:
    """Per method: planted-feature accuracy and AUROC, median AUROC over live latents, ground-truth agreement."""
    f1 = f1_matrix(firing, data.attributes)  # [features, categories]
    best = f1.argmax(1)
    matched = {fid: (data.categories[best[i]], float(f1[i, best[i]])) for i, fid in enumerate(feature_ids)}
    matched = {fid: m for fid, m in matched.items() if m[1] >= MATCH_F1}
    table, planted_rows, matched_rows = [], [], {}
    for c, category in enumerate(data.categories):
        planted_rows.append(
            {"feature_id": c, "category": category, "threshold": planted["thresholds"][c], "f1": planted["f1"][c]}
        )
    for fid, (category, score) in sorted(matched.items()):
        matched_rows[fid] = {"feature_id": fid, "category": category, "f1": score}
    for method in labels[PLANTED]:
        planted_by_id = {r["feature_id"]: r for r in labels[PLANTED][method].to_pylist()}
        sae_by_id = {r["feature_id"]: r for r in labels[SAE_RUN][method].to_pylist()}
        correct = _judge(planted_rows, planted_by_id, data.accept, method)
        agree = _judge(matched_rows.values(), sae_by_id, data.accept, method)
        live = _ok_scores(sae_by_id)
        table.append(
            {
                "method": method,
                "planted_correct": correct,
                "planted_total": len(planted_rows),
                "planted_accuracy": correct / len(planted_rows),
                "planted_median_auroc": _median(_ok_scores(planted_by_id)),
                "median_auroc": _median(live),
                "live_latents": len(live),
                "ground_truth_agree": agree,
                "ground_truth_latents": len(matched_rows),
                "ground_truth_accuracy": agree / len(matched_rows) if matched_rows else None,
            }
        )
    return {"table": table, "planted": planted_rows, "ground_truth": list(matched_rows.values())}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    """The results as Markdown: the score table, then the planted features and matched latents one by one."""
    s = results["settings"]
    methods = [r["method"] for r in results["table"]]
    lines = [
        f"# toklabel eval: {s['features']} latents of {Path(s['sae']).name}, {s['categories']} planted features",
        "",
        f"Evaluation set: {s['sentences']} sentences, {s['categories']} WordNet noun categories. toklabel: "
        f"{s['optimiser']}, {s['steps']} steps, discriminator {s['discriminator']}. Ground-truth latents: firing "
        f"F1 >= {s['match_f1']} against a category.",
        "",
        "| method | planted: label names the category | planted: median AUROC "
        "| SAE latents: median held-out AUROC | ground-truth latents: label names the category |",
        "|---|---|---|---|---|",
    ]
    for r in results["table"]:
        gt = (
            f"{r['ground_truth_agree']}/{r['ground_truth_latents']} ({_fmt(r['ground_truth_accuracy'], 2)})"
            if r["ground_truth_latents"]
            else "n/a (none matched)"
        )
        lines.append(
            f"| {r['method']} | {r['planted_correct']}/{r['planted_total']} ({_fmt(r['planted_accuracy'], 2)}) "
            f"| {_fmt(r['planted_median_auroc'])} | {_fmt(r['median_auroc'])} ({r['live_latents']} live) | {gt} |"
        )

    def cells(row):
        return " | ".join(
            f"{'**' if row[m]['correct'] else ''}{row[m]['label'] or '-'}{'**' if row[m]['correct'] else ''} "
            f"{_fmt(row[m]['score'], 2)}"
            for m in methods
        )

    lines += ["", "Planted features (label and held-out AUROC; bold: names the category):", ""]
    lines += [f"| feature | category | F1 | {' | '.join(methods)} |", "|---" * (len(methods) + 3) + "|"]
    lines += [f"| {r['feature_id']} | {r['category']} | {r['f1']:.2f} | {cells(r)} |" for r in results["planted"]]
    if results["ground_truth"]:
        lines += ["", f"Ground-truth latents (firing F1 >= {s['match_f1']} against a category):", ""]
        lines += [f"| latent | category | F1 | {' | '.join(methods)} |", "|---" * (len(methods) + 3) + "|"]
        lines += [
            f"| {r['feature_id']} | {r['category']} | {r['f1']:.2f} | {cells(r)} |" for r in results["ground_truth"]
        ]
    total = results["seconds"].get("total")
    if total is not None:
        lines += ["", f"Wall time {format_seconds(total)}."]
    return "\n".join(lines) + "\n"
