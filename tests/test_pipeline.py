"""End to end through Ray: run, resume, label from an examples table, query."""

import json
import os

import pyarrow.parquet as pq
import pytest

from pipeline import driver
from pipeline.cli import main
from pipeline.config import DEMO_CONFIG, RunConfig
from pipeline.query import query
from workers.models import load_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_texts):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(demo_texts["wordnet-example"][:240] + demo_texts["song100"][:60]))
    return path


def small_config(tiny_sae_dir, corpus, out, **kw):
    return RunConfig(
        out=str(out),
        sae=str(tiny_sae_dir),
        corpus=str(corpus),
        steps=15,
        shard_size=16,
        features_per_batch=16,
        top_k=10,
        random_negatives=10,
        negative_pool=100,
        harvest_chunk=100,
        **kw,
    )


def test_run_writes_the_layout_and_resumes(ray_session, tiny_sae_dir, corpus, tmp_path):
    out = tmp_path / "run"
    result = driver.run(small_config(tiny_sae_dir, corpus, out))
    assert result.features == 48
    for table in ("examples", "labels", "latents"):
        assert sorted(os.listdir(out / table)) == [f"features-{a:08d}-{a + 15:08d}.parquet" for a in (0, 16, 32)]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["features"] == 48 and manifest["contexts"] == 300
    latents = pq.read_table(out / "latents").to_pylist()
    assert manifest["dead_latents"] == sorted(r["feature_id"] for r in latents if r["n_active"] == 0)
    labels = pq.read_table(out / "labels").to_pylist()
    assert sorted(r["feature_id"] for r in labels) == list(range(48))
    assert {r["feature_id"] for r in labels if r["status"] == "dead"} == set(manifest["dead_latents"])
    ok = [r for r in labels if r["status"] == "ok"]
    assert len(ok) >= 30
    assert all(r["label"] and 0 <= r["score"] <= 1 and r["alternatives"] for r in ok)
    examples = pq.read_table(out / "examples")
    assert {"feature_id", "text", "activation", "kind", "tokens", "token_activations"} <= set(examples.column_names)

    # A lost shard is redone on the next run; finished ones are kept as they are.
    kept = out / "labels" / "features-00000000-00000015.parquet"
    before = kept.stat().st_mtime_ns
    (out / "labels" / "features-00000032-00000047.parquet").unlink()
    driver.run(small_config(tiny_sae_dir, corpus, out))
    assert kept.stat().st_mtime_ns == before
    assert pq.read_table(out / "labels").num_rows == 48


def test_other_config_into_the_same_run_is_refused(ray_session, tiny_sae_dir, corpus, tmp_path):
    config = small_config(tiny_sae_dir, corpus, tmp_path)
    driver.write_plan(driver.prepare_store(config), config, [])
    with pytest.raises(ValueError, match="another configuration"):
        driver.prepare_store(small_config(tiny_sae_dir, corpus, tmp_path, seed=1))


