"""The probe stage: pooling, the classifier's seeded split and CV, bad input refused early, end to end on Ray."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch
from synthetic_run import write_run

from pipeline import probe as probe_stage
from pipeline.cli import main
from pipeline.config import RunConfig
from pipeline.probe import ProbeConfig
from pipeline.storage import RunStore
from workers.probe import (
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
from workers.sae import load_sae
from workers.subject import SubjectModel

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "classify"
HOOK = "blocks.3.hook_resid_post"


# Pooling on hand-made activations: 2 texts, 3 token slots, 4 latents; text 1 has only 2 real tokens.
Z = torch.tensor(
    [
        [[3.0, 0.0, 1.0, 0.5], [0.0, 2.0, 2.5, 0.0], [1.0, 0.0, 0.0, 4.0]],
        [[0.0, 0.0, 0.0, 1.5], [2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
    ]
)
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_sum_mean_max_last_pooling():
    assert POOLINGS["sum"](Z, MASK, 2).tolist() == [[4.0, 2.0, 3.5, 4.5], [2.0, 1.0, 0.0, 1.5]]
    assert torch.allclose(POOLINGS["mean"](Z, MASK, 2), torch.tensor([[4 / 3, 2 / 3, 3.5 / 3, 1.5], [1, 0.5, 0, 0.75]]))
    assert POOLINGS["max"](Z, MASK, 2).tolist() == [[3.0, 2.0, 2.5, 4.0], [2.0, 1.0, 0.0, 1.5]]
    # The last real token: slot 2 for text 0, slot 1 for text 1 (slot 2 is padding).
    assert POOLINGS["last"](Z, MASK, 2).tolist() == [[1.0, 0.0, 0.0, 4.0], [2.0, 1.0, 0.0, 0.0]]


def test_top_n_pooling_counts_only_active_latents():
    # n = 2: text 0 tokens pick {0, 2}, {2, 1}, {3, 0}; text 1 picks {3} (one active latent), then {0, 1}.
    assert POOLINGS["top-n"](Z, MASK, 2).tolist() == [[2.0, 1.0, 2.0, 1.0], [1.0, 1.0, 0.0, 1.0]]
    assert POOLINGS["top-n"](Z, MASK, 1).tolist() == [[1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]]
    # n larger than the dictionary: every active latent of every token counts once.
    assert POOLINGS["top-n"](Z, MASK, 10).tolist() == (Z > 0).sum(1).float().tolist()


def test_pooling_of_a_text_without_tokens_is_zero():
    z, mask = torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool)
    for name, pooling in POOLINGS.items():
        assert pooling(z, mask, 2).tolist() == [[0.0] * 4], name


def test_binarise_keeps_values_above_the_threshold():
    m = sp.csr_matrix(np.array([[0.5, 1.0, 1.5, 0.0], [3.0, 0.0, 0.9, 1.01]], np.float32))
    b = binarise(m, 1.0)
    assert b.toarray().tolist() == [[0, 0, 1, 0], [1, 0, 0, 1]]
    assert b.nnz == 3 and m.nnz == 6  # zeros pruned; the input is left as it was
    assert binarise(m, 0.0).toarray().tolist() == (m.toarray() > 0).astype(float).tolist()


@pytest.fixture(scope="module")
def subject():
    return SubjectModel.load("minilm", HOOK)


def test_features_table_round_trips_each_pooling(subject, tiny_sae_dir):
    sae = load_sae(tiny_sae_dir)
    texts = ["a dog is a domesticated animal", "law", "the river bank flooded after a week of heavy rain"]
    extractor = FeatureExtractor(subject, sae, context_length=6, top_n=3, batch_size=2)
    table = extractor.table(texts, first_row=10)
    assert table.column("row").to_pylist() == [10, 11, 12]
    # Recomputed here from the subject model's activations: each text's first 6 real tokens.
    acts, mask, _ = subject.activations(texts, 8)
    mask &= mask.cumsum(1) <= 6
    assert table.column("tokens").to_pylist() == mask.sum(1).tolist() == [6, 1, 6]
    z = torch.zeros(*mask.shape, sae.cfg.d_sae)
    z[mask] = sae.encode(acts[mask])
    for name, pooling in POOLINGS.items():
        expected = pooling(z, mask, 3).numpy()
        assert np.allclose(sae_matrix(table, name, sae.cfg.d_sae).toarray(), expected, atol=1e-5), name
    hidden = acts * mask[..., None]
    assert np.allclose(
        hidden_matrix(table, "hidden-mean"), (hidden.sum(1) / mask.sum(1, keepdim=True)).numpy(), atol=1e-5
    )
    assert np.allclose(hidden_matrix(table, "hidden-last")[1], acts[1][mask[1]][-1].numpy(), atol=1e-6)


LABELS = ["a"] * 30 + ["b"] * 20 + ["c"] * 10


def test_split_is_seeded_and_stratified():
    train, test = split(LABELS, 0.2, seed=0)
    assert len(test) == 12 and sorted(np.r_[train, test]) == list(range(60))
    assert [sum(LABELS[i] == c for i in test) for c in "abc"] == [6, 4, 2]
    again, _ = split(LABELS, 0.2, seed=0)
    other, _ = split(LABELS, 0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def separable(seed: int = 0, n: int = 60):
    """Three classes that feature 0, 1 or 2 picks out, plus noise features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 6))
    x[np.arange(n), np.arange(n) % 3] += 3.0
    return x, [f"class{i % 3}" for i in range(n)]


