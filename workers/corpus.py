"""Read a text corpus (.txt, .jsonl or .parquet) into a list of strings."""

from __future__ import annotations

import json
from pathlib import Path

# workers/corpus.py -> repo root is two levels up; the demo corpus ships in repo/data.
DEMO_CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus" / "demo.jsonl"
SUFFIXES = (".txt", ".jsonl", ".parquet")


def _column(rows: list[dict], text_column: str, path: str) -> list:
    """Return one column of jsonl rows, failing with the columns that do exist."""
    missing = [r for r in rows if text_column not in r]
    if missing:
        found = sorted({k for r in rows for k in r})
        raise ValueError(f"{path}: no text column {text_column!r}; columns found: {found}")
    return [r[text_column] for r in rows]


def read_corpus(path: str, text_column: str = "text", limit: int | None = None) -> list[str]:
    """Return the stripped, non-empty texts of a corpus file, at most `limit` of them."""
    if str(path).startswith("hf:"):
        raise ValueError(f"{path}: Hugging Face datasets need the network and are not supported in this version")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        raw = p.read_text(encoding="utf-8").splitlines()
    elif suffix == ".jsonl":
        lines = p.read_text(encoding="utf-8").splitlines()
        raw = _column([json.loads(line) for line in lines if line.strip()], text_column, path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # imported here so .txt/.jsonl work without pyarrow

        names = pq.read_schema(p).names
        if text_column not in names:
            raise ValueError(f"{path}: no text column {text_column!r}; columns found: {names}")
        # Read only the text column: other columns may be large (e.g. embeddings).
        raw = pq.read_table(p, columns=[text_column]).column(text_column).to_pylist()
    else:
        raise ValueError(f"{path}: unsupported corpus format; accepted suffixes: {', '.join(SUFFIXES)}")
    # Nulls and non-strings (e.g. a null parquet cell) are dropped like empty lines.
    texts = [t.strip() for t in raw if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError(f"{path}: corpus has no non-empty texts")
    return texts[:limit] if limit is not None else texts
