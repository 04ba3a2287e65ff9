import numpy as np
import pytest

from workers.harvest import Harvester, examples_table, latents_table, negative_pool
from workers.sae import load_sae
from workers.subject import SubjectModel


@pytest.fixture(scope="module")
def harvester(tiny_sae_dir):
    return Harvester(SubjectModel.load("minilm", "blocks.3.hook_resid_post"), load_sae(tiny_sae_dir), 16, 5, 8)


@pytest.fixture(scope="module")
def texts(demo_texts):
    return demo_texts["wordnet-example"][:50] + demo_texts["tang300"][:10]


def test_chunked_harvest_merges_to_the_single_pass_result(harvester, texts):
    pool = negative_pool(len(texts), 20, seed=0)
    whole = harvester.harvest(texts, 0, pool)
    a, b, c = (
        harvester.harvest(texts[:17], 0, pool),
        harvester.harvest(texts[17:40], 17, pool),
        harvester.harvest(texts[40:], 40, pool),
    )
    merged = c.merge(a).merge(b)  # any order
    np.testing.assert_array_equal(merged.top_ctx, whole.top_ctx)
    np.testing.assert_allclose(merged.top_acts, whole.top_acts, rtol=1e-5)
    np.testing.assert_allclose(merged.top_tokens, whole.top_tokens, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(merged.n_active, whole.n_active)
    assert merged.n_contexts == whole.n_contexts == len(texts)
    assert merged.tokens == whole.tokens
    assert sorted(merged.pool_ctx) == sorted(whole.pool_ctx) == sorted(pool)


def test_top_contexts_are_sorted_and_activations_match_tokens(harvester, texts):
    h = harvester.harvest(texts, 0, negative_pool(len(texts), 20, 0))
    live = np.flatnonzero(h.n_active > 0)
    assert len(live) > 0
    for f in live:
        acts = h.top_acts[f][h.top_ctx[f] >= 0]
        assert (np.diff(acts) <= 0).all() and (acts > 0).all()
        # A context's activation is the max over its tokens.
        np.testing.assert_allclose(h.top_tokens[f, 0].max(), acts[0], rtol=1e-5)


def test_examples_table_has_tops_and_quiet_negatives(harvester, texts):
    h = harvester.harvest(texts, 0, negative_pool(len(texts), 30, 0))
    ids = list(range(h.top_acts.shape[0]))
    table = examples_table(h, ids, texts, n_negatives=4, seed=0).to_pylist()
    live = {int(f) for f in np.flatnonzero(h.n_active > 0)}
    assert {r["feature_id"] for r in table} == live
    for r in table:
        if r["kind"] == "top":
            assert r["activation"] > 0 and len(r["tokens"]) == len(r["token_activations"]) > 0
            assert r["text"] == texts[r["context_id"]]
        else:
            assert r["kind"] == "random" and r["activation"] == 0.0
    stats = latents_table(h, ids).to_pylist()
    assert all(abs(s["density"] - h.n_active[s["feature_id"]] / len(texts)) < 1e-12 for s in stats)


def test_width_mismatch_is_refused(tiny_sae_dir):
    sae = load_sae(tiny_sae_dir)
    sae.cfg.d_in = 100
    with pytest.raises(ValueError, match="d_in=100"):
        Harvester(SubjectModel.load("minilm", "blocks.1.hook_resid_post"), sae, 16, 5)
