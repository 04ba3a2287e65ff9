"""The label vocabulary on WordPiece (MiniLM), byte-level BPE and SentencePiece tokenizers trained in the tests,
and the real SmolLM2 tokenizer: whole words only, each once, decoded labels read as words."""

import re

import pytest
from wordfreq import zipf_frequency

from workers.models import load_tokenizer
from workers.vocab import (
    FREQUENCY_LANGUAGE,
    STOPWORDS,
    VocabFilter,
    decode_label,
    label_token_ids,
    label_vocab,
    label_words,
    space_mark,
)


@pytest.fixture(scope="module", params=["minilm", "smollm2", "bpe", "sentencepiece"])
def tokenizer(request, trained_tokenizers):
    return trained_tokenizers[request.param] if request.param in trained_tokenizers else load_tokenizer(request.param)


def test_space_marks(trained_tokenizers):
    assert space_mark(load_tokenizer("minilm")) is None
    assert space_mark(load_tokenizer("smollm2")) == "Ġ" == space_mark(trained_tokenizers["bpe"])
    assert space_mark(trained_tokenizers["sentencepiece"]) == "▁"


def test_the_vocabulary_is_whole_words_each_once(tokenizer):
    vocab = label_vocab(tokenizer).tolist()
    words = [decode_label(tokenizer, [i]) for i in vocab]
    assert len(vocab) > 300
    assert all(re.fullmatch(r"[a-z]{2,}", w) for w in words)
    assert not set(words) & STOPWORDS
    assert len(set(words)) == len(words)  # no surface form twice ("dog" and " dog")
    mark = space_mark(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(vocab)
    if mark is None:
        assert not any(p.startswith("##") for p in pieces)
    else:
        assert all(p.startswith(mark) for p in pieces)
        # The same letters without the mark are a fragment of a longer word, and left out.
        fragments = [
            i
            for i, p in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
            if re.fullmatch(r"[a-z]{3,}", p)
        ]
        assert fragments and not set(fragments) & set(vocab)
        # A marked token that starts a longer word ("Ġdescrib") is no word of the frequency list either.
        starts = [
            w
            for w in (tokenizer.convert_tokens_to_string([p]).strip() for p in tokenizer.get_vocab() if p[:1] == mark)
            if re.fullmatch(r"[a-z]{3,}", w) and zipf_frequency(w, FREQUENCY_LANGUAGE) == 0
        ]
        assert starts and not set(starts) & set(words)
        assert all(zipf_frequency(w, FREQUENCY_LANGUAGE) > 0 for w in words)


def test_word_starts_of_longer_words_are_left_out_of_smollm2s_vocabulary():
    tokenizer = load_tokenizer("smollm2")
    words = set(label_words(tokenizer, label_vocab(tokenizer)))
    assert {"describe", "vegetables", "bacteria"} <= words and not {"describ", "veget", "bacter"} & words
    every_start = set(label_words(tokenizer, label_vocab(tokenizer, VocabFilter(known_words=False))))
    assert {"describ", "veget", "bacter"} <= every_start


def test_a_label_decodes_to_its_words_and_back(tokenizer):
    vocab = label_vocab(tokenizer).tolist()
    for token_id in vocab[:: max(1, len(vocab) // 200)]:
        word = decode_label(tokenizer, [token_id])
        assert label_token_ids(tokenizer, word) == (token_id,)
    pair = tuple(vocab[10:12])
    text = decode_label(tokenizer, pair)
    assert text.count(" ") == 1 and label_token_ids(tokenizer, text) == pair
