"""Namers: the bundled SmolLM2 names member lists; the labeler verifies every proposal with the discriminator
and never takes one outside the tie window; `namer: none` leaves the search's labels as they were; bad namer
settings are refused before any work."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.config import RunConfig
from pipeline.driver import prepare_store
from tests.conftest import save_tiny_lm, train_tokenizer
from workers.discriminators import load_discriminator
from workers.labeler import Labeler
from workers.namers import CausalLMNamer, Namer, Naming, check_namer, check_patterns, load_namer
from workers.optimiser import OptimiserConfig
from workers.vocab import decode_label, label_vocab, label_words

WORDS = ["music", "river", "bread", "money", "horse", "winter"]
MEMBER_LISTS = {
    "tools": ["hammer", "saw", "drill", "wrench", "screwdriver", "pliers"],
    "sports": ["football", "tennis", "basketball", "golf", "hockey", "baseball"],
    "vehicles": ["car", "truck", "bus", "motorcycle", "van", "tractor"],
    "instruments": ["piano", "violin", "guitar", "flute", "trumpet", "drum"],
}


@pytest.fixture(scope="module")
def words(minilm) -> list[str]:
    return label_words(minilm.tokenizer, label_vocab(minilm.tokenizer))


@pytest.fixture(scope="module")
def smol(words) -> CausalLMNamer:
    return load_namer("smollm2", words)


@pytest.fixture(scope="module")
def features(minilm, demo_texts) -> pa.Table:
    """Features made by the discriminator itself: active where a known word's label scores in the top 30%."""
    texts = demo_texts["wordnet-example"][:120]
    ids = minilm.tokenizer.convert_tokens_to_ids(WORDS)
    with torch.no_grad():
        raw = minilm.logits(
            minilm.embed_tokens(ids)[:, None, :], minilm.encode_texts(texts), torch.arange(120).expand(len(ids), -1)
        )
    rows = []
    for f, row in enumerate(raw.numpy()):
        active = row > np.quantile(row, 0.7)
        rows += [{"feature_id": f, "text": t, "activation": float(a)} for t, a in zip(texts, active)]
    schema = pa.schema([("feature_id", pa.int64()), ("text", pa.string()), ("activation", pa.float32())])
    return pa.Table.from_pylist(rows, schema=schema)


class FixedNamer(Namer):
    """Proposes the same words for every feature, best first, and scores every candidate far below them."""

    name = "fixed"

    def __init__(self, proposals: list[str]):
        self.fixed = proposals

    def name_features(self, candidates, top, max_words=1):
        return [
            Naming([(w, -float(i)) for i, w in enumerate(self.fixed)], {c: -100.0 for c in cands})
            for cands in candidates
        ]


class FailingNamer(Namer):
    name = "failing"

    def name_features(self, candidates, top, max_words=1):
        raise RuntimeError("out of memory")


def labels(table: pa.Table) -> list[str]:
    return [r["label"] for r in table.to_pylist()]


@pytest.mark.parametrize("category", sorted(MEMBER_LISTS))
def test_the_bundled_namer_names_member_lists(smol, category):
    naming = smol.name_features([MEMBER_LISTS[category]], top=5)[0]
    proposed = [w for w, _ in naming.proposals]
    assert category in proposed, proposed
    assert not set(proposed) & set(MEMBER_LISTS[category])
    assert [s for _, s in naming.proposals] == sorted((s for _, s in naming.proposals), reverse=True)


def test_a_listed_category_is_judged_by_the_other_members(smol):
    """A candidate that already names the others outscores the members: each is judged by the half of the
    list it is not in, so no word is judged by a list holding it."""
    candidates = ["tools", *MEMBER_LISTS["tools"][:5]]
    scores = smol.name_features([candidates], top=5)[0].scores
    # Words the namer's tokenizer splits ("screwdriver") are not scored; the others are.
    assert {"tools", "hammer", "saw", "drill"} <= set(scores) <= set(candidates)
    assert max(scores, key=scores.get) == "tools", scores


def test_two_word_proposals_are_compounds(smol):
    naming = smol.name_features([MEMBER_LISTS["instruments"]], top=8, max_words=2)[0]
    phrases = [w for w, _ in naming.proposals if " " in w]
    assert "musical instruments" in phrases, naming.proposals
    assert all(a[:4] != b[:4] for a, b in (p.split() for p in phrases))


