"""Tests for SAE architectures, SAELens save/load and load errors."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from workers.sae import ARCHITECTURES, SAEConfig, build_sae, load_sae, save_saelens, sparsify_hook

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
    with pytest.raises(FileNotFoundError, match=rf"{name}.*found \["):
        load_sae(tmp_path)


def test_unknown_architecture(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    edit_cfg(tmp_path, architecture="mystery")
    with pytest.raises(ValueError, match="'mystery'.*gated, jumprelu, standard, topk"):
        load_sae(tmp_path)


def test_missing_cfg_key(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    edit_cfg(tmp_path, d_sae=None)
    with pytest.raises(ValueError, match="cfg.json.*'d_sae'"):
        load_sae(tmp_path)


def test_missing_hook_name(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    edit_cfg(tmp_path, metadata={"model_name": "minilm"})
    with pytest.raises(ValueError, match="hook_name"):
        load_sae(tmp_path)


def test_shape_mismatch(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    edit_cfg(tmp_path, d_sae=D_SAE * 2)
    with pytest.raises(ValueError, match=rf"'W_enc' has shape \[{D_IN}, {D_SAE}\], expected \[{D_IN}, {D_SAE * 2}\]"):
        load_sae(tmp_path)


def test_missing_tensor(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    edit_cfg(tmp_path, architecture="jumprelu")
    with pytest.raises(ValueError, match="missing tensor 'threshold'"):
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


def random_params(architecture: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random float32 weights in SAELens layout for `architecture`."""
    rng = np.random.default_rng(seed)
    cfg = SAEConfig(architecture, D_IN, D_SAE, k=K if architecture == "topk" else None)
    return {
        name: (rng.standard_normal(shape) * 0.5).astype(np.float32)
        for name, shape in ARCHITECTURES[architecture].param_shapes(cfg).items()
    }


def write_gemma_scope(folder, params):
    """A Gemma Scope params.npz (JumpReLU) in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **params)
    return folder / "params.npz"


@pytest.mark.parametrize("as_file", [False, True])
def test_gemma_scope_npz(tmp_path, as_file):
    params = random_params("jumprelu")
    npz = write_gemma_scope(tmp_path / "layer_3" / "width_16k", params)
    sae = load_sae(npz if as_file else npz.parent, model_name="gemma-2-2b", hook_name="blocks.3.hook_resid_post")
    assert (sae.cfg.architecture, sae.cfg.model_name, sae.cfg.hook_name) == (
        "jumprelu",
        "gemma-2-2b",
        "blocks.3.hook_resid_post",
    )
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(2))
    p = {name: torch.from_numpy(value) for name, value in params.items()}
    # Gemma Scope's reference encoder: no b_dec subtraction.
    pre = x @ p["W_enc"] + p["b_enc"]
    expected = (pre > p["threshold"]) * torch.relu(pre)
    assert (sae.encode(x) - expected).abs().max() < 1e-5
    assert (expected > 0).any()


def test_gemma_scope_needs_model_and_hook(tmp_path):
    write_gemma_scope(tmp_path, random_params("jumprelu"))
    with pytest.raises(ValueError, match=r"params\.npz.*'model' and 'hook'"):
        load_sae(tmp_path)


def write_sparsify(folder, params, **cfg):
    """A sparsify layer folder: cfg.json + sae.safetensors with encoder as nn.Linear [d_sae, d_in]."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "encoder.weight": torch.from_numpy(params["W_enc"].T.copy()),
        "encoder.bias": torch.from_numpy(params["b_enc"]),
        "W_dec": torch.from_numpy(params["W_dec"]),
        "b_dec": torch.from_numpy(params["b_dec"]),
    }
    save_file(tensors, folder / "sae.safetensors")
    raw = {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": 0, "k": K}
    (folder / "cfg.json").write_text(json.dumps({**raw, **cfg, "d_in": D_IN}))


def test_sparsify_folder(tmp_path):
    params = random_params("topk")
    write_sparsify(tmp_path / "layers.3", params)
    sae = load_sae(tmp_path / "layers.3", model_name="EleutherAI/pythia-70m")
    assert (sae.cfg.architecture, sae.cfg.d_sae, sae.cfg.k) == ("topk", D_IN * 4, K)
    assert sae.cfg.hook_name == "blocks.3.hook_resid_post"
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(3))
    # sparsify's reference: relu(linear(x - b_dec, encoder)) then top-k.
    pre = torch.relu((x - torch.from_numpy(params["b_dec"])) @ torch.from_numpy(params["W_enc"]) + params["b_enc"])
    top = pre.topk(K, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    assert (sae.encode(x) - expected).abs().max() < 1e-5


def test_sparsify_root_lists_layers(tmp_path):
    write_sparsify(tmp_path / "layers.3", random_params("topk"))
    write_sparsify(tmp_path / "layers.5", random_params("topk"))
    with pytest.raises(FileNotFoundError, match="pick one: layers.3, layers.5"):
        load_sae(tmp_path)


def test_sparsify_hook_names():
    assert sparsify_hook("layers.7") == "blocks.7.hook_resid_post"
    assert sparsify_hook("layers.7.mlp") == "blocks.7.hook_mlp_out"
    assert sparsify_hook("encoder.layer.2.output") == "encoder.layer.2.output"


def test_sparsify_num_latents_mismatch(tmp_path):
    write_sparsify(tmp_path, random_params("topk"), num_latents=D_SAE * 2)
    with pytest.raises(ValueError, match=r"sae\.safetensors: tensor 'W_enc' has shape"):
        load_sae(tmp_path, model_name="m")


def test_truncated_safetensors(tmp_path):
    save_saelens(random_sae("standard"), tmp_path)
    weights = tmp_path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match="sae_weights.safetensors: not a readable safetensors file"):
        load_sae(tmp_path)


