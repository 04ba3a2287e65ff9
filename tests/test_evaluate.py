import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import cli
from pipeline.config import DEMO_CONFIG, RunConfig
from pipeline.evaluate import PLANTED, SAE_RUN, EvalSet, evaluate, load_eval_set, markdown, score_methods
from workers.baselines import decoder_token_labels, top_token_labels
from workers.labeler import Labeler
from workers.models import load_tokenizer
from workers.optimiser import OptimiserConfig
from workers.sae import load_sae, save_saelens
from workers.supervised import f1_matrix, f1_threshold, planted_sae, supervised_dictionary
from workers.vocab import label_vocab

# Floors of the regression test: the values measured on its subset (planted 5 of 22 named, median held-out
# AUROC 0.840 over latents 0-31, planted median 0.904), minus a margin.
FLOOR_PLANTED_CORRECT = 4
FLOOR_MEDIAN_AUROC = 0.81
FLOOR_PLANTED_MEDIAN_AUROC = 0.87


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def test_supervised_dictionary_is_conditional_mean_minus_mean():
    acts = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 6.0]])
    attributes = torch.tensor([[True, False], [True, False], [False, True], [True, True]])
    mean, u = supervised_dictionary(acts, attributes)
    assert torch.allclose(mean, torch.tensor([1.0, 2.0]))
    assert torch.allclose(u[0], torch.tensor([4.0 / 3, 2.0]) - mean)
    assert torch.allclose(u[1], torch.tensor([0.0, 4.0]) - mean)
    with pytest.raises(ValueError, match="hold for no context"):
        supervised_dictionary(acts, torch.zeros(4, 1, dtype=torch.bool))


def test_f1_threshold_and_matrix():
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    positive = np.array([True, True, False, False, False])
    threshold, f1 = f1_threshold(scores, positive)
    assert 0.3 < threshold < 0.8 and f1 == 1.0
    # Ties are cut together: the threshold never falls between equal scores.
    threshold, _ = f1_threshold(np.array([1.0, 1.0, 0.0]), np.array([True, False, False]))
    assert 0.0 < threshold < 1.0
    firing = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=bool)
    attributes = np.array([[1], [1], [0], [0]], dtype=bool)
    assert np.allclose(f1_matrix(firing, attributes), [[1.0], [0.5]])


def test_planted_sae_reads_directions_above_thresholds(tmp_path):
    gen = torch.Generator().manual_seed(0)
    u, mean = torch.randn(3, 16, generator=gen), torch.randn(16, generator=gen)
    sae = planted_sae(u, mean, torch.tensor([0.5, 0.5, 3.0]), "minilm", "blocks.3.hook_resid_post")
    unit = torch.nn.functional.normalize(u, dim=-1)
    x = mean + 2 * unit[0]
    z = sae.encode(x[None])[0]
    assert z[0] == pytest.approx(2.0, abs=1e-5)
    assert sae.encode((mean + 2 * unit[2])[None])[0, 2] == 0  # below its threshold
    save_saelens(sae, tmp_path / "planted")
    loaded = load_sae(tmp_path / "planted")
    assert loaded.cfg.architecture == "jumprelu"
    assert torch.allclose(loaded.encode(x[None]), z[None])


def toy_examples(rows) -> pa.Table:
    schema = pa.schema(
        [
            ("feature_id", pa.int64()),
            ("text", pa.string()),
            ("activation", pa.float32()),
            ("kind", pa.string()),
            ("tokens", pa.list_(pa.string())),
            ("token_activations", pa.list_(pa.float32())),
        ]
    )
    names = schema.names
    return pa.Table.from_pylist([dict(zip(names, r)) for r in rows], schema=schema)


def test_top_token_prefers_label_vocabulary(tokenizer):
    words = set(tokenizer.convert_ids_to_tokens(label_vocab(tokenizer).tolist()))
    rows = [
        (0, "the dog ran", 1.0, "top", ["the", "dog", "ran"], [0.1, 0.9, 0.2]),
        (0, "a dog", 1.0, "top", ["a", "dog"], [0.0, 0.5]),
        (0, "cat here", 1.0, "top", ["cat", "here"], [0.7, 0.1]),
        (0, "quiet", 0.0, "random", None, None),
        # Peaks on a word piece twice and on a vocabulary word once: the word wins.
        (1, "dogs", 1.0, "top", ["dog", "##s"], [0.1, 0.8]),
        (1, "cats", 1.0, "top", ["cat", "##s"], [0.1, 0.8]),
        (1, "rivers", 1.0, "top", ["river", "##s"], [0.9, 0.1]),
        # Only pieces outside the vocabulary: the most frequent stands.
        (2, ",", 1.0, "top", [","], [0.4]),
    ]
    assert top_token_labels(toy_examples(rows), words, tokenizer) == {0: "dog", 1: "river", 2: ","}