def test_the_search_labels_stand_without_a_namer(minilm, features):
    """`namer: none` is the search alone: each label is the optimiser's own first candidate."""
    vocab = label_vocab(minilm.tokenizer)
    cfg = OptimiserConfig(steps=30)
    labeler = Labeler(minilm, vocab, cfg, batch_size=len(WORDS))
    _, live = labeler._triage(features, list(range(len(WORDS))))
    searches, _, _ = labeler._search(live)
    expected = [decode_label(minilm.tokenizer, s.candidates[0][0]) for s in searches]
    out = Labeler(minilm, vocab, cfg, batch_size=len(WORDS)).label(features, list(range(len(WORDS)))).to_pylist()
    assert [r["label"] for r in out] == expected
    assert {r["label_source"] for r in out} == {"search"} and all(r["proposals"] == [] for r in out)
    assert all(r["namer"] is None and r["namer_error"] is None for r in out)


def test_verification_never_takes_a_proposal_outside_the_tie_window(minilm, features):
    """The namer's favourite proposals ("zebra", "volcano") predict none of the features; the planted words
    themselves, proposed last, do. A proposal is verified exactly when its training AUROC is within tie_window
    of the search's best, and only a verified one may lead."""
    vocab = label_vocab(minilm.tokenizer)
    cfg = OptimiserConfig(steps=30, tie_window=0.05)
    ids = list(range(len(WORDS)))
    labeler = Labeler(minilm, vocab, cfg, batch_size=len(WORDS), namer=FixedNamer(["zebra", "volcano", *WORDS]))
    _, live = labeler._triage(features, ids)
    best = [max(c[1] for c in s.candidates) for s in labeler._search(live)[0]]
    for row, top in zip(labeler.label(features, ids).to_pylist(), best):
        proposals = {p["label"]: p for p in row["proposals"]}
        assert not proposals["zebra"]["verified"] and not proposals["volcano"]["verified"]
        assert all(p["verified"] == (p["train_score"] >= top - 0.05) for p in row["proposals"]), (top, proposals)
        assert row["train_score"] >= top - 0.05 - 1e-9
        # Each feature's planted word is within the window and outscores every candidate in the namer's eyes.
        assert row["label"] == WORDS[row["feature_id"]], (row["label"], proposals)


def test_a_failing_namer_keeps_the_search_labels(minilm, features):
    vocab = label_vocab(minilm.tokenizer)
    cfg = OptimiserConfig(steps=30)
    plain = Labeler(minilm, vocab, cfg, batch_size=3).label(features, list(range(len(WORDS))))
    failed = Labeler(minilm, vocab, cfg, batch_size=3, namer=FailingNamer()).label(features, list(range(len(WORDS))))
    assert labels(failed) == labels(plain)
    rows = failed.to_pylist()
    assert all(r["status"] == "ok" and r["label_source"] == "search" for r in rows)
    assert all("out of memory" in r["namer_error"] for r in rows)


def test_a_causal_lm_discriminator_names_its_own_features(tiny_llama_dir):
    disc = load_discriminator(tiny_llama_dir)
    words = label_words(disc.tokenizer, label_vocab(disc.tokenizer))
    namer = load_namer("discriminator", words, discriminator=disc)
    assert namer.model is disc.model
    naming = namer.name_features([words[:6]], top=4)[0]
    assert len(naming.proposals) == 4 and not {w for w, _ in naming.proposals} & set(words[:6])


def test_bad_patterns_are_refused():
    for bad in (["kinds of"], ["{members}"], ["{members} and {members} are"], []):
        with pytest.raises(ValueError, match="namer"):
            check_patterns(bad)
    with pytest.raises(ValueError, match="namer_patterns"):
        RunConfig(out="x", namer_patterns=["no slot here"])


@pytest.fixture(scope="module")
def few_words_lm(tmp_path_factory, demo_texts) -> str:
    """A causal LM whose tokenizer has almost no whole words: it cannot read a list of label words."""
    tokenizer = train_tokenizer("bpe", demo_texts["wordnet-example"][:200], vocab_size=300)
    return save_tiny_lm("llama", tokenizer, tmp_path_factory.mktemp("few-words"))


def test_unusable_namers_are_refused_before_any_work(tmp_path, few_words_lm, tiny_sae_dir):
    cases = {
        str(tmp_path / "missing"): "cannot be used",
        "discriminator": "needs a causal-LM discriminator",
        few_words_lm: "whole-word tokens",
        "minilm": "a namer is a causal LM",
    }
    for namer, message in cases.items():
        with pytest.raises(ValueError, match=message):
            check_namer(namer, "minilm")
        config = RunConfig(out=str(tmp_path / "run"), sae=tiny_sae_dir, corpus="x.txt", namer=namer)
        with pytest.raises(ValueError, match=message):
            prepare_store(config)
        assert not (tmp_path / "run").exists()
    check_namer("none", "minilm")
