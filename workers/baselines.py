"""Baseline labels that need no search, to be scored exactly as found labels are (`Labeler.score_labels`).

- top token: the token at which each of a feature's top contexts peaks, the most frequent one;
- decoder token: the vocabulary token whose input embedding is nearest (cosine) the latent's decoder row.
Both draw from the label vocabulary, so they compete with the labeler on the same words.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import torch
import torch.nn.functional as F


def token_word(tokenizer, token: str) -> str:
    """A tokenizer piece as the word it spells ("Ġdog" -> "dog", "##s" -> "s")."""
    return tokenizer.convert_tokens_to_string([token]).strip().removeprefix("##")


def top_token_labels(examples: pa.Table, vocab_words: set[str], tokenizer) -> dict[int, str]:
    """Per feature, the most frequent peak token of its `top` examples (ties: the earliest seen).

    Peak tokens outside the label vocabulary are skipped when any peak token is inside it; otherwise
    the most frequent peak token stands, whatever it is. Features without per-token detail get none.
    """
    cols = examples.select(["feature_id", "kind", "tokens", "token_activations"]).to_pydict()
    peaks: dict[int, Counter] = {}
    for fid, kind, tokens, acts in zip(*cols.values()):
        if kind != "top" or not tokens or not acts:
            continue
        n = min(len(tokens), len(acts))
        peak = max(range(n), key=acts.__getitem__)
        word = token_word(tokenizer, tokens[peak])
        if word:
            peaks.setdefault(int(fid), Counter())[word] += 1
    labels = {}
    for fid, counts in peaks.items():
        ranked = [w for w, _ in counts.most_common()]
        labels[fid] = next((w for w in ranked if w in vocab_words), ranked[0])
    return labels


@torch.no_grad()
def decoder_token_labels(
    decoder: torch.Tensor, embedding: torch.Tensor, vocab: torch.Tensor, tokenizer, feature_ids: list[int]
) -> dict[int, str]:
    """Per feature, the label-vocabulary token (ids `vocab`) whose row of `embedding` [V, d] is nearest in
    cosine to the feature's decoder row (`decoder` [L, d]); refused when the widths differ."""
    if decoder.shape[1] != embedding.shape[1]:
        raise ValueError(
            f"decoder rows have width {decoder.shape[1]} and the embedding matrix {embedding.shape[1]}: "
            "the nearest-token baseline needs the SAE to read a space of the embedding's width"
        )
    ids = torch.as_tensor(feature_ids, dtype=torch.long)
    sims = F.normalize(decoder[ids], dim=-1) @ F.normalize(embedding[vocab], dim=-1).T
    nearest = vocab[sims.argmax(-1)].tolist()
    return {fid: token_word(tokenizer, tok) for fid, tok in zip(feature_ids, tokenizer.convert_ids_to_tokens(nearest))}