def test_classifier_cv_uses_the_training_split_only():
    x, labels = separable()
    train, test = split(labels, 0.2, seed=0)
    config = ClassifierConfig(grid=(0.01, 1.0, 100.0))
    fit = fit_probe(x, labels, train, test, "hidden", config)
    assert fit.C in config.grid and fit.macro_f1 == fit.accuracy == 1.0 and fit.converged
    assert fit.classes == ["class0", "class1", "class2"] and fit.coef.shape == (3, 6)
    assert [int(np.argmax(w)) for w in fit.coef] == [0, 1, 2]
    # Garbling the test rows changes the test scores but nothing the search saw.
    garbled = x.copy()
    garbled[test] = np.random.default_rng(1).normal(size=(len(test), 6))
    other = fit_probe(garbled, labels, train, test, "hidden", config)
    assert (other.C, other.cv_macro_f1) == (fit.C, fit.cv_macro_f1)
    assert np.allclose(other.coef, fit.coef) and other.macro_f1 < 1.0
    # Seeded: the same inputs give the same fit.
    assert np.array_equal(fit_probe(x, labels, train, test, "hidden", config).coef, fit.coef)


def test_tfidf_classifier_reads_texts():
    texts = [f"{w} {w}s and more {w}" for w in ("cat", "dog", "fish") for _ in range(10)]
    labels = [t.split()[0] for t in texts]
    train, test = split(labels, 0.2, seed=0)
    fit = fit_probe(np.array(texts, dtype=object), labels, train, test, "tfidf", ClassifierConfig())
    assert fit.macro_f1 == 1.0 and fit.features > 3


def test_top_features_per_class():
    fit = ProbeFit(
        1.0, 1.0, 1.0, 1.0, ["x", "y", "z"], np.array([[3, -1, 2, 0.5], [-1, 0, 0, 0], [0, 2, 0, 1]]), 4, True, 0
    )
    rows = top_features(fit, k=2)
    assert [(r["class"], r["rank"], r["feature_id"]) for r in rows] == [
        ("x", 1, 0),
        ("x", 2, 2),
        ("z", 1, 1),
        ("z", 2, 3),
    ]
    # Two classes share one weight row: its negative side is the first class's.
    binary = ProbeFit(1.0, 1.0, 1.0, 1.0, ["no", "yes"], np.array([[2.0, -3.0, 0.5]]), 3, True, 0)
    assert [(r["class"], r["feature_id"], r["weight"]) for r in top_features(binary, 1)] == [
        ("no", 1, 3.0),
        ("yes", 0, 2.0),
    ]


def test_names_class_by_any_word():
    accept = {"animal", "animals"}
    assert names_class("animals", accept) and names_class("wild Animal", accept)
    assert not names_class("dog", accept) and not names_class(None, accept)


