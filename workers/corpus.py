"""Read a text corpus (.txt, .jsonl, .parquet or a Hugging Face dataset) and cut it into contexts."""

from __future__ import annotations

import json
from pathlib import Path

# workers/corpus.py -> repo root is two levels up; the demo corpus ships in repo/data.
DEMO_CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus" / "demo.jsonl"
SUFFIXES = (".txt", ".jsonl", ".parquet")
HUB_PREFIX = "hf:"


def _column(rows: list[dict], column: str, path: str) -> list:
    """Return one column of jsonl rows, failing with the columns that do exist."""
    missing = [r for r in rows if column not in r]
    if missing:
        found = sorted({k for r in rows for k in r})
        raise ValueError(f"{path}: no column {column!r}; columns found: {found}")
    return [r[column] for r in rows]


def read_columns(
    path: str, columns: list[str], limit: int | None = None, limit_option: str = "max_contexts"
) -> dict[str, list]:
    """The named columns of a .jsonl / .parquet file or a hub dataset, as read (nulls kept); for hub datasets
    the first `limit` rows, which `limit_option` (the setting that bounds them) must give."""
    if str(path).startswith(HUB_PREFIX):
        return _read_hub(str(path), columns, limit, limit_option)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        lines = p.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        return {c: _column(rows, c, path) for c in columns}
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # imported here so .txt/.jsonl work without pyarrow

        names = pq.read_schema(p).names
        for c in columns:
            if c not in names:
                raise ValueError(f"{path}: no column {c!r}; columns found: {names}")
        # Read only the named columns: others may be large (e.g. embeddings).
        table = pq.read_table(p, columns=list(dict.fromkeys(columns)))
        return {c: table.column(c).to_pylist() for c in columns}
    raise ValueError(f"{path}: unsupported format; accepted suffixes: .jsonl, .parquet, or {HUB_PREFIX}NAME")


def read_corpus(path: str, text_column: str = "text", limit: int | None = None) -> list[str]:
    """Return the stripped, non-empty texts of a corpus file, at most `limit` of them."""
    hub = str(path).startswith(HUB_PREFIX)
    if not hub and Path(path).suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: unsupported corpus format; accepted suffixes: {', '.join(SUFFIXES)}")
    if not hub and Path(path).suffix.lower() == ".txt":
        if not Path(path).is_file():
            raise FileNotFoundError(f"corpus file not found: {path}")
        raw = Path(path).read_text(encoding="utf-8").splitlines()
    else:
        raw = read_columns(path, [text_column], limit)[text_column]
    # Nulls and non-strings (e.g. a null parquet cell) are dropped like empty lines.
    texts = [t.strip() for t in raw if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError(f"{path}: corpus has no non-empty texts")
    return texts[:limit] if limit is not None else texts


def parse_hub_name(spec: str) -> tuple[str, str | None, str]:
    """Split "hf:NAME[:CONFIG][:SPLIT]" into (name, config or None, split; default "train")."""
    parts = spec[len(HUB_PREFIX) :].split(":")
    if not parts[0] or len(parts) > 3 or not all(parts):
        raise ValueError(f"{spec!r}: expected hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT")
    name, config, split = (parts + [None, None])[:3]
    return name, config, split or "train"


def _read_hub(spec: str, columns: list[str], limit: int | None, limit_option: str) -> dict[str, list]:
    """Stream the first `limit` rows of a Hugging Face dataset (needs the optional `datasets` package);
    class-label columns come back as their class names."""
    name, config, split = parse_hub_name(spec)
    if limit is None:
        raise ValueError(f"{spec!r}: hub datasets are streamed; set {limit_option} to bound how many rows")
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{spec!r} needs the optional package 'datasets': pip install 'toklabel[hf]'") from None
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
        rows = [row for row, _ in zip(stream, range(limit))]
    except Exception as error:  # noqa: BLE001 - offline, unknown name, bad split: all surface as one clear error
        raise ValueError(f"{spec!r}: could not stream dataset {name!r} ({type(error).__name__}: {error})") from None
    out = {c: _column(rows, c, spec) for c in columns}
    for c in columns:
        feature = (stream.features or {}).get(c)
        if hasattr(feature, "int2str"):
            out[c] = [feature.int2str(v) if isinstance(v, int) else v for v in out[c]]
    return out


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