def test_decoder_token_is_nearest_embedding(tokenizer):
    embedding = torch.randn(len(tokenizer), 8, generator=torch.Generator().manual_seed(0))
    vocab = label_vocab(tokenizer)
    wanted = tokenizer.convert_tokens_to_ids(["music", "river"])
    decoder = torch.stack([3 * embedding[wanted[0]], embedding[wanted[1]] + 0.01])
    assert decoder_token_labels(decoder, embedding, vocab, tokenizer, [0, 1]) == {0: "music", 1: "river"}
    with pytest.raises(ValueError, match="width"):
        decoder_token_labels(torch.zeros(2, 4), embedding, vocab, tokenizer, [0])


def test_score_labels_matches_labeling(minilm, demo_texts):
    """A fixed label is scored exactly as the labeler scores the label it found (same split, same metrics)."""
    texts = demo_texts["wordnet-example"][:80]
    rows = []
    for f, word in enumerate(["water", "music"]):
        rows += [(f, t, float(word in t.lower() or i % 7 == 0)) for i, t in enumerate(texts)]
    table = pa.Table.from_pylist(
        [dict(zip(["feature_id", "text", "activation"], r)) for r in rows],
        schema=pa.schema([("feature_id", pa.int64()), ("text", pa.string()), ("activation", pa.float32())]),
    )
    labeler = Labeler(minilm, label_vocab(minilm.tokenizer), OptimiserConfig(steps=10), batch_size=8)
    found = labeler.label(table, [0, 1]).to_pylist()
    scored = labeler.score_labels(table, {r["feature_id"]: r["label"] for r in found}).to_pylist()
    for a, b in zip(found, scored):
        assert (a["label"], a["status"]) == (b["label"], b["status"])
        assert b["score"] == pytest.approx(a["score"]) and b["f1"] == pytest.approx(a["f1"])
        assert b["train_score"] == pytest.approx(a["train_score"])


def labels_table(rows) -> pa.Table:
    return pa.Table.from_pylist([{"feature_id": f, "label": lab, "score": s, "status": "ok"} for f, lab, s in rows])


def test_score_methods_counts_accuracy_and_ground_truth():
    data = EvalSet(
        texts=["a", "b", "c", "d"],
        categories=["noun.animal", "noun.food"],
        attributes=np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=bool),
        accept={"noun.animal": {"animal", "animals"}, "noun.food": {"food"}},
    )
    # Latent 7 fires on the animal sentences (F1 1.0), latent 9 on one of four (F1 below 0.5 everywhere).
    firing = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], dtype=bool)
    labels = {
        PLANTED: {"toklabel": labels_table([(0, "Animals", 0.9), (1, "bread", 0.8)])},
        SAE_RUN: {"toklabel": labels_table([(7, "animal", 0.7), (9, "x", 0.6)])},
    }
    planted = {"thresholds": [0.1, 0.2], "f1": [0.8, 0.7]}
    results = score_methods(labels, data, firing, [7, 9], planted)
    [row] = results["table"]
    assert (row["planted_correct"], row["planted_total"]) == (1, 2)
    assert row["median_auroc"] == pytest.approx(0.65) and row["live_latents"] == 2
    assert (row["ground_truth_agree"], row["ground_truth_latents"]) == (1, 1)
    assert results["ground_truth"][0]["category"] == "noun.animal"
    results["settings"] = {
        "sae": "x",
        "features": 2,
        "categories": 2,
        "sentences": 4,
        "optimiser": "st-gumbel",
        "steps": 1,
        "discriminator": "minilm",
        "match_f1": 0.5,
    }
    results["seconds"] = {}
    text = markdown(results)
    assert "| toklabel | 1/2 (0.50) |" in text and "**Animals** 0.90" in text


def test_shipped_eval_set():
    data = load_eval_set()
    assert {"noun.animal", "noun.food", "noun.artifact"} <= set(data.categories)
    assert data.attributes.sum(0).min() >= 100
    assert "animals" in data.accept["noun.animal"] and "dog" not in data.accept["noun.animal"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "s3://bucket/eval"], "local folder"),
        (["--features", "5000-5001"], "ids must lie in"),
        (["--baselines", "random"], "unknown baseline"),
    ],
)
def test_eval_refuses_bad_input_early(tmp_path, capsys, args, message):
    out = ["--out", str(tmp_path / "eval")]
    assert cli.main(["eval", *out, *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_eval_regression_floors(tmp_path, ray_session):
    """Planted features plus 32 demo latents on a subset; a change that makes labels worse fails here."""
    config = RunConfig.from_yaml(DEMO_CONFIG, out=str(tmp_path / "eval"), features="0-31", max_contexts=3000, steps=50)
    results = evaluate(config, sentences=1500, baselines=())
    [row] = results["table"]
    assert row["planted_correct"] >= FLOOR_PLANTED_CORRECT, results["planted"]
    assert row["median_auroc"] >= FLOOR_MEDIAN_AUROC
    assert row["planted_median_auroc"] >= FLOOR_PLANTED_MEDIAN_AUROC
    assert (tmp_path / "eval" / "eval.md").is_file() and (tmp_path / "eval" / "eval.json").is_file()