def test_weight_bars_mark_naming_and_missing_labels():
    from pipeline.report import weights_svg

    rows = [[7, "animals", "ok", 0.9, 0.95, True, "the animals ran"], [8, "dogs", "ok", 0.6, 0.9, False, None]]
    svg = weights_svg(rows + [[9, None, "unlabeled", 0.3, None, None, None]], top=0.9)
    assert svg.count("<rect") == 3 and 'class="named"' in svg and 'class="nolabel"' in svg
    assert "#9 no label (unlabeled)" in svg and "top example: the animals ran" in svg
    widths = [float(w) for w in re.findall(r'width="([0-9.]+)" height', svg)]
    assert widths[0] > widths[1] > widths[2] > 0  # bars scale with the weights


def test_shipped_datasets():
    accept = json.loads((SHIPPED / "accept.json").read_text())
    for name, n_classes in (("wordnet_glosses", 8), ("fortunes", 10)):
        path = SHIPPED / f"{name}.parquet"
        assert path.stat().st_size < 3_000_000
        table = pq.read_table(path)
        assert table.schema.names == ["text", "label"] and table.schema.field("text").type == pa.string()
        counts = {}
        for label in table.column("label").to_pylist():
            counts[label] = counts.get(label, 0) + 1
        assert len(counts) == n_classes and min(counts.values()) >= 50
        assert sorted(accept[name]) == sorted(counts)
        assert all(t.strip() == t and t for t in table.column("text").to_pylist())
    glosses = pq.read_table(SHIPPED / "wordnet_glosses.parquet").column("label").to_pylist()
    assert len(set(glosses.count(c) for c in set(glosses))) == 1  # balanced


# Bad input is refused before any model loads or Ray starts.


@pytest.fixture
def tripwires(monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("a model loaded or Ray started before the input was checked")

    monkeypatch.setattr(probe_stage, "load_sae", loaded)
    monkeypatch.setattr(probe_stage, "connect", loaded)
    monkeypatch.setattr(SubjectModel, "load", loaded)


def labeled_run(tmp_path: Path, sae: str, model: str = "minilm", labels: bool = True) -> str:
    """A run (synthetic labels and examples) whose config names `sae` and `model`."""
    uri = str(tmp_path / "run")
    write_run(uri, n_features=40 if labels else 0, shard_size=10)
    Path(uri, "config.yaml").write_text(RunConfig(out=uri, sae=sae, model=model, hook=HOOK).to_yaml())
    return uri


def dataset(tmp_path: Path, per_class: int = 15, text="body", label="topic") -> str:
    """`per_class` shipped glosses of each of three categories, under other column names."""
    rows = pq.read_table(SHIPPED / "wordnet_glosses.parquet").to_pylist()
    picked = []
    for c in ("noun.animal", "noun.food", "noun.plant"):
        picked += [{text: r["text"], label: r["label"]} for r in rows if r["label"] == c][:per_class]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(picked), path)
    return str(path)


def refused(uri: str, data: str, capsys, **options) -> str:
    args = ["probe", uri, "--dataset", data, "--text-col", "body", "--label-col", "topic", "--out", uri + "-probe"]
    for k, v in options.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    assert main(args) == 2
    assert not Path(uri + "-probe").exists()  # nothing written
    return capsys.readouterr().err


def test_dataset_without_the_named_column(tmp_path, tiny_sae_dir, tripwires, capsys):
    uri = labeled_run(tmp_path, str(tiny_sae_dir))
    err = refused(uri, dataset(tmp_path, label="category"), capsys)
    assert "no column 'topic'" in err and "category" in err


def test_class_with_fewer_than_five_examples(tmp_path, tiny_sae_dir, tripwires, capsys):
    uri = labeled_run(tmp_path, str(tiny_sae_dir))
    rows = pq.read_table(dataset(tmp_path)).to_pylist()
    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows + [{"body": "a rare gloss", "topic": "noun.rare"}] * 4))
    err = refused(uri, str(path), capsys)
    assert "noun.rare" in err and "fewer than 5" in err