def test_label_command_and_query(ray_session, tiny_sae_dir, corpus, tmp_path, capsys):
    src = tmp_path / "src"
    driver.run(small_config(tiny_sae_dir, corpus, src, features="0-7"))
    examples = tmp_path / "examples.parquet"
    pq.write_table(pq.read_table(src / "examples").select(["feature_id", "text", "activation"]), examples)
    out = tmp_path / "byo"
    code = main(["label", "--examples", str(examples), "--out", str(out), "--steps", "10", "--shard-size", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "features labeled" in printed and str(out) in printed
    n = query(str(out), "SELECT count(*) AS n FROM labels").column("n")[0].as_py()
    assert n == len(set(pq.read_table(examples).column("feature_id").to_pylist()))
    assert main(["query", str(out), "SELECT feature_id, label FROM labels ORDER BY feature_id LIMIT 2"]) == 0
    assert "feature_id" in capsys.readouterr().out
    assert main(["query", str(out), "SELEC nonsense"]) == 2
    assert "Parser Error" in capsys.readouterr().err


def test_refused_run_leaves_no_config_behind(tiny_sae_dir, corpus, tmp_path):
    with pytest.raises(ValueError, match="features"):
        driver.run(small_config(tiny_sae_dir, corpus, tmp_path, features="0-4000"))
    assert not (tmp_path / "config.yaml").exists()


def test_bad_discriminator_is_refused_before_any_work(tiny_sae_dir, corpus, tmp_path):
    with pytest.raises(ValueError, match="discriminator .*nowhere.*cannot be loaded"):
        driver.run(small_config(tiny_sae_dir, corpus, tmp_path / "a", discriminator=str(tmp_path / "nowhere")))
    # A model whose tokenizer holds no word a label could use.
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from workers.discriminators.embedding import save_sentence_encoder_files

    folder = tmp_path / "no-words"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "##ing", "42"]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(specials)}).save_pretrained(folder)
    cfg = BertConfig(vocab_size=len(specials), hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
    BertModel(cfg).save_pretrained(folder)
    save_sentence_encoder_files(folder)
    with pytest.raises(ValueError, match="no-words.*label vocabulary is empty"):
        driver.run(small_config(tiny_sae_dir, corpus, tmp_path / "b", discriminator=str(folder)))
    with pytest.raises(ValueError, match="'minilm': template 'no slot' must contain {label}"):
        driver.run(small_config(tiny_sae_dir, corpus, tmp_path / "c", template="no slot"))
    # A causal LM with positions for one-token labels only.
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.discriminators import CausalPrompt
    from workers.models import load_tokenizer

    short = tmp_path / "short-lm"
    tokenizer = load_tokenizer("minilm")
    one = CausalPrompt.build(tokenizer).positions(1, max_length=64)
    small = dict(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=1)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=one + 1, **small)).save_pretrained(
        short
    )
    tokenizer.save_pretrained(short)
    with pytest.raises(ValueError, match="label_tokens=4 does not fit"):
        driver.run(small_config(tiny_sae_dir, corpus, tmp_path / "d", discriminator=str(short), label_tokens=4))
    assert not (tmp_path / "d" / "config.yaml").exists()
    assert not (tmp_path / "c" / "config.yaml").exists()
    assert not (tmp_path / "a").exists() or not (tmp_path / "a" / "config.yaml").exists()
    assert not (tmp_path / "b" / "config.yaml").exists()


def test_bad_causal_lm_options_are_refused_before_any_work(tiny_llama_dir, tiny_sae_dir, corpus, tmp_path):
    cases = [
        ({"answers": ["supercalifragilistic", "no"]}, "answer word 'supercalifragilistic' is not a single token"),
        ({"chat": True}, "chat: true, but the tokenizer has no chat template"),
        ({"template": "{label} then {text}"}, "must hold {text} once, then {label} once"),
    ]
    for i, (options, message) in enumerate(cases):
        out = tmp_path / str(i)
        with pytest.raises(ValueError, match=f"discriminator .*llama.*{message}"):
            driver.run(small_config(tiny_sae_dir, corpus, out, discriminator=tiny_llama_dir, **options))
        assert not (out / "config.yaml").exists()
    with pytest.raises(ValueError, match="option 'answers' is for causal-lm discriminators; this is an embedding"):
        driver.run(small_config(tiny_sae_dir, corpus, tmp_path / "m", answers=["yes", "no"]))


def test_an_actor_that_cannot_start_stops_the_run_at_once(ray_session, tiny_sae_dir, corpus, tmp_path):
    # Config and tokenizer load (the preflight passes), the weights do not: only the actor finds out.
    from transformers import BertConfig, BertModel

    from workers.discriminators.embedding import save_sentence_encoder_files

    folder = tmp_path / "broken-weights"
    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1)).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    save_sentence_encoder_files(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    config = small_config(tiny_sae_dir, corpus, tmp_path / "run", discriminator=str(folder), features="0-15")
    with pytest.raises(RuntimeError, match="labeling actor could not start: .*Error"):
        driver.run(config)
    assert not (tmp_path / "run" / "_failures").exists()


def test_bad_inputs_fail_before_work(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert main(["query", str(tmp_path), "SELECT 1"]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_demo_at_reduced_size(ray_session, tmp_path, capsys):
    code = main(
        [
            "demo",
            "--out",
            str(tmp_path / "demo"),
            "--features",
            "0-31",
            "--max-contexts",
            "600",
            "--steps",
            "20",
            "--negative-pool",
            "300",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "features labeled" in printed and "median score" in printed
    cfg = RunConfig.from_yaml(DEMO_CONFIG)
    labels = pq.read_table(tmp_path / "demo" / "labels").to_pylist()
    assert len(labels) == 32 and cfg.discriminator == "minilm"
    assert sum(r["status"] == "ok" for r in labels) >= 16
