"""Tests for SubjectModel hook points on the bundled MiniLM and tiny random decoder models."""

import pytest
import torch
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

from workers.models import MINILM, load_encoder, load_tokenizer
from workers.subject import SubjectModel, check_hook

TEXTS = ["The cat sat on the mat.", "Sparse autoencoders find features in activations.", "Hi"]


@pytest.fixture(scope="module")
def minilm_parts():
    """The bundled MiniLM model and tokenizer, loaded once."""
    return load_encoder(MINILM), load_tokenizer(MINILM)


def hidden_states(model, tokenizer, texts=TEXTS):
    """Reference hidden states from output_hidden_states=True."""
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    # GPT-2 would add MiniLM's token_type_ids as embeddings; SubjectModel passes none either.
    with torch.no_grad():
        return model(enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True).hidden_states


def subject(loaded, hook, name="minilm"):
    """Build a SubjectModel around an already loaded model and tokenizer."""
    model, tokenizer = loaded
    return SubjectModel(model, tokenizer, hook, name)


@pytest.mark.parametrize(
    ("hook", "index"),
    [
        ("blocks.3.hook_resid_post", 4),
        ("blocks.3.hook_resid_pre", 3),
        ("encoder.layer.3.output", 4),
        ("blocks.0.hook_resid_pre", 0),
    ],
)
def test_minilm_hooks_match_hidden_states(minilm_parts, hook, index):
    acts, mask, _ = subject(minilm_parts, hook).activations(TEXTS, max_length=64)
    expected = hidden_states(*minilm_parts)[index]
    assert acts.dtype == torch.float32 and acts.shape == expected.shape
    assert (acts - expected)[mask].abs().max() < 1e-5


def test_mask_excludes_special_tokens(minilm_parts):
    model, tokenizer = minilm_parts
    _, mask, tokens = subject(minilm_parts, "blocks.3.hook_resid_post").activations(TEXTS, max_length=64)
    assert not mask[:, 0].any()
    assert tokens[0] == ["the", "cat", "sat", "on", "the", "mat", "."]
    assert tokens[2] == ["hi"]
    assert [len(t) for t in tokens] == mask.sum(dim=1).tolist()
    assert all(t not in tokenizer.all_special_tokens for row in tokens for t in row)


def test_max_length_truncates(minilm_parts):
    acts, mask, tokens = subject(minilm_parts, "blocks.3.hook_resid_post").activations(TEXTS, max_length=5)
    assert acts.shape[1] == 5 and all(len(t) <= 3 for t in tokens)


def test_d_model(minilm_parts):
    assert subject(minilm_parts, "blocks.3.hook_resid_post").d_model == 384


@pytest.mark.parametrize("hook", ["blocks.6.hook_resid_post", "blocks.2.hook_attn_out", "encoder.nope.3"])
def test_bad_hook(minilm_parts, hook):
    with pytest.raises(ValueError, match=rf"{hook}.*'minilm'.*0\.\.5 \(6 layers\)"):
        subject(minilm_parts, hook)


def test_bert_mlp_out_not_implemented(minilm_parts):
    with pytest.raises(NotImplementedError, match="hook_resid_post"):
        subject(minilm_parts, "blocks.3.hook_mlp_out")


@pytest.fixture(scope="module")
def tiny_gpt2(minilm_parts):
    """A randomly initialised 2-layer GPT-2 that reuses MiniLM's tokenizer (there is no network)."""
    torch.manual_seed(0)
    tokenizer = minilm_parts[1]
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=128)
    return GPT2Model(config).eval(), tokenizer


@pytest.mark.parametrize(
    ("hook", "index"), [("blocks.0.hook_resid_post", 1), ("blocks.1.hook_resid_pre", 1), ("blocks.0.hook_resid_pre", 0)]
)
def test_gpt2_hooks_match_hidden_states(tiny_gpt2, hook, index):
    acts, mask, _ = subject(tiny_gpt2, hook, "tiny-gpt2").activations(TEXTS, max_length=64)
    expected = hidden_states(*tiny_gpt2)[index]
    assert (acts - expected)[mask].abs().max() < 1e-5


