"""One feature of a run in the terminal: label, alternatives, score, density, top contexts with highlighted tokens."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from textwrap import shorten

import duckdb

from pipeline.query import has_table, open_run

SPECIAL_TOKENS = {"[CLS]", "[SEP]", "[PAD]", "[MASK]", "<s>", "</s>", "<pad>", "<|endoftext|>", "<bos>", "<eos>"}
UNKNOWN_TOKENS = {"[UNK]", "<unk>"}
# WordPiece splits punctuation into tokens of its own; these glue to their neighbours ("don't", "well-known").
NO_SPACE_BEFORE = set(".,;:!?)]}%'-/")
NO_SPACE_AFTER = set("([{$'-/")
# 256-colour backgrounds from pale to strong yellow-orange: the activation of a token picks one.
SHADES = (230, 229, 228, 221, 214, 208)


class FeatureNotFound(ValueError):
    """The run has no such feature."""


def _wide(text: str) -> bool:
    return bool(text) and unicodedata.east_asian_width(text[-1]) in "WF"


def readable_pieces(tokens: list[str]) -> list[str]:
    """Tokens as text pieces, each with its own leading space, so "".join(pieces) reads as the text.

    WordPiece marks word continuations with "##"; byte-level BPE ("Ġ") and SentencePiece ("▁") mark
    word starts instead. Special tokens become empty pieces, so pieces stay aligned with activations.
    """
    marks_starts = any(t.startswith(("Ġ", "▁")) for t in tokens)
    pieces: list[str] = []
    previous = ""  # the last non-special token's text
    for tok in tokens:
        if tok in SPECIAL_TOKENS:
            pieces.append("")
            continue
        tok = "\ufffd" if tok in UNKNOWN_TOKENS else tok
        if marks_starts:
            starts_word = tok.startswith(("Ġ", "▁"))
            text = tok[1:] if starts_word else tok
        elif tok.startswith("##"):
            starts_word, text = False, tok[2:]
        else:
            # Chinese and Japanese text has no spaces; WordPiece splits it into one token per character.
            starts_word = not (tok in NO_SPACE_BEFORE or previous in NO_SPACE_AFTER or _wide(tok) or _wide(previous))
            text = tok
        pieces.append((" " if starts_word and previous else "") + text)
        previous = text
    return pieces


@dataclass
class Context:
    text: str
    activation: float
    tokens: list[str] | None = None
    token_activations: list[float] | None = None


@dataclass
class Feature:
    feature_id: int
    label: dict | None
    latent: dict | None
    top: list[Context] = field(default_factory=list)
    negatives: list[Context] = field(default_factory=list)


def token_columns(con: duckdb.DuckDBPyConnection) -> str:
    """`tokens, token_activations` for a SELECT on examples, or NULLs where a user's examples table has none."""
    columns = {c[0] for c in con.sql("DESCRIBE examples").fetchall()}
    return "tokens, token_activations" if {"tokens", "token_activations"} <= columns else "NULL, NULL"


def contexts(con: duckdb.DuckDBPyConnection, where: str, params: list, limit: int) -> list[Context]:
    """Examples rows matching `where`, strongest first."""
    rows = con.execute(
        f"SELECT text, activation, {token_columns(con)} FROM examples "
        f"WHERE {where} ORDER BY activation DESC LIMIT {int(limit)}",
        params,
    ).fetchall()
    return [Context(*row) for row in rows]


def load_feature(uri: str, feature_id: int, top: int = 8, negatives: int = 3) -> Feature:
    """Everything the run knows about one feature."""
    con = open_run(uri)

    def one(table: str) -> dict | None:
        if not has_table(con, table):
            return None
        rel = con.execute(f"SELECT * FROM {table} WHERE feature_id = ?", [feature_id])
        names = [d[0] for d in rel.description]
        rows = rel.fetchall()
        return dict(zip(names, rows[0])) if rows else None

    feature = Feature(feature_id, one("labels"), one("latents"))
    if has_table(con, "examples"):
        feature.top = contexts(con, "feature_id = ? AND activation > 0", [feature_id], top)
        feature.negatives = contexts(con, "feature_id = ? AND activation <= 0", [feature_id], negatives)
    if feature.label is None and feature.latent is None and not feature.top and not feature.negatives:
        (lo, hi, n), *_ = con.sql(
            f"SELECT min(feature_id), max(feature_id), count(DISTINCT feature_id) "
            f"FROM {'labels' if has_table(con, 'labels') else 'examples'}"
        ).fetchall()
        raise FeatureNotFound(
            f"feature {feature_id} is not in the run at {uri} (it holds {n} features, ids {lo}..{hi})"
        )
    return feature


def highlight(ctx: Context, color: bool) -> str:
    """A context's text with its active tokens shaded by activation (colour) or marked [[like this]]."""
    if not ctx.tokens or not ctx.token_activations:
        return ctx.text
    peak = max(ctx.token_activations) or 1.0
    out = []
    for piece, act in zip(readable_pieces(ctx.tokens), ctx.token_activations):
        if act <= 0 or not piece.strip():
            out.append(piece)
            continue
        space, word = piece[: len(piece) - len(piece.lstrip())], piece.lstrip()
        if color:
            shade = SHADES[min(len(SHADES) - 1, int(act / peak * len(SHADES)))]
            out.append(f"{space}\033[1;38;5;16;48;5;{shade}m{word}\033[0m")
        else:
            out.append(f"{space}[[{word}]]")
    return "".join(out).replace("]][[", "")


def render(feature: Feature, color: bool = False) -> str:
    """The terminal page of one feature."""
    bold = (lambda s: f"\033[1m{s}\033[0m") if color else (lambda s: s)
    lab = feature.label or {}
    status = lab.get("status", "unlabeled")
    lines = [f"{bold(f'feature {feature.feature_id}')}  status {status}"]
    if lab.get("label") is not None:
        score = lab.get("score")
        score_text = f"{score:.3f} (held-out ROC AUC)" if score is not None else "n/a"
        lines.append(f"label         {bold(lab['label'])}   score {score_text}")
    if lab.get("error"):
        lines.append(f"error         {lab['error']}")
    alternatives = lab.get("alternatives") or []
    if alternatives:
        alts = "  ".join(
            f"{a['label']} {a['score']:.3f}" if a.get("score") is not None else a["label"] for a in alternatives
        )
        lines.append(f"alternatives  {alts}")
    if lab.get("label_source"):
        namer = f" (namer {lab['namer']})" if lab.get("namer") else ""
        lines.append(f"label from    the {lab['label_source']}{namer}")
    proposals = lab.get("proposals") or []
    if proposals:
        props = "  ".join(
            f"{p['label']} {p['train_score']:.3f}{'*' if p['verified'] else ''}"
            if p.get("train_score") is not None
            else p["label"]
            for p in proposals
        )
        lines.append(f"proposals     {props}   (training ROC AUC; * verified)")
    if lab.get("namer_error"):
        lines.append(f"namer error   {lab['namer_error']}")
    if feature.latent:
        lat = feature.latent
        lines.append(
            f"density       {lat['density']:.4g} ({lat['n_active']} contexts active), "
            f"max activation {lat['max_activation']:.3g}"
        )
    if feature.top:
        lines += ["", bold("top activating contexts")]
        lines += [f"  {c.activation:7.3f}  {highlight(c, color)}" for c in feature.top]
    if feature.negatives:
        lines += ["", bold("negatives (not active)")]
        lines += [f"  {c.activation:7.3f}  {shorten(c.text, 160)}" for c in feature.negatives]
    return "\n".join(lines)
