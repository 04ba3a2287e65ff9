"""The label vocabulary on WordPiece (MiniLM), byte-level BPE and SentencePiece tokenizers trained in the tests,
and the real SmolLM2 tokenizer: whole words only, each once, decoded labels read as words."""

import re

import pytest

from workers.models import load_tokenizer
from workers.vocab import STOPWORDS, decode_label, label_token_ids, label_vocab, space_mark


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


def test_a_label_decodes_to_its_words_and_back(tokenizer):
    vocab = label_vocab(tokenizer).tolist()
    for token_id in vocab[:: max(1, len(vocab) // 200)]:
        word = decode_label(tokenizer, [token_id])
        assert label_token_ids(tokenizer, word) == (token_id,)
    pair = tuple(vocab[10:12])
    text = decode_label(tokenizer, pair)
    assert text.count(" ") == 1 and label_token_ids(tokenizer, text) == pair
