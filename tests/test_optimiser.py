"""Planted-label recovery with the causal-LM discriminator (the embedding discriminator's is in test_labeler.py).

Targets come from the discriminator itself: a feature is active on the texts where a known label token's
yes/no logit is in the top 30%. The model is a small randomly initialised Llama whose answer depends on the
label and on the text together: a word-level tokenizer over the texts keeps the vocabulary (and the LM
head) small, and initializer_range 0.1 gives the label enough weight that no other candidate ranks the
texts the same way, while the logit stays smooth enough in the label embedding for its gradient to point
at better tokens. (At the default 0.02 every candidate ranks the texts alike; from about 0.2 the gradient
no longer leads to the planted token.)
"""

import re

import pyarrow as pa
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from workers.discriminators import CausalLMDiscriminator, load_discriminator
from workers.labeler import Labeler
from workers.optimiser import OptimiserConfig
from workers.scoring import batched_auc
from workers.vocab import label_vocab

TEMPLATE = "{text} : {label} ?"
N_TEXTS, N_CANDIDATES, N_PLANTED = 300, 200, 10


@pytest.fixture(scope="module")
def texts(demo_texts):
    return demo_texts["wordnet-example"][:N_TEXTS]


@pytest.fixture(scope="module")
def word_lm(texts, tmp_path_factory) -> CausalLMDiscriminator:
    """A 2-layer random Llama over a word-level tokenizer of the texts, loaded by path."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    words = sorted({w for t in [*texts, TEMPLATE, "yes no"] for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "[PAD]", *words])}, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        vocab_size=len(tokenizer),
        initializer_range=0.1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("word-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    disc = load_discriminator(str(path), template=TEMPLATE, max_length=32)
    assert isinstance(disc, CausalLMDiscriminator)
    return disc


@pytest.mark.slow
def test_planted_labels_are_recovered_with_a_causal_lm(word_lm, texts):
    gen = torch.Generator().manual_seed(0)
    words = label_vocab(word_lm.tokenizer)
    candidates = words[torch.randperm(len(words), generator=gen)[:N_CANDIDATES]].sort().values
    planted = candidates[:: N_CANDIDATES // N_PLANTED]  # spread over the candidate list
    encoded = word_lm.encode_texts(texts)
    raw = word_lm.token_logits(candidates, encoded, torch.arange(N_TEXTS)[None])[0]  # [candidates, texts]
    rows = []
    for f, token in enumerate(planted.tolist()):
        own = raw[(candidates == token).nonzero().item()]
        active = own > own.quantile(0.7)
        # The setup is fair: over all texts the planted token alone ranks them perfectly.
        auc = batched_auc(raw, active[None], torch.ones(1, N_TEXTS, dtype=torch.bool))
        assert (auc == 1.0).sum() == 1
        rows += [{"feature_id": f, "text": t, "activation": float(a)} for t, a in zip(texts, active.tolist())]
    schema = pa.schema([("feature_id", pa.int64()), ("text", pa.string()), ("activation", pa.float32())])
    table = pa.Table.from_pylist(rows, schema=schema)
    # tie_window 0: this asks whether the search finds the discriminator's optimum; naming among near-ties
    # would pick among words this random model merely happens to rank alike.
    cfg = OptimiserConfig(mode="st-gumbel", label_tokens=1, tie_window=0.0)
    labeler = Labeler(word_lm, candidates, cfg, batch_size=N_PLANTED)
    out = labeler.label(table, list(range(N_PLANTED))).to_pylist()
    found = [r["label"] for r in out]
    expected = word_lm.tokenizer.convert_ids_to_tokens(planted.tolist())
    assert sum(f == e for f, e in zip(found, expected)) >= 9, list(zip(found, expected))
