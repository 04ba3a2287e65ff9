"""`toklabel probe`: classifiers over pooled SAE features of a labeled run, read through their top features' labels.

The run's subject model and SAE encode each text of a labeled dataset on Ray actors (sharded by chunks of
texts, like the harvest); one classifier per pooling, with and without binarisation, and the baselines are
fitted as Ray tasks; the top features of each SAE classifier per class are joined with the run's labels,
held-out label scores and top examples. Layout under the probe's URI (local or s3://; by default
RUN_URI/probes/DATASET):

  probe.json                          settings (features of other settings are refused, the same ones resumed)
  features/texts-A-B.parquet          one row per text: each pooling's SAE features (sparse) and hidden states
  results/results.parquet             one row per classifier: macro F1, accuracy, the C chosen, CV macro F1, ...
  top_features/top_features.parquet   per SAE classifier and class: top features by weight with their labels
  probe.md                            results and the interpreted classifier's top features, as Markdown
  summary.json                        {"dataset", "text_col", "label_col", "results": [...]} (what reports read)
  _manifest.json                      written last: settings, counts, label-naming counts, seconds, versions
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import shorten

import numpy as np
import pyarrow as pa
import ray
import yaml
from transformers import AutoConfig

from pipeline.actors import _use_cpus
from pipeline.config import REPO, RunConfig
from pipeline.driver import _versions, connect, restartable_actors, start_failure
from pipeline.plan import chunks
from pipeline.progress import Progress, format_seconds
from pipeline.query import has_table, open_run
from pipeline.storage import CONFIG, MANIFEST, RunStore
from workers.models import default_device, resolve_model
from workers.probe import (
    HIDDEN_POOLINGS,
    POOLINGS,
    ClassifierConfig,
    FeatureExtractor,
    ProbeFit,
    binarise,
    check_classes,
    fit_probe,
    hidden_matrix,
    names_class,
    read_labeled,
    sae_matrix,
    split,
    top_features,
)
from workers.sae import detect_format, load_sae
from workers.subject import SubjectModel, check_hook

SHIPPED = REPO / "data" / "classify"
SETTINGS, SUMMARY, MARKDOWN = "probe.json", "summary.json", "probe.md"
FEATURES, RESULTS, TOP = "features", "results", "top_features"
EXAMPLE_CHARS = 160
# Each result of summary.json: what other stages' reports compare with (keep these keys as they are).
RESULT_KEYS = ("method", "pooling", "binarised", "macro_f1", "accuracy")
TOP_SCHEMA = pa.schema(
    [
        ("method", pa.string()),
        ("pooling", pa.string()),
        ("binarised", pa.bool_()),
        ("interpreted", pa.bool_()),
        ("class", pa.string()),
        ("rank", pa.int32()),
        ("feature_id", pa.int64()),
        ("weight", pa.float64()),
        ("label", pa.string()),
        ("label_score", pa.float64()),
        ("label_status", pa.string()),
        ("names_class", pa.bool_()),
        ("example", pa.string()),
        ("example_activation", pa.float64()),
    ]
)


@dataclass
class ProbeConfig:
    """Everything a probe needs; attribute docstrings are the options' documentation."""

    run: str
    """the labeled run (local path or s3:// URI) whose subject model, SAE and labels are used"""
    dataset: str
    """labeled texts: .jsonl / .parquet with a text and a label column, or hf:NAME[:CONFIG][:SPLIT]"""
    text_col: str = "text"
    label_col: str = "label"
    out: str | None = None
    """where the probe's outputs go (local path or s3://); default RUN/probes/DATASET"""
    top_n: int = 5
    """top-n pooling: per token, its n strongest active latents count one each"""
    threshold: float = 1.0
    """binarised features are pooled value > threshold"""
    context_length: int | None = None
    """tokens of each text the subject model reads; default: the run's context_length"""
    max_texts: int | None = None
    """use the dataset's first N usable rows (needed for hf: datasets, which are streamed)"""
    top_features: int = 10
    """features per class shown with their labels"""
    accept: str | None = None
    """JSON of labels that name each class ({class: [words]} or {dataset: {class: [words]}}); default: the
    shipped lists (data/classify/accept.json) for the shipped datasets"""
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    chunk: int = 1024
    """texts per feature-extraction task (one features shard each)"""
    batch: int = 64
    """texts per forward pass of the subject model"""
    actors: int | None = None
    """feature-extraction actors; default: one per GPU, else one per 2 CPUs"""

    def __post_init__(self):
        c = self.classifier
        checks = [
            (self.top_n >= 1, "top_n", self.top_n, "at least 1"),
            (self.context_length is None or self.context_length >= 1, "context_length", self.context_length, ">= 1"),
            (self.max_texts is None or self.max_texts >= 1, "max_texts", self.max_texts, "at least 1"),
            (self.top_features >= 1, "top_features", self.top_features, "at least 1"),
            (self.chunk >= 1 and self.batch >= 1, "chunk/batch", (self.chunk, self.batch), "at least 1"),
            (0 < c.test_fraction < 1, "test_fraction", c.test_fraction, "between 0 and 1"),
            (c.folds >= 2, "folds", c.folds, "at least 2"),
            (bool(c.grid) and all(x > 0 for x in c.grid), "grid", c.grid, "positive values of C"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise ValueError(f"probe option {key} = {value!r}; expected {expected}")

    @property
    def uri(self) -> str:
        return self.out or f"{self.run.rstrip('/')}/probes/{dataset_name(self.dataset)}"


def dataset_name(dataset: str) -> str:
    """A short name of a dataset: the file's stem, or the hub name with separators as dashes."""
    if dataset.startswith("hf:"):
        return dataset[3:].replace("/", "-").replace(":", "-")
    return Path(dataset).stem


def load_run(uri: str) -> tuple[RunStore, RunConfig]:
    """The run's storage and config, refused when it is no run, names no SAE or has no labels."""
    store = RunStore(uri)
    if not store.exists(CONFIG):
        raise FileNotFoundError(f"run {uri}: no run there (no {CONFIG}); give the URI of a `toklabel run` output")
    run = RunConfig.from_dict(yaml.safe_load(store.read_text(CONFIG)), source=f"{uri}/{CONFIG}")
    if not run.sae:
        raise ValueError(
            f"run {uri} names no SAE in its {CONFIG} (labeled from an examples table?): the probe encodes texts "
            "with the run's own SAE and subject model"
        )
    if not store.list("labels"):
        raise ValueError(
            f"run {uri} has no labels yet (no {uri}/labels/*.parquet): label it first (toklabel run), "
            "so that the probe's features can be read by their labels"
        )
    return store, run


def load_accept(config: ProbeConfig, classes: list[str]) -> dict[str, set[str]]:
    """Per class, the labels that name it (classes without a list are absent: naming is not judged there)."""
    path = Path(config.accept) if config.accept else SHIPPED / "accept.json"
    shipped = not config.dataset.startswith("hf:") and Path(config.dataset).resolve().parent == SHIPPED.resolve()
    if not config.accept and not shipped:
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"accept lists {path} not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"accept lists {path}: not valid JSON ({err})") from None
    name = dataset_name(config.dataset)
    lists = raw.get(name, {}) if isinstance(raw, dict) and isinstance(raw.get(name), dict) else raw
    if not isinstance(lists, dict) or not all(
        isinstance(v, list) and all(isinstance(w, str) for w in v) for v in lists.values()
    ):
        raise ValueError(
            f"accept lists {path}: expected {{class: [words]}} or {{dataset: {{class: [words]}}}} (dataset {name!r})"
        )
    return {c: {w.lower() for w in lists[c]} for c in classes if c in lists}


def require_model(uri: str, model: str) -> None:
    """Refuse a subject model whose config cannot be read (its weights are not loaded here)."""
    try:
        AutoConfig.from_pretrained(resolve_model(model))
    except (OSError, ImportError, ValueError) as err:
        cause = str(err).strip().splitlines()[0]
        raise FileNotFoundError(f"run {uri}: its subject model {model!r} cannot be found ({cause})") from None


def resolve_models(uri: str, run: RunConfig):
    """(model, hook, SAE) of the run, each refused clearly when it cannot be found; the subject model's
    config alone is read (its weights load on the actors)."""
    sae_path = Path(run.sae)
    if not sae_path.exists():
        raise FileNotFoundError(f"run {uri}: its SAE {sae_path} ({CONFIG} key 'sae') cannot be found")
    detect_format(sae_path)
    if run.model:  # checked before the SAE's weights load when the run names it
        require_model(uri, run.model)
    sae = load_sae(sae_path, model_name=run.model, hook_name=run.hook)
    model, hook = run.model or sae.cfg.model_name, run.hook or sae.cfg.hook_name
    if not model or not hook:
        raise ValueError(f"run {uri}: neither its {CONFIG} nor its SAE at {sae_path} names the model and hook")
    if not run.model:
        require_model(uri, model)
    check_hook(model, hook, sae.cfg.d_in)
    return model, hook, sae


def texts_shard(first: int, last: int) -> str:
    """Deterministic name of the features shard of texts first..last."""
    return f"texts-{first:08d}-{last:08d}.parquet"


@ray.remote
class ProbeActor:
    """Subject model + SAE; turns chunks of texts into features shards in the probe's storage."""

    def __init__(self, uri, model, hook, sae_path, context_length, top_n, batch_size, cpus):
        _use_cpus(cpus)
        device = default_device()
        sae = load_sae(sae_path, device, model_name=model, hook_name=hook)
        subject = SubjectModel.load(model, hook, device)
        self.extractor = FeatureExtractor(subject, sae, context_length, top_n, batch_size)
        self.store = RunStore(uri)

    def extract(self, texts: list[str], first: int) -> int:
        table = self.extractor.table(texts, first)
        self.store.write_table(FEATURES, texts_shard(first, first + len(texts) - 1), table)
        return len(texts)


def extract(store: RunStore, config: ProbeConfig, model: str, hook: str, sae: str, texts: list[str], length: int):
    """Write every missing features shard, chunks of texts spread over actors; finished shards are kept."""
    done = set(store.list(FEATURES))
    todo = deque((a, b) for a, b in chunks(len(texts), config.chunk) if texts_shard(a, b - 1) not in done)
    if not todo:
        return
    # A dead actor is restarted and its task rerun there; a shard is written whole or not at all.
    n_actors, cpus, options = restartable_actors(config.actors, None, store.uri)
    args = (store.uri, model, hook, sae, length, config.top_n, config.batch, cpus)
    actors = [ProbeActor.options(**options).remote(*args) for _ in range(min(n_actors, len(todo)))]
    progress = Progress(sum(b - a for a, b in todo), "probe", "texts")
    pending = {}

    def submit(actor) -> None:
        if todo:
            a, b = todo.popleft()
            pending[actor.extract.remote(texts[a:b], a)] = actor

    for actor in actors:
        for _ in range(2):  # a second chunk in flight keeps an actor busy while the first one is written
            submit(actor)
    try:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ref)
            try:
                progress.update(ray.get(ref))
            except ray.exceptions.RayActorError as err:
                stop = start_failure(err, "probe")
                if stop:
                    raise stop from err
                raise
            submit(actor)
    finally:
        for actor in actors:
            ray.kill(actor)


def read_features(store: RunStore, n_texts: int) -> pa.Table:
    """All features rows in text order, checked complete."""
    table = store.dataset(FEATURES).to_table().sort_by("row")
    rows = table.column("row").to_numpy()
    if len(rows) != n_texts or not np.array_equal(rows, np.arange(n_texts)):
        raise RuntimeError(f"{store.uri}/{FEATURES}: {len(rows)} rows for {n_texts} texts; delete the folder and rerun")
    return table


@dataclass(frozen=True)
class Classifier:
    """One classifier of the comparison: what it reads and how."""

    method: str  # sae | hidden-mean | hidden-last | tfidf
    pooling: str | None
    binarised: bool | None
    preprocessing: str


def inputs(table: pa.Table, texts: list[str], n_latents: int, threshold: float) -> dict[Classifier, object]:
    """Every classifier's input matrix (texts for TF-IDF), in the order of the results table."""
    out: dict[Classifier, object] = {}
    for pooling in POOLINGS:
        matrix = sae_matrix(table, pooling, n_latents)
        out[Classifier("sae", pooling, False, "sae")] = matrix
        out[Classifier("sae", pooling, True, "sae")] = binarise(matrix, threshold)
    for name in HIDDEN_POOLINGS:
        out[Classifier(name, None, None, "hidden")] = hidden_matrix(table, name)
    out[Classifier("tfidf", None, None, "tfidf")] = np.array(texts, dtype=object)
    return out


def fit_all(x: dict[Classifier, object], labels: list[str], train, test, config: ClassifierConfig):
    """Fit every classifier as a Ray task of one CPU; {classifier: ProbeFit}."""
    task = ray.remote(num_cpus=1)(fit_probe)
    shared = [ray.put(v) for v in (labels, train, test)]
    refs = {task.remote(ray.put(matrix), *shared, c.preprocessing, config): c for c, matrix in x.items()}
    progress = Progress(len(refs), "fit", "classifiers")
    fits: dict[Classifier, ProbeFit] = {}
    pending = list(refs)
    while pending:
        [ref], pending = ray.wait(pending, num_returns=1)
        fits[refs[ref]] = ray.get(ref)
        progress.update()
    return {c: fits[c] for c in x}


def interpret(
    run: RunStore, fits: dict[Classifier, ProbeFit], chosen: Classifier, k: int, accept: dict[str, set[str]]
) -> pa.Table:
    """Top features per class of every SAE classifier, with the run's label, its held-out score, its status
    ("unlabeled" where the run has no label row) and the feature's strongest top example."""
    rows = []
    for c, fit in fits.items():
        if c.method == "sae":
            for r in top_features(fit, k):
                rows.append({"method": c.method, "pooling": c.pooling, "binarised": c.binarised, **r})
                rows[-1]["interpreted"] = c == chosen
    con = open_run(run)
    labels = {
        fid: (label, score, status)
        for fid, label, score, status in con.sql("SELECT feature_id, label, score, status FROM labels").fetchall()
    }
    con.register("wanted", pa.table({"feature_id": pa.array(sorted({r["feature_id"] for r in rows}), pa.int64())}))
    examples = (
        {}
        if not has_table(con, "examples")
        else {
            fid: (text, act)
            for fid, text, act in con.sql(
                "SELECT feature_id, text, activation FROM (SELECT feature_id, text, activation, row_number() OVER "
                "(PARTITION BY feature_id ORDER BY activation DESC, text) AS r FROM examples "
                "WHERE activation > 0 AND feature_id IN (SELECT feature_id FROM wanted)) WHERE r = 1"
            ).fetchall()
        }
    )
    for r in rows:
        label, score, status = labels.get(r["feature_id"], (None, None, "unlabeled"))
        text, act = examples.get(r["feature_id"], (None, None))
        r |= {
            "label": label,
            "label_score": score,
            "label_status": status,
            "names_class": names_class(label, accept[r["class"]]) if r["class"] in accept else None,
            "example": shorten(text, EXAMPLE_CHARS, placeholder=" …") if text else None,
            "example_activation": act,
        }
    return pa.Table.from_pylist(rows, schema=TOP_SCHEMA)


def results_table(fits: dict[Classifier, ProbeFit], n_train: int, n_test: int) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "method": c.method,
                "pooling": c.pooling,
                "binarised": c.binarised,
                "macro_f1": f.macro_f1,
                "accuracy": f.accuracy,
                "cv_macro_f1": f.cv_macro_f1,
                "C": f.C,
                "features": f.features,
                "converged": f.converged,
                "seconds": f.seconds,
                "n_train": n_train,
                "n_test": n_test,
            }
            for c, f in fits.items()
        ]
    )