def test_truncated_npz(tmp_path):
    npz = write_gemma_scope(tmp_path, random_params("jumprelu"))
    npz.write_bytes(npz.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"params\.npz: not a readable \.npz file"):
        load_sae(tmp_path, model_name="m", hook_name="blocks.0.hook_resid_post")


def test_pickled_npz_is_refused(tmp_path):
    np.savez(tmp_path / "params.npz", W_enc=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"params\.npz: not a readable"):
        load_sae(tmp_path, model_name="m", hook_name="h")


def test_saes_by_name_are_parsed_and_looked_up(tmp_path):
    from workers.sae_hub import parse, saelens_location

    assert parse("hf:google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82") == (
        "google/gemma-scope-2b-pt-res",
        "layer_12/width_16k/average_l0_82",
    )
    assert parse("hf:EleutherAI/sae-llama-3-8b-32x") == ("EleutherAI/sae-llama-3-8b-32x", "")
    for bad, expected in [("hf:justone", "OWNER/REPO"), ("saelens:release-only", "RELEASE:SAE_ID")]:
        with pytest.raises(ValueError, match=expected):
            parse(bad)
    directory = tmp_path / "pretrained_saes.yaml"
    release = {
        "repo_id": "google/gemma-scope-2b-pt-res",
        "model": "gemma-2-2b",
        "saes": [{"id": "layer_5/x", "path": "layer_5/width_16k/l0_68"}],
    }
    for layout in ({"SAE_LOOKUP": {"gemma-scope": release}}, {"gemma-scope": release}):
        directory.write_text(yaml.safe_dump(layout))
        assert saelens_location("gemma-scope", "layer_5/x", directory) == (
            "google/gemma-scope-2b-pt-res",
            "layer_5/width_16k/l0_68",
        )
    with pytest.raises(ValueError, match="no SAE 'layer_9'; its ids include \\['layer_5/x'\\]"):
        saelens_location("gemma-scope", "layer_9", directory)
    with pytest.raises(ValueError, match="no release 'other'"):
        saelens_location("other", "x", directory)


def test_a_named_sae_offline_is_refused_before_any_work(tiny_sae_dir, tmp_path):
    from test_pipeline import small_config

    from pipeline import driver

    spec = "hf:google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82"
    with pytest.raises(ValueError, match="cannot be downloaded: the hub is offline \\(HF_HUB_OFFLINE=1\\)"):
        load_sae(spec)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a text\n")
    with pytest.raises(ValueError, match="cannot be downloaded"):
        driver.run(small_config(spec, corpus, tmp_path / "run"))
    assert not (tmp_path / "run" / "config.yaml").exists()
