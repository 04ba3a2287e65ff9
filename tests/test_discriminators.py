"""The embedding discriminator (real MiniLM): its readouts, and that every way of scoring a label agrees."""

import pytest
import torch

from pipeline.config import RunConfig
from workers.discriminators import READOUTS, EmbeddingDiscriminator, check_discriminator

TEXTS = ["The horse reared in terror", "he paid ten dollars for it", "长风几万里，吹度玉门关。", "a quiet evening"]
WORDS = ["horse", "number", "chinese", "music"]


@pytest.fixture(scope="module", params=READOUTS)
def disc(request, minilm):
    if request.param == minilm.readout:
        return minilm
    return EmbeddingDiscriminator(readout=request.param)


def token_ids(disc, words):
    return torch.tensor(disc.tokenizer.convert_tokens_to_ids(words))


def test_a_word_of_the_text_embeds_as_the_same_word_does_as_a_label(minilm):
    ids = token_ids(minilm, WORDS)
    states = minilm.token_states(ids)
    labels = minilm.encode_labels(minilm.embed_tokens(ids)[:, None])
    assert torch.allclose(states, labels, atol=1e-5)
    words = minilm.text_words(["horses, 1990!"])[0]
    assert [minilm.tokenizer.decode(list(w)) for w in words] == ["horses", ",", "1990", "!"]


def test_word_readout_scores_a_text_saying_the_label_one():
    disc = EmbeddingDiscriminator(readout="word")
    horse = disc.embed_tokens(token_ids(disc, ["horse"]))[:, None]
    raw = disc.logits(horse, disc.encode_texts(TEXTS), torch.arange(4)[None])
    assert raw[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert (raw[0, 1:] < 0.9).all()


def test_exhaustive_token_states_and_label_paths_agree(disc):
    """token_logits (exhaustive), state_logits of token states (one-token descent) and logits of input embeddings
    (any K) give one logit for the same discrete label."""
    ids = token_ids(disc, WORDS)
    texts = disc.encode_texts(TEXTS)
    index = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    exhaustive = disc.token_logits(ids, texts, index)  # [2 features, 4 tokens, 4 texts]
    for t in range(len(ids)):
        rows = ids[t].expand(2)
        from_states = disc.state_logits(disc.token_states(rows), texts, index)
        from_embeddings = disc.logits(disc.embed_tokens(rows)[:, None], texts, index)
        assert torch.allclose(exhaustive[:, t], from_states, atol=1e-5)
        assert torch.allclose(exhaustive[:, t], from_embeddings, atol=1e-5)


def test_readouts_differ_as_designed(minilm):
    """The sentence readout sees what a text is about; the word readout what words it says."""
    number = token_ids(minilm, ["number"])
    index = torch.arange(4)[None]
    scores = {}
    for readout in READOUTS:
        disc = minilm if readout == minilm.readout else EmbeddingDiscriminator(readout=readout)
        scores[readout] = disc.logits(disc.embed_tokens(number)[:, None], disc.encode_texts(TEXTS), index)[0]
    sentence, word, both = scores["sentence"], scores["word"], scores["sentence+word"]
    assert torch.allclose(both, sentence + word, atol=1e-5)
    # "ten" is a number word: its text is the word readout's best match for "number".
    assert word.argmax().item() == 1


def test_bad_readouts_are_refused(tiny_llama_dir):
    with pytest.raises(ValueError, match="unknown readout 'tokens'"):
        EmbeddingDiscriminator(readout="tokens")
    with pytest.raises(ValueError, match="config key 'readout' = 'tokens'"):
        RunConfig(out="x", readout="tokens")
    with pytest.raises(ValueError, match="option 'readout' is for embedding discriminators; this is a causal-lm"):
        check_discriminator(tiny_llama_dir, readout="word")


def test_models_of_no_known_kind_are_refused_from_their_config(tmp_path):
    """A multimodal model and an encoder that pools no sentence embedding are refused, not mean-pooled."""
    from transformers import BertConfig, BertModel, LlavaConfig

    from workers.discriminators import discriminator_kind
    from workers.discriminators.embedding import save_sentence_encoder_files
    from workers.models import load_tokenizer

    llava = tmp_path / "llava"
    config = LlavaConfig()
    config.architectures = ["LlavaForConditionalGeneration"]
    config.save_pretrained(llava)
    with pytest.raises(ValueError, match="LlavaForConditionalGeneration \\(multimodal or encoder-decoder\\)"):
        discriminator_kind(str(llava))
    encoder = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1)).save_pretrained(encoder)
    load_tokenizer("minilm").save_pretrained(encoder)
    with pytest.raises(ValueError, match="BertModel without a sentence-embedding pooling"):
        check_discriminator(str(encoder))
    save_sentence_encoder_files(encoder, pooling="cls")
    assert discriminator_kind(str(encoder)) == "embedding"
    disc = EmbeddingDiscriminator(str(encoder))
    assert disc.pooling == "cls"
    ids = disc.tokenizer(["the"], return_tensors="pt")["input_ids"]
    hidden = disc.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(disc.embed_sentences(["the"])[0], torch.nn.functional.normalize(hidden[0, 0], dim=-1))
    assert discriminator_kind("minilm") == "embedding"