def named_counts(top: pa.Table, classes: list[str], accept: dict[str, set[str]]) -> dict[str, int | None]:
    """Per class, how many of the interpreted classifier's top features have a label naming it (None: no list)."""
    rows = [r for r in top.to_pylist() if r["interpreted"]]
    return {c: sum(bool(r["names_class"]) for r in rows if r["class"] == c) if c in accept else None for c in classes}


def _cell(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return f"{x:.3f}" if isinstance(x, float) else str(x).replace("|", "\\|")


def markdown(manifest: dict, results: pa.Table, top: pa.Table) -> str:
    """The comparison table, then the interpreted classifier's top features per class."""
    s, chosen = manifest["settings"], manifest["interpreted"]
    lines = [
        f"# toklabel probe: {s['dataset']} on {s['run']}",
        "",
        f"{manifest['texts']} texts, {len(manifest['classes'])} classes; {manifest['n_train']} train / "
        f"{manifest['n_test']} test (stratified, seed {s['classifier']['seed']}); class-balanced logistic "
        f"regression, C by {s['classifier']['folds']}-fold CV macro F1 on the training split. SAE "
        f"{manifest['sae']} on {manifest['model']} at {manifest['hook']}; top-n n = {s['top_n']}, binarised: "
        f"x > {s['threshold']}.",
        "",
        "| method | pooling | binarised | macro F1 | accuracy | CV macro F1 | C |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.to_pylist():
        lines.append(
            f"| {r['method']} | {_cell(r['pooling'])} | {_cell(r['binarised'])} | {r['macro_f1']:.3f} "
            f"| {r['accuracy']:.3f} | {r['cv_macro_f1']:.3f} | {r['C']:g} |"
        )
    binarised = " binarised" if chosen["binarised"] else ""
    lines += [
        "",
        f"## Top {s['top_features']} features per class: sae {chosen['pooling']}{binarised} (best CV macro F1)",
        "",
        "Weights are after scaling each feature to its training maximum. A label names the class when one of "
        "its words is in the class's accept list.",
    ]
    rows = [r for r in top.to_pylist() if r["interpreted"]]
    for c in manifest["classes"]:
        named = manifest["named"][c]
        judged = f": {named} of {sum(r['class'] == c for r in rows)} labels name the class" if named is not None else ""
        lines += [
            "",
            f"### {c}{judged}",
            "",
            "| rank | feature | weight | label | held-out AUROC | names class | top example |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["class"] == c):
            label = r["label"] if r["label"] else f"({r['label_status']}: no label)"
            lines.append(
                f"| {r['rank']} | {r['feature_id']} | {r['weight']:.3f} | {_cell(label)} | {_cell(r['label_score'])} "
                f"| {_cell(r['names_class'])} | {_cell(r['example'])} |"
            )
    lines += ["", f"Wall time {format_seconds(manifest['seconds']['total'])}."]
    return "\n".join(lines) + "\n"


def texts_digest(texts: list[str]) -> str:
    """A short fingerprint of a dataset's texts in order: stages that share it share their rows (and splits)."""
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


def feature_key(config: ProbeConfig, model: str, hook: str, sae: str, texts: list[str], length: int) -> dict:
    """What the features shards depend on (not the labels: those are joined afresh), so that a rerun with the
    same key resumes them."""
    return {
        "model": model,
        "hook": hook,
        "sae": sae,
        "texts": len(texts),
        "texts_sha256": texts_digest(texts),
        "context_length": length,
        "top_n": config.top_n,
    }


def prepare_store(config: ProbeConfig, key: dict) -> RunStore:
    """The probe's storage, checked writable; features of other settings there are refused."""
    store = RunStore(config.uri)
    store.check_writable()
    if store.exists(SETTINGS) and store.list(FEATURES):
        old = store.read_json(SETTINGS).get("features")
        if old != key:
            changed = sorted(k for k in key if old is None or old.get(k) != key[k])
            raise ValueError(
                f"{config.uri} already holds probe features of other settings (differing: {changed}); "
                "choose another --out or delete that probe"
            )
    return store


def probe(config: ProbeConfig, address: str | None = None) -> tuple[dict, str]:
    """Run the probe; (its manifest, written last under config.uri, and its Markdown)."""
    t0 = time.perf_counter()
    # Every check that needs no model comes first, then the SAE, then the subject model's config only.
    run_store, run = load_run(config.run)
    texts, labels = read_labeled(config.dataset, config.text_col, config.label_col, config.max_texts)
    folds = config.classifier.folds
    check_classes(labels, config.dataset, max(5, folds), f"a {folds}-fold cross-validation and a stratified test split")
    counts = Counter(labels)
    classes = sorted(counts)
    accept = load_accept(config, classes)
    model, hook, sae = resolve_models(config.run, run)
    length = config.context_length or run.context_length
    key = feature_key(config, model, hook, run.sae, texts, length)
    store = prepare_store(config, key)
    store.write_json(SETTINGS, {"features": key, "settings": settings_dict(config)})
    store.delete(MANIFEST)  # an earlier probe's: the manifest marks a finished probe, and this one is not yet
    seconds = {}
    started = connect(address)
    try:
        extract(store, config, model, hook, run.sae, texts, length)
        seconds["features"] = time.perf_counter() - t0
        table = read_features(store, len(texts))
        train, test = split(labels, config.classifier.test_fraction, config.classifier.seed)
        fits = fit_all(inputs(table, texts, sae.cfg.d_sae, config.threshold), labels, train, test, config.classifier)
        seconds["classifiers"] = time.perf_counter() - t0 - seconds["features"]
    finally:
        if started:
            ray.shutdown()
    sae_fits = [c for c in fits if c.method == "sae"]
    chosen = max(sae_fits, key=lambda c: fits[c].cv_macro_f1)  # the first of equals, in table order
    results = results_table(fits, len(train), len(test))
    top = interpret(run_store, fits, chosen, config.top_features, accept)
    store.write_table(RESULTS, "results.parquet", results)
    store.write_table(TOP, "top_features.parquet", top)
    store.write_json(
        SUMMARY,
        {
            "dataset": config.dataset,
            "text_col": config.text_col,
            "label_col": config.label_col,
            "results": [{k: r[k] for k in RESULT_KEYS} for r in results.to_pylist()],
        },
    )
    seconds["total"] = time.perf_counter() - t0
    manifest = {
        "uri": config.uri,
        "settings": settings_dict(config),
        "model": model,
        "hook": hook,
        "sae": run.sae,
        "texts": len(texts),
        "classes": classes,
        "class_counts": dict(sorted(counts.items())),
        "n_train": len(train),
        "n_test": len(test),
        "interpreted": {"method": chosen.method, "pooling": chosen.pooling, "binarised": chosen.binarised},
        "named": named_counts(top, classes, accept),
        "seconds": seconds,
        "versions": _versions(),
        "command": " ".join(sys.argv),
    }
    text = markdown(manifest, results, top)
    store.write_text(MARKDOWN, text)
    store.write_json(MANIFEST, manifest)
    return manifest, text


def settings_dict(config: ProbeConfig) -> dict:
    return {**dataclasses.asdict(config), "out": config.uri}


def read_probe(uri: str) -> tuple[dict, dict, pa.Table, pa.Table]:
    """(summary, manifest, results, top features) of a finished probe."""
    store = RunStore(uri)
    if not store.exists(MANIFEST) or not store.exists(SUMMARY):
        raise FileNotFoundError(f"{uri} holds no finished probe (no {SUMMARY} and {MANIFEST}): run toklabel probe")
    results, top = store.read_table(RESULTS, "results.parquet"), store.read_table(TOP, "top_features.parquet")
    return store.read_json(SUMMARY), store.read_json(MANIFEST), results, top
