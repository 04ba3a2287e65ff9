"""The causal-LM discriminator on tiny random models of real architectures, with tokenizers trained in the
tests (byte-level BPE with a BOS; SentencePiece-style with a chat template), loaded by path (no downloads)."""

import pyarrow as pa
import pytest
import torch
from conftest import ARCHITECTURES, save_tiny_lm
from transformers import AutoConfig

from workers.discriminators import CausalLMDiscriminator, CausalPrompt, check_discriminator, load_discriminator
from workers.labeler import Labeler
from workers.optimiser import OptimiserConfig
from workers.vocab import label_token_ids, label_vocab

TEXTS = ["the cat sat on the mat", "a short one", "numbers like 12 and 40 appear in this longer text here"]
# Every family with both kinds of tokenizer, except that transformers loads any tokenizer saved beside a Qwen2
# model as Qwen's own byte-level BPE, so Qwen2 is paired with BPE alone.
PAIRS = [
    (a, t)
    for a in ARCHITECTURES
    if a != "gpt2"
    for t in ("bpe", "sentencepiece")
    if (a, t) != ("qwen2", "sentencepiece")
]


@pytest.fixture(scope="module", params=PAIRS, ids=str)
def disc(request, trained_tokenizers, tmp_path_factory) -> CausalLMDiscriminator:
    architecture, tokenizer = request.param
    path = save_tiny_lm(architecture, trained_tokenizers[tokenizer], tmp_path_factory.mktemp(architecture))
    d = load_discriminator(path)
    assert isinstance(d, CausalLMDiscriminator)
    return d


def prompt_ids(disc: CausalLMDiscriminator, text: str, label: str) -> list[int]:
    """The whole prompt's token ids, from its first token."""
    label_ids = list(label_token_ids(disc.tokenizer, label))
    return disc.prompt.prefix_ids(disc.cut_texts([text])[0]) + label_ids + disc.prompt.after


def full_prompt_logit(disc: CausalLMDiscriminator, text: str, label: str) -> float:
    """The answer logit of the whole prompt run from its first token, no cache, the full LM head."""
    with torch.no_grad():
        logits = disc.model(input_ids=torch.tensor([prompt_ids(disc, text, label)])).logits[0, -1].float()
    p = disc.prompt
    return (torch.logsumexp(logits[p.yes], -1) - torch.logsumexp(logits[p.no], -1)).item()


@pytest.mark.parametrize("label", ["music", "tree house"])
def test_cached_prefix_gives_the_full_prompt_logit(disc, label):
    ids = torch.tensor(label_token_ids(disc.tokenizer, label))
    cached = disc.score(disc.embed_tokens(ids)[None], disc.encode_texts(TEXTS), torch.arange(3)[None])[0]
    expected = torch.tensor([full_prompt_logit(disc, t, label) for t in TEXTS])
    assert (cached - expected).abs().max() <= 1e-4, (cached, expected)
    assert expected.std() > 0  # the texts matter: a constant would hide a broken cache


def test_the_prompt_is_the_tokenization_of_the_prompt_text(disc):
    """Chat template where the tokenizer has one; the label's first token carries the space before it; the
    pieces joined are exactly how the tokenizer reads the whole prompt written out."""
    chat = bool(disc.tokenizer.chat_template)
    for text in TEXTS:
        ids = prompt_ids(disc, text, "tree house")
        written = disc.tokenizer.decode(ids)
        if chat:
            assert disc.prompt.chat and written.startswith("<bos><start_of_turn>user\nText: ")
            assert written.endswith(" tree house? Answer yes or no.<end_of_turn>\n<start_of_turn>model\n")
        else:
            assert written == f"<|begin_of_text|>{text}\nQuestion: is this text about tree house? Answer:"
        assert ids == disc.tokenizer(written, add_special_tokens=False)["input_ids"]


def test_labels_enter_through_the_model_input_embeddings(trained_tokenizers, tmp_path):
    """Gemma scales its embeddings by sqrt(d) inside its embedding module: labels must be scaled too."""
    d = load_discriminator(save_tiny_lm("gemma2", trained_tokenizers["bpe"], tmp_path))
    ids = torch.tensor([5, 9])
    raw = d.model.get_input_embeddings().weight[ids]
    torch.testing.assert_close(d.embed_tokens(ids), raw * 64**0.5)