def test_run_whose_sae_cannot_be_found(tmp_path, tripwires, capsys):
    uri = labeled_run(tmp_path, str(tmp_path / "no-such-sae"))
    err = refused(uri, dataset(tmp_path), capsys)
    assert "no-such-sae" in err and "cannot be found" in err


def test_run_whose_model_cannot_be_found(tmp_path, tiny_sae_dir, tripwires, capsys):
    uri = labeled_run(tmp_path, str(tiny_sae_dir), model=str(tmp_path / "no-such-model"))
    err = refused(uri, dataset(tmp_path), capsys)
    assert "subject model" in err and "no-such-model" in err


def test_run_without_labels(tmp_path, tiny_sae_dir, tripwires, capsys):
    uri = labeled_run(tmp_path, str(tiny_sae_dir), labels=False)
    err = refused(uri, dataset(tmp_path), capsys)
    assert "has no labels" in err


def test_no_run_there(tmp_path, tripwires, capsys):
    err = refused(str(tmp_path / "nothing"), dataset(tmp_path), capsys)
    assert "no run there" in err


def test_hub_dataset_needs_a_bound_and_the_optional_package(monkeypatch):
    import sys

    with pytest.raises(ValueError, match="--max-texts"):
        read_labeled("hf:ag_news", "text", "label")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match=r"pip install 'toklabel\[hf\]'"):
        read_labeled("hf:ag_news", "text", "label", limit=100)


def test_hub_dataset_offline_is_a_clear_error():
    pytest.importorskip("datasets")  # the optional `hf` extra
    with pytest.raises(ValueError, match="'hf:fancyzhx/ag_news': could not stream dataset"):
        read_labeled("hf:fancyzhx/ag_news", "text", "label", limit=10)  # the tests run with HF_HUB_OFFLINE=1


def test_check_classes():
    check_classes(["a"] * 5 + ["b"] * 5, dataset="d")
    with pytest.raises(ValueError, match="at least 2 classes"):
        check_classes(["a"] * 10, dataset="d")
    with pytest.raises(ValueError, match=r"\{'b': 6\}.*fewer than 8 .*\(8 folds\)"):
        check_classes(["a"] * 9 + ["b"] * 6, dataset="d", least=8, needs="8 folds")


