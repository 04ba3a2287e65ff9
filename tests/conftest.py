"""Shared fixtures: the real MiniLM discriminator, a tiny SAE built in code, one Ray session."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from workers.corpus import DEMO_CORPUS  # noqa: E402
from workers.sae import SAEConfig, build_sae, save_saelens  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    from workers.discriminators import load_discriminator

    return load_discriminator("minilm")


@pytest.fixture(scope="session")
def demo_texts() -> dict[str, list[str]]:
    """Demo-corpus texts by source (first lines of each)."""
    by_source: dict[str, list[str]] = {}
    with open(DEMO_CORPUS) as f:
        for line in f:
            rec = json.loads(line)
            by_source.setdefault(rec["source"], []).append(rec["text"])
    return by_source


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory):
    """A TopK SAE on MiniLM's layer-3 residual stream with random weights, saved in SAELens format."""
    cfg = SAEConfig(
        architecture="topk", d_in=384, d_sae=48, k=6, model_name="minilm", hook_name="blocks.3.hook_resid_post"
    )
    sae = build_sae(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(48, 384, generator=gen), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    path = tmp_path_factory.mktemp("sae") / "tiny-topk"
    save_saelens(sae, path)
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()