def test_masked_pairs_are_skipped_and_the_others_unchanged(disc):
    encoded = disc.encode_texts(TEXTS)
    labels = disc.embed_tokens(label_vocab(disc.tokenizer)[:2])[:, None]
    index = torch.tensor([[0, 1, 2], [2, 1, 0]])
    mask = torch.tensor([[True, False, True], [False, True, False]])
    full = disc.score(labels, encoded, index)
    part = disc.score(labels, encoded, index, mask)
    assert (part[~mask] == 0).all()
    torch.testing.assert_close(part[mask], full[mask], atol=1e-5, rtol=1e-5)


def test_naturalness_prior_is_the_lm_next_token_distribution(disc):
    encoded = disc.encode_texts(TEXTS)
    vocab = label_vocab(disc.tokenizer)[:50]
    prior = disc.label_prior(vocab, encoded, torch.tensor([[0, 1], [2, 2]]), torch.ones(2, 2))
    ids = torch.tensor([disc.prompt.prefix_ids(TEXTS[2])])
    with torch.no_grad():
        next_token = disc.model(input_ids=ids).logits[0, -1].float()
    torch.testing.assert_close(prior[1], torch.log_softmax(next_token[vocab], -1), atol=1e-4, rtol=1e-4)
    assert (prior[0] != prior[1]).any()


def test_bad_templates_and_answers_are_refused_from_the_tokenizer(trained_tokenizers):
    bpe, chat = trained_tokenizers["bpe"], trained_tokenizers["sentencepiece"]
    with pytest.raises(ValueError, match="must hold"):
        CausalPrompt.build(bpe, "{label} then {text}")
    with pytest.raises(ValueError, match="must hold"):
        CausalPrompt.build(bpe, "{text} without a label slot")
    with pytest.raises(ValueError, match="no chat template"):
        CausalPrompt.build(bpe, chat=True)
    with pytest.raises(ValueError, match="'supercalifragilistic' is not a single token"):
        CausalPrompt.build(bpe, answers=["supercalifragilistic", "no"])
    with pytest.raises(ValueError, match="two different words"):
        CausalPrompt.build(chat, answers=["yes", "yes"])
    assert not CausalPrompt.build(chat, chat=False).chat


def test_a_prompt_longer_than_the_sliding_window_is_refused(trained_tokenizers, tmp_path):
    path = save_tiny_lm("mistral", trained_tokenizers["bpe"], tmp_path, sliding_window=32)
    with pytest.raises(ValueError, match="exceed the model's sliding window of 32"):
        check_discriminator(path)


def test_an_output_head_of_unknown_shape_is_refused(trained_tokenizers, tmp_path):
    """A head the answer rows would not reproduce (here: a soft-cap the config names but Llama never applies)."""
    path = save_tiny_lm("llama", trained_tokenizers["bpe"], tmp_path)
    config = AutoConfig.from_pretrained(path)
    config.final_logit_softcapping = 0.01
    config.save_pretrained(path)
    with pytest.raises(ValueError, match="not a linear map of the last hidden state"):
        load_discriminator(path)


def test_a_bfloat16_model_with_large_logits_passes_the_head_check(trained_tokenizers, tmp_path):
    """bfloat16 rounds the full forward pass's logits; the check allows that rounding and no more."""
    from safetensors.torch import load_file, save_file

    path = save_tiny_lm("llama", trained_tokenizers["bpe"], tmp_path, tie_word_embeddings=False)
    weights = load_file(f"{path}/model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * 300
    save_file(weights, f"{path}/model.safetensors", metadata={"format": "pt"})
    disc = CausalLMDiscriminator(path, dtype=torch.bfloat16)
    ids = torch.tensor([disc.prompt.prefix_ids("A short text.")])
    assert disc.model(input_ids=ids).logits.abs().max() > 10  # logits where bfloat16 rounds by more than 0.03


@pytest.mark.parametrize("mode", ["st-gumbel", "soft"])
def test_a_bfloat16_model_labels_with_float32_token_weights(tiny_llama_dir, demo_texts, mode):
    """The dtype a GPU run uses: the model in bfloat16, the optimiser's weights and gradients in float32."""
    disc = CausalLMDiscriminator(tiny_llama_dir, dtype=torch.bfloat16)
    texts = demo_texts["wordnet-example"][:12]
    table = pa.table(
        {
            "feature_id": pa.array([0] * 12, pa.int64()),
            "text": texts,
            "activation": pa.array([float(i % 2) for i in range(12)], pa.float32()),
        }
    )
    cfg = OptimiserConfig(mode=mode, steps=3, naturalness_weight=0.1)
    [row] = Labeler(disc, label_vocab(disc.tokenizer)[:500], cfg).label(table, [0]).to_pylist()
    assert row["status"] == "ok" and row["label"] and row["score"] is not None
    assert row["loss_naturalness"] is not None
