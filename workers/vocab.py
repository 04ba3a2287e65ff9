"""The label vocabulary: the discriminator's tokens that can stand alone as a readable word."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from wordfreq import zipf_frequency

# Function words carry no concept; as labels they only win on dataset artefacts.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up very
    was we were what when where which while who whom why will with would you your yours yourself yourselves
    also may might must shall upon us whose yet via per among within without one ones two etc""".split()
)

WORD = re.compile(r"[a-z]{2,}")
FREQUENCY_LANGUAGE = "en"  # the language of the default word pattern


@dataclass(frozen=True)
class VocabFilter:
    """Which tokens may appear in a label."""

    min_length: int = 2
    stopwords: bool = False
    """allow stopwords"""
    pattern: str = WORD.pattern
    """regular expression a token must match whole (lower-case ASCII words by default)"""

    def allowed(self, token: str, special: set[str]) -> bool:
        if token in special or len(token) < self.min_length:
            return False
        if not re.fullmatch(self.pattern, token):
            return False
        return self.stopwords or token not in STOPWORDS


def label_vocab(tokenizer, vocab_filter: VocabFilter = VocabFilter()) -> torch.Tensor:
    """Ids of the tokenizer's tokens that the filter allows, ascending."""
    special = set(tokenizer.all_special_tokens)
    ids = []
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token is None or token.startswith("##"):
            continue
        # Decoded, not the raw piece, so byte-level BPE tokens ("Ġdog") are judged as the word they spell.
        if vocab_filter.allowed(tokenizer.convert_tokens_to_string([token]).strip(), special):
            ids.append(token_id)
    if not ids:
        raise ValueError(f"the label vocabulary is empty: no token of the tokenizer matches {vocab_filter}")
    return torch.tensor(ids, dtype=torch.long)


def token_frequencies(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """Zipf frequency (log10 per billion words, 0 when unknown) of each token `ids` spells as a word,
    as a tensor over the whole tokenizer so that any label's token ids index it."""
    freq = torch.zeros(len(tokenizer))
    for token_id, token in zip(ids.tolist(), tokenizer.convert_ids_to_tokens(ids.tolist())):
        freq[token_id] = zipf_frequency(tokenizer.convert_tokens_to_string([token]).strip(), FREQUENCY_LANGUAGE)
    return freq
