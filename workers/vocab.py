"""The label vocabulary: the discriminator's tokens that can stand alone as a readable word.

Tokenizers mark words in one of two ways. WordPiece (BERT, MiniLM) marks the pieces that continue a word
("##s"); every other token starts a word. Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) and SentencePiece
(Llama 2, Gemma, Mistral) mark the pieces that start a word with the space before it ("Ġdog", "▁dog"), and
the same letters without the mark ("dog") are a fragment of a longer word. A label is a sequence of whole
words, so only word-start tokens qualify, each surface form once; with a space mark the label's tokens carry
their own spaces, and a label decodes as the words it spells. The mark says where a word starts, not where it
ends ("Ġdescrib" begins "describe"), so with a mark a token must also spell a word of the frequency list.
"""

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
CONTINUATION = "##"  # WordPiece's mark on a piece that continues a word


@dataclass(frozen=True)
class VocabFilter:
    """Which tokens may appear in a label."""

    min_length: int = 2
    stopwords: bool = False
    """allow stopwords"""
    pattern: str = WORD.pattern
    """regular expression a token must match whole (lower-case ASCII words by default)"""
    known_words: bool = True
    """with a space-marked tokenizer, a word-start token must spell a word that wordfreq's FREQUENCY_LANGUAGE
    list knows: the start of a longer word ("describ", "veget": about 5% of SmolLM2's word starts) is left
    out. WordPiece's word-start tokens are whole words already (all but 9 names of MiniLM's are in the list).
    Set False with a pattern for another language."""

    def allowed(self, token: str, special: set[str], space_marked: bool = False) -> bool:
        if token in special or len(token) < self.min_length:
            return False
        if not re.fullmatch(self.pattern, token):
            return False
        if not self.stopwords and token in STOPWORDS:
            return False
        return not (self.known_words and space_marked) or zipf_frequency(token, FREQUENCY_LANGUAGE) > 0


def space_mark(tokenizer) -> str | None:
    """The mark a tokenizer puts on a word-start token for the space before it ("Ġ", "▁"), or None where word
    starts are unmarked (WordPiece, word-level tokenizers)."""
    last = tokenizer.tokenize("a a")[-1]  # a single letter is a token of every vocabulary
    return last[:-1] if len(last) > 1 and last.endswith("a") else None


def label_vocab(tokenizer, vocab_filter: VocabFilter = VocabFilter()) -> torch.Tensor:
    """Ids of the tokenizer's word-start tokens whose word the filter allows, one per word, ascending."""
    special = set(tokenizer.all_special_tokens)
    mark = space_mark(tokenizer)
    words: dict[str, int] = {}
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token is None or token in special or token.startswith(CONTINUATION):
            continue
        if mark is not None and not token.startswith(mark):
            continue  # a fragment: the same letters inside or at the end of a longer word
        # Decoded, not the raw piece, so byte-level tokens ("Ġdog") are judged as the word they spell.
        word = tokenizer.convert_tokens_to_string([token]).strip()
        if vocab_filter.allowed(word, special, space_marked=mark is not None):
            words.setdefault(word, token_id)
    if not words:
        raise ValueError(f"the label vocabulary is empty: no token of the tokenizer matches {vocab_filter}")
    return torch.tensor(sorted(words.values()), dtype=torch.long)


def label_token_ids(tokenizer, label: str) -> tuple[int, ...]:
    """Token ids of a label's text as the label vocabulary spells words: with a space mark each word is its
    word-start form, as it would follow a space."""
    text = label.strip()
    if space_mark(tokenizer) is not None:
        text = " " + text
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def decode_label(tokenizer, ids) -> str:
    """The words a label's token ids spell."""
    return tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(list(ids))).strip()


def label_words(tokenizer, ids: torch.Tensor) -> list[str]:
    """The word each label-vocabulary token `ids` spells, in order."""
    return [decode_label(tokenizer, [i]) for i in ids.tolist()]


def token_frequencies(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """Zipf frequency (log10 per billion words, 0 when unknown) of each token `ids` spells as a word,
    as a tensor over the whole tokenizer so that any label's token ids index it."""
    freq = torch.zeros(len(tokenizer))
    for token_id in ids.tolist():
        freq[token_id] = zipf_frequency(decode_label(tokenizer, [token_id]), FREQUENCY_LANGUAGE)
    return freq
