"""Tests for SAE architectures, SAELens save/load and load errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from workers.sae import ARCHITECTURES, SAEConfig, build_sae, load_sae, save_saelens

D_IN, D_SAE, K = 8, 32, 4


def random_sae(architecture: str, apply_b_dec_to_input: bool = True):
    """Return a small SAE of the given architecture with seeded random weights."""
    cfg = SAEConfig(
        architecture=architecture,
        d_in=D_IN,
        d_sae=D_SAE,
        model_name="minilm",
        hook_name="blocks.3.hook_resid_post",
        apply_b_dec_to_input=apply_b_dec_to_input,
        k=K if architecture == "topk" else None,
    )
    sae = build_sae(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return sae


def reference_encode(architecture: str, p: dict, x: torch.Tensor, apply_b_dec: bool = True) -> torch.Tensor:
    """SAELens encode formulas, written out independently of workers.sae."""
    xin = x - p["b_dec"] if apply_b_dec else x
    if architecture == "gated":
        gate = (xin @ p["W_enc"] + p["b_gate"] > 0).float()
        return gate * torch.relu(xin @ (p["W_enc"] * torch.exp(p["r_mag"])) + p["b_mag"])
    pre = xin @ p["W_enc"] + p["b_enc"]
    if architecture == "standard":
        return torch.relu(pre)
    if architecture == "jumprelu":
        return torch.where(pre > p["threshold"], torch.relu(pre), torch.zeros_like(pre))
    out = torch.zeros_like(pre)
    for row in range(pre.shape[0]):
        keep = pre[row].argsort(descending=True)[:K]
        out[row, keep] = torch.relu(pre[row, keep])
    return out


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "gated"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_matches_reference(architecture, apply_b_dec):
    sae = random_sae(architecture, apply_b_dec)
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(1))
    params = {name: param.detach() for name, param in sae.named_parameters()}
    expected = reference_encode(architecture, params, x, apply_b_dec)
    assert (sae.encode(x) - expected).abs().max() < 1e-5
    assert (sae.encode(x) > 0).any()


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_round_trip(architecture, tmp_path):
    sae = random_sae(architecture)
    save_saelens(sae, tmp_path)
    loaded = load_sae(tmp_path)
    x = torch.randn(16, D_IN)
    assert torch.equal(sae.encode(x), loaded.encode(x))
    assert torch.equal(sae(x), loaded(x))
    assert loaded.cfg.model_name == "minilm"
    assert loaded.cfg.hook_name == "blocks.3.hook_resid_post"
    raw = json.loads((tmp_path / "cfg.json").read_text())
    assert raw["metadata"]["hook_name"] == "blocks.3.hook_resid_post"


def test_forward_undoes_normalisation():
    sae = random_sae("standard")
    sae.cfg.normalize_activations = "layer_norm"
    x = torch.randn(4, D_IN) * 5 + 3
    mu, std = x.mean(-1, keepdim=True), (x - x.mean(-1, keepdim=True)).std(-1, keepdim=True) + 1e-5
    expected = sae.decode(sae.encode(x)) * std + mu
    assert torch.allclose(sae(x), expected)


def test_legacy_flat_topk_cfg(tmp_path):
    sae = random_sae("topk")
    save_saelens(sae, tmp_path)
    flat = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "model_name": "gpt2",
        "hook_name": "blocks.3.hook_resid_post",
        "hook_layer": 3,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "dtype": "float32",
        "device": "cpu",
        "sae_lens_training_version": "3.13.0",
    }
    (tmp_path / "cfg.json").write_text(json.dumps(flat))
    loaded = load_sae(tmp_path)
    assert loaded.cfg.architecture == "topk" and loaded.cfg.k == K
    assert loaded.cfg.extra["hook_layer"] == 3
    x = torch.randn(3, D_IN)
    assert torch.equal(sae.encode(x), loaded.encode(x))


def test_all_ones_legacy_scaling_factor_is_dropped(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    weights = load_file(tmp_path / "sae_weights.safetensors")
    save_file({**weights, "scaling_factor": torch.ones(D_SAE)}, tmp_path / "sae_weights.safetensors")
    assert load_sae(tmp_path).cfg.architecture == "standard"


def edit_cfg(folder, **changes):
    """Rewrite cfg.json in folder with top-level changes; a None value deletes the key."""
    raw = json.loads((folder / "cfg.json").read_text())
    raw.update(changes)
    raw = {key: value for key, value in raw.items() if value is not None}
    (folder / "cfg.json").write_text(json.dumps(raw))


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_sae(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["cfg.json", "sae_weights.safetensors"])
def test_missing_file(tmp_path, name):
    save_saelens(random_sae("standard"), tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        load_sae(tmp_path)


def test_unknown_architecture(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    edit_cfg(tmp_path, architecture="mystery")
    with pytest.raises(ValueError, match="'mystery'.*gated, jumprelu, standard, topk"):
        load_sae(tmp_path)


def test_missing_cfg_key(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    edit_cfg(tmp_path, d_sae=None)
    with pytest.raises(KeyError, match="cfg.json.*'d_sae'"):
        load_sae(tmp_path)


def test_missing_hook_name(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    edit_cfg(tmp_path, metadata={"model_name": "minilm"})
    with pytest.raises(KeyError, match="hook_name"):
        load_sae(tmp_path)


def test_shape_mismatch(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    edit_cfg(tmp_path, d_sae=D_SAE * 2)
    with pytest.raises(ValueError, match=rf"'W_enc' has shape \[{D_IN}, {D_SAE}\], expected \[{D_IN}, {D_SAE * 2}\]"):
        load_sae(tmp_path)


def test_missing_tensor(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    edit_cfg(tmp_path, architecture="jumprelu")
    with pytest.raises(KeyError, match="missing tensor 'threshold'"):
        load_sae(tmp_path)


def test_topk_without_k(tmp_path):
    save_saelens(random_sae("topk"), tmp_path)
    edit_cfg(tmp_path, k=None)
    with pytest.raises(ValueError, match="k=None"):
        load_sae(tmp_path)


def test_invalid_cfg_json(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="cfg.json: not valid JSON"):
        load_sae(tmp_path)
