"""Read a text corpus (.txt, .jsonl, .parquet or a Hugging Face dataset) and cut it into contexts."""

from __future__ import annotations

import json
from pathlib import Path

# workers/corpus.py -> repo root is two levels up; the demo corpus ships in repo/data.
DEMO_CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus" / "demo.jsonl"
SUFFIXES = (".txt", ".jsonl", ".parquet")
HUB_PREFIX = "hf:"


def _column(rows: list[dict], text_column: str, path: str) -> list:
    """Return one column of jsonl rows, failing with the columns that do exist."""
    missing = [r for r in rows if text_column not in r]
    if missing:
        found = sorted({k for r in rows for k in r})
        raise ValueError(f"{path}: no text column {text_column!r}; columns found: {found}")
    return [r[text_column] for r in rows]


def read_corpus(path: str, text_column: str = "text", limit: int | None = None) -> list[str]:
    """Return the stripped, non-empty texts of a corpus file, at most `limit` of them."""
    if str(path).startswith(HUB_PREFIX):
        raw = _read_hub(str(path), text_column, limit)
        texts = [t.strip() for t in raw if isinstance(t, str) and t.strip()]
        if not texts:
            raise ValueError(f"{path}: corpus has no non-empty texts")
        return texts
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


def parse_hub_name(spec: str) -> tuple[str, str | None, str]:
    """Split "hf:NAME[:CONFIG][:SPLIT]" into (name, config or None, split; default "train")."""
    parts = spec[len(HUB_PREFIX) :].split(":")
    if not parts[0] or len(parts) > 3 or not all(parts):
        raise ValueError(f"corpus {spec!r}: expected hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT")
    name, config, split = (parts + [None, None])[:3]
    return name, config, split or "train"


def _read_hub(spec: str, text_column: str, limit: int | None) -> list:
    """Stream the first `limit` texts of a Hugging Face dataset (needs the optional `datasets` package)."""
    name, config, split = parse_hub_name(spec)
    if limit is None:
        raise ValueError(f"corpus {spec!r}: hub datasets are streamed; set max_contexts to bound how many documents")
    try:
        import datasets
    except ImportError:
        raise ValueError(f"corpus {spec!r} needs the optional package 'datasets': pip install 'toklabel[hf]'") from None
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
        rows = [row for row, _ in zip(stream, range(limit))]
    except Exception as error:  # noqa: BLE001 - offline, unknown name, bad split: all surface as one clear error
        raise ValueError(
            f"corpus {spec!r}: could not stream dataset {name!r} ({type(error).__name__}: {error})"
        ) from None
    return _column(rows, text_column, spec)


def make_contexts(
    texts: list[str], tokenizer, length: int, split_documents: bool = False, min_tokens: int | None = None
) -> list[str]:
    """Cut documents into contexts of at most `length` tokens of `tokenizer`.

    Without `split_documents` a document is one context (the harvest truncates it); with it, a long
    document becomes consecutive contexts of `length` tokens. Contexts shorter than `min_tokens`
    are dropped; if none is left, a ValueError names the value.
    """
    if not split_documents and not min_tokens:
        return texts
    if not tokenizer.is_fast:
        raise ValueError(
            f"split_documents / min_context_tokens need a fast tokenizer; {type(tokenizer).__name__} is not"
        )
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    contexts, longest = [], 0
    for text, offsets in zip(texts, enc["offset_mapping"]):
        longest = max(longest, len(offsets))
        starts = range(0, len(offsets), length) if split_documents else [0] if offsets else []
        for start in starts:
            piece = offsets[start : start + length]
            if len(piece) >= (min_tokens or 1):
                contexts.append(text[piece[0][0] : piece[-1][1]])
    if not contexts:
        raise ValueError(
            f"min_context_tokens={min_tokens}: no context of the corpus has that many tokens "
            f"(longest document: {longest} tokens); lower min_context_tokens or use a corpus of longer documents"
        )
    return contexts
