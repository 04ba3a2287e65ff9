"""Tests for workers.corpus.read_corpus and the shipped demo corpus."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.corpus import DEMO_CORPUS, read_corpus


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


def test_hf_names_rejected():
    with pytest.raises(ValueError, match="Hugging Face"):
        read_corpus("hf:wikitext")


def test_demo_corpus_shipped():
    assert DEMO_CORPUS.is_file()
    assert DEMO_CORPUS.stat().st_size < 20_000_000
    texts = read_corpus(str(DEMO_CORPUS))
    assert any(re.search(r"[\u4e00-\u9fff]", t) for t in texts)
    assert any(re.fullmatch(r"[A-Za-z][A-Za-z ,.'-]+", t) for t in texts)