def test_gpt2_mlp_out(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    captured = []
    handle = model.h[1].mlp.register_forward_hook(lambda _m, _i, out: captured.append(out))
    hidden_states(model, tokenizer)
    handle.remove()
    acts, mask, _ = subject(tiny_gpt2, "blocks.1.hook_mlp_out", "tiny-gpt2").activations(TEXTS, max_length=64)
    assert (acts - captured[0])[mask].abs().max() < 1e-5


def test_gpt2_bad_layer(tiny_gpt2):
    with pytest.raises(ValueError, match=r"0\.\.1 \(2 layers\)"):
        subject(tiny_gpt2, "blocks.2.hook_resid_post", "tiny-gpt2")


@pytest.fixture(scope="module")
def tiny_llama(minilm_parts):
    """A random 2-layer Llama whose heads (2 x 8) are narrower than its residual stream (32)."""
    torch.manual_seed(0)
    tokenizer = minilm_parts[1]
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=len(tokenizer),
    )
    return LlamaModel(config).eval(), tokenizer


def test_llama_layers_found(tiny_llama):
    acts, mask, _ = subject(tiny_llama, "blocks.0.hook_resid_post", "tiny-llama").activations(TEXTS, max_length=64)
    assert (acts - hidden_states(*tiny_llama)[1])[mask].abs().max() < 1e-5


def attention_output(module):
    """The output (first element) of an attention module during a full forward pass."""
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out[0]))
    return captured, handle


@pytest.mark.parametrize(
    ("fixture", "attn", "proj", "width"),
    [("tiny_gpt2", "h.1.attn", "c_proj", 32), ("tiny_llama", "layers.1.self_attn", "o_proj", 16)],
)
def test_hook_z_projects_to_the_attention_output(request, fixture, attn, proj, width):
    model, tokenizer = request.getfixturevalue(fixture)
    captured, handle = attention_output(model.get_submodule(attn))
    hidden_states(model, tokenizer)
    handle.remove()
    hooked = subject((model, tokenizer), "blocks.1.attn.hook_z", fixture)
    z, mask, _ = hooked.activations(TEXTS, max_length=64)
    assert z.shape[-1] == hooked.d_model == width
    # z is the heads' output before the output projection: projecting it gives the attention output.
    projected = model.get_submodule(f"{attn}.{proj}")(z)
    assert (projected - captured[0])[mask].abs().max() < 1e-5


def test_bert_hook_z(minilm_parts):
    model, tokenizer = minilm_parts
    attention = model.encoder.layer[2].attention
    captured, handle = attention_output(attention)
    inputs = []
    pre = attention.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    hidden_states(model, tokenizer)
    handle.remove()
    pre.remove()
    z, mask, _ = subject(minilm_parts, "blocks.2.attn.hook_z").activations(TEXTS, max_length=64)
    assert z.shape[-1] == 384
    # BertSelfOutput turns the merged heads z and the block input into the attention block's output.
    assert (attention.output(z, inputs[0]) - captured[0])[mask].abs().max() < 1e-5


def test_module_path_width_is_measured(minilm_parts):
    assert subject(minilm_parts, "encoder.layer.1.intermediate").d_model == 1536


def test_check_hook_from_config_alone():
    check_hook("minilm", "blocks.3.hook_resid_post", 384)
    check_hook("minilm", "encoder.layer.1.intermediate", 384)  # module paths are checked by the harvester
    with pytest.raises(ValueError, match=r"d_in=512 does not match the width 384 of 'minilm'"):
        check_hook("minilm", "blocks.3.attn.hook_z", 512)
    with pytest.raises(ValueError, match=r"'blocks.9.hook_resid_post'.*0\.\.5 \(6 layers\)"):
        check_hook("minilm", "blocks.9.hook_resid_post", 384)
    with pytest.raises(ValueError, match=r"'encoder.layer.9.output' on model 'minilm'.*no such module path"):
        check_hook("minilm", "encoder.layer.9.output", 384)
