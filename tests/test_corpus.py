"""Tests for workers.corpus.read_corpus and the shipped demo corpus."""

import json
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.corpus import DEMO_CORPUS, make_contexts, parse_hub_name, read_corpus


def test_txt_one_text_per_nonempty_line(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("  first doc \n\n   \nsecond doc\n", encoding="utf-8")
    assert read_corpus(str(f)) == ["first doc", "second doc"]


def test_jsonl_text_column_and_limit(tmp_path):
    f = tmp_path / "c.jsonl"
    rows = [{"body": " a "}, {"body": ""}, {"body": "b"}, {"body": "c"}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_corpus(str(f), text_column="body") == ["a", "b", "c"]
    assert read_corpus(str(f), text_column="body", limit=2) == ["a", "b"]


def test_parquet_text_column(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["x ", None, "  ", "y"], "id": [1, 2, 3, 4]}), f)
    assert read_corpus(str(f)) == ["x", "y"]


def test_missing_file(tmp_path):
    f = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_corpus(str(f))


def test_unknown_suffix(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"c\.csv.*\.txt, \.jsonl, \.parquet"):
        read_corpus(str(f))


def test_missing_column_jsonl(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"body": "hi"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"'text'.*'body'"):
        read_corpus(str(f))


def test_missing_column_parquet(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["hi"]}), f)
    with pytest.raises(ValueError, match=r"'text'.*'body'"):
        read_corpus(str(f))


def test_empty_corpus(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt"):
        read_corpus(str(f))


def test_demo_corpus_shipped():
    assert DEMO_CORPUS.is_file()
    assert DEMO_CORPUS.stat().st_size < 20_000_000
    texts = read_corpus(str(DEMO_CORPUS))
    assert any(re.search(r"[\u4e00-\u9fff]", t) for t in texts)
    assert any(re.fullmatch(r"[A-Za-z][A-Za-z ,.'-]+", t) for t in texts)


@pytest.fixture(scope="module")
def tokenizer():
    from workers.models import MINILM, load_tokenizer

    return load_tokenizer(MINILM)


def test_hf_names_parse():
    assert parse_hub_name("hf:wikitext") == ("wikitext", None, "train")
    assert parse_hub_name("hf:Salesforce/wikitext:wikitext-2-raw-v1:test") == (
        "Salesforce/wikitext",
        "wikitext-2-raw-v1",
        "test",
    )
    with pytest.raises(ValueError, match="hf:NAME"):
        parse_hub_name("hf:")


def test_hf_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the optional package were not installed
    with pytest.raises(ValueError, match=r"'hf:wikitext'.*pip install 'toklabel\[hf\]'"):
        read_corpus("hf:wikitext", limit=10)


def test_hf_needs_a_limit():
    with pytest.raises(ValueError, match="max_contexts"):
        read_corpus("hf:wikitext")


def test_contexts_unchanged_by_default(tokenizer):
    texts = ["one two three", "four"]
    assert make_contexts(texts, tokenizer, 2) is texts


def test_split_documents_into_consecutive_contexts(tokenizer):
    doc = "the quick brown fox jumps over the lazy dog"
    assert make_contexts([doc, "hi"], tokenizer, 4, split_documents=True) == [
        "the quick brown fox",
        "jumps over the lazy",
        "dog",
        "hi",
    ]
    assert make_contexts([doc, "hi"], tokenizer, 4, split_documents=True, min_tokens=4) == [
        "the quick brown fox",
        "jumps over the lazy",
    ]


def test_min_tokens_drops_short_documents(tokenizer):
    assert make_contexts(["a b c d e", "a b"], tokenizer, 64, min_tokens=3) == ["a b c d e"]


def test_contexts_shorter_than_asked_are_refused(tokenizer):
    with pytest.raises(ValueError, match=r"min_context_tokens=8.*longest document: 3 tokens"):
        make_contexts(["a b c", "d e"], tokenizer, 16, split_documents=True, min_tokens=8)
