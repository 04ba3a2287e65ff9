"""The causal-LM discriminator on tiny randomly initialised GPT-2 and Llama models (no downloads)."""

import pytest
import torch
from conftest import TINY_CAUSAL_LMS, save_tiny_causal_lm

from workers.discriminators import CausalLMDiscriminator, load_discriminator
from workers.vocab import label_vocab


@pytest.fixture(scope="module", params=sorted(TINY_CAUSAL_LMS))
def tiny_lm(request, tmp_path_factory):
    """A tiny causal LM with MiniLM's tokenizer, saved to a folder and loaded by path."""
    return save_tiny_causal_lm(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def disc(tiny_lm):
    d = load_discriminator(tiny_lm)
    assert isinstance(d, CausalLMDiscriminator)
    return d


def test_cached_prefix_gives_the_full_prompt_logit(disc):
    texts = ["the cat sat on the mat", "a short one", "numbers like 12 and 40 appear here"]
    label = disc.tokenizer.convert_tokens_to_ids(["music"])
    cached = disc.score(disc.embedding_matrix[label][None], disc.encode_texts(texts), torch.arange(3)[None])[0]
    for i, text in enumerate(texts):
        prompt = disc.template.replace("{text}", text).replace("{label}", "music")
        ids = torch.tensor([disc._ids(prompt)])
        with torch.no_grad():
            logp = torch.log_softmax(disc.model(input_ids=ids).logits[0, -1], -1)
        expected = logp[disc._answers[0]] - logp[disc._answers[1]]
        assert abs(cached[i].item() - expected.item()) < 1e-4


def test_naturalness_prior_averages_the_lm_over_a_feature_texts(disc, demo_texts):
    cache = disc.encode_texts(demo_texts["wordnet-example"][:6])
    vocab = label_vocab(disc.tokenizer)[:300]
    prior = disc.label_prior(vocab, cache, torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.ones(2, 3))
    assert prior.shape == (2, 300)
    # The weighted mean over each feature's texts of the LM's log-probabilities, renormalised on the vocabulary.
    expected = torch.log_softmax(cache.next_token[:, vocab], -1)[[3, 4, 5]].mean(0)
    torch.testing.assert_close(prior[1], expected)
    assert (prior[0] != prior[1]).any()


def test_templates_and_k_that_do_not_fit_are_refused(tiny_lm, disc):
    with pytest.raises(ValueError, match="must hold"):
        CausalLMDiscriminator(tiny_lm, template="{label} then {text}")
    with pytest.raises(ValueError, match="label_tokens=60 does not fit"):
        disc.check_label_tokens(60)
    disc.check_label_tokens(4)


@pytest.mark.parametrize("mode", ["st-gumbel", "soft"])
def test_a_bfloat16_model_labels_with_float32_token_weights(tiny_lm, demo_texts, mode):
    """The dtype a GPU run uses: the model in bfloat16, the optimiser's weights and gradients in float32."""
    import pyarrow as pa

    from workers.labeler import Labeler
    from workers.optimiser import OptimiserConfig

    disc = CausalLMDiscriminator(tiny_lm, dtype=torch.bfloat16)
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