@pytest.mark.slow
def test_probe_end_to_end_on_ray(ray_session, tmp_path, tiny_sae_dir, capsys):
    uri = labeled_run(tmp_path, str(tiny_sae_dir))
    data = dataset(tmp_path)
    accept = tmp_path / "accept.json"
    accept.write_text(json.dumps({"noun.animal": ["river1", "bank2"], "noun.food": ["money3"]}))
    out = str(tmp_path / "probe")
    config = ProbeConfig(run=uri, dataset=data, text_col="body", label_col="topic", out=out, chunk=20)
    config.accept = str(accept)
    manifest, text = probe_stage.probe(config)

    assert sorted(p.name for p in Path(out, "features").iterdir()) == [
        "texts-00000000-00000019.parquet",
        "texts-00000020-00000039.parquet",
        "texts-00000040-00000044.parquet",
    ]
    summary = json.loads(Path(out, "summary.json").read_text())
    assert set(summary) == {"dataset", "text_col", "label_col", "results"}
    assert (summary["dataset"], summary["text_col"], summary["label_col"]) == (data, "body", "topic")
    results = summary["results"]
    assert all(set(r) == {"method", "pooling", "binarised", "macro_f1", "accuracy"} for r in results)
    assert [r["method"] for r in results].count("sae") == 10
    assert {(r["pooling"], r["binarised"]) for r in results if r["method"] == "sae"} == {
        (p, b) for p in POOLINGS for b in (False, True)
    }
    assert {r["method"] for r in results} == {"sae", "hidden-mean", "hidden-last", "tfidf"}
    assert all(0 <= r["macro_f1"] <= 1 and 0 <= r["accuracy"] <= 1 for r in results)
    assert max(r["macro_f1"] for r in results if r["method"] == "tfidf") > 0.5  # glosses name their category
    assert manifest["n_test"] == 9 and manifest["classes"] == ["noun.animal", "noun.food", "noun.plant"]

    top = pq.read_table(Path(out, "top_features", "top_features.parquet")).to_pylist()
    shown = [r for r in top if r["interpreted"]]
    chosen = manifest["interpreted"]
    assert shown and all((r["pooling"], r["binarised"]) == (chosen["pooling"], chosen["binarised"]) for r in shown)
    assert all(r["weight"] > 0 and r["rank"] <= 10 for r in shown)
    # Latents 40-47 of the tiny SAE have no label in the run; feature 3 is dead, 5 failed: shown as such.
    for r in top:
        expected = "unlabeled" if r["feature_id"] >= 40 else {3: "dead", 5: "failed"}.get(r["feature_id"], "ok")
        assert r["label_status"] == expected and (r["label"] is None) == (expected != "ok")
    assert any(r["example"] for r in top if r["label_status"] == "ok")
    for c, words in (("noun.animal", {"river1", "bank2"}), ("noun.food", {"money3"})):
        assert manifest["named"][c] == sum(r["label"] in words for r in shown if r["class"] == c)
    assert manifest["named"]["noun.plant"] is None  # no accept list for it
    assert "### noun.animal" in text and Path(out, "probe.md").read_text() == text

    # The report gets a section with the comparison and the per-class weight bars.
    page = tmp_path / "report.html"
    assert main(["report", uri, "-o", str(page), "--probe", out]) == 0
    html = page.read_text()
    assert "Probe: " in html and html.count('class="probe-class"') == 3 and "hidden-last" in html

    # A rerun resumes the features shards; other features settings are refused.
    stamps = {p.name: p.stat().st_mtime_ns for p in Path(out, "features").iterdir()}
    again, _ = probe_stage.probe(config)
    assert {p.name: p.stat().st_mtime_ns for p in Path(out, "features").iterdir()} == stamps
    assert again["named"] == manifest["named"]
    assert json.loads(Path(out, "summary.json").read_text()) == summary
    with pytest.raises(ValueError, match="top_n"):
        probe_stage.probe(ProbeConfig(run=uri, dataset=data, text_col="body", label_col="topic", out=out, top_n=2))


@pytest.mark.slow
def test_an_actor_that_cannot_start_stops_the_probe(ray_session, tmp_path, tiny_sae_dir):
    # The model's config and tokenizer load (the checks pass), its weights do not: only the actor finds out.
    from transformers import BertConfig, BertModel

    from workers.models import load_tokenizer

    folder = tmp_path / "broken-weights"
    config = BertConfig(hidden_size=384, num_hidden_layers=4, num_attention_heads=4, intermediate_size=16)
    BertModel(config).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    uri = labeled_run(tmp_path, str(tiny_sae_dir), model=str(folder))
    config = ProbeConfig(run=uri, dataset=dataset(tmp_path), text_col="body", label_col="topic")
    with pytest.raises(RuntimeError, match="probe actor could not start: .*Error"):
        probe_stage.probe(config)
    assert not Path(config.uri, "summary.json").exists()


@pytest.mark.slow
def test_probe_of_a_run_on_s3(s3_server, monkeypatch, ray_session, tmp_path, tiny_sae_dir):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    uri = "s3://toklabel/runs/probed"
    store = write_run(uri, n_features=40, shard_size=10)
    store.write_text("config.yaml", RunConfig(out=uri, sae=str(tiny_sae_dir), model="minilm", hook=HOOK).to_yaml())
    config = ProbeConfig(run=uri, dataset=dataset(tmp_path), text_col="body", label_col="topic", chunk=30)
    manifest, _ = probe_stage.probe(config)
    assert config.uri == manifest["uri"] == f"{uri}/probes/data"
    out = RunStore(config.uri)
    assert out.list("features") == ["texts-00000000-00000029.parquet", "texts-00000030-00000044.parquet"]
    assert len(out.read_json("summary.json")["results"]) == 13 and out.exists("_manifest.json")
    page = tmp_path / "report.html"
    assert main(["report", uri, "-o", str(page), "--probe", config.uri]) == 0
    assert page.read_text().count('class="probe-class"') == 3
