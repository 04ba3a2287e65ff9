"""B-cos language models: the conversion, exact contributions, the faithfulness measures, bad input refused before
training, and (slow) training on Ray Train with checkpoints, a killed worker resumed, S3, the report section."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from pipeline import bcos as bcos_stage
from pipeline.cli import main
from pipeline.storage import RunStore
from workers.bcos import (
    METHODS,
    BcosLayerNorm,
    BcosLinear,
    BertClassifier,
    GatedActivation,
    _phi,
    base_config,
    batch_plan,
    check_b,
    concatenate,
    contributions,
    copy_weights,
    explain,
    explaining,
    faithfulness,
    perturbed,
    pointing_game,
)
from workers.models import load_tokenizer

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "classify"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def tiny_bert(seed: int = 0, **config) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(**{"vocab_size": 200, **TINY, **config})).eval()


def converted(b: float | None = 1.5, seed: int = 0, **config) -> BertClassifier:
    """A classifier over a tiny random BERT with its weights copied in (head and all seeded)."""
    source = tiny_bert(seed, **config)
    torch.manual_seed(seed + 1)
    model = BertClassifier(source.config, CLASSES, b)
    copy_weights(model, source.state_dict())
    return model.eval()


def random_batch(seed: int = 0, n: int = 4, length: int = 9):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1, 6:] = 0  # a padded text
    mask[2, 3:] = 0
    return ids, mask


# The architecture: the conventional flavour is BERT itself; the B-cos flavour converts every part.


def test_conventional_flavour_is_bert():
    source = tiny_bert()
    model = BertClassifier(source.config, CLASSES)
    conversion = copy_weights(model, source.state_dict())
    assert conversion.dropped == [] and conversion.new == ["classifier.weight", "classifier.bias"]
    model.eval()
    ids, mask = random_batch()
    out = source(ids, attention_mask=mask)
    x0 = model.embed(ids)
    bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    h = x0
    for layer in model.encoder.layer:
        h, _ = layer(h, bias)
    real = mask.bool()
    assert torch.allclose(h[real], out.last_hidden_state[real], atol=1e-5)
    assert torch.allclose(torch.tanh(model.pooler.dense(h[:, 0])), out.pooler_output, atol=1e-5)


def test_conversion_copies_weights_by_name_and_drops_every_bias():
    source = tiny_bert()
    model = BertClassifier(source.config, CLASSES, b=1.5)
    conversion = copy_weights(model, source.state_dict())
    assert conversion.new == ["classifier.weight"]  # the head: new, and bias-free
    assert conversion.dropped and all(n.endswith(".bias") for n in conversion.dropped)
    # Every bias after the embeddings is gone; the embeddings' own LayerNorm keeps its bias.
    kept = [n for n in conversion.copied if n.endswith(".bias")]
    assert kept == ["embeddings.LayerNorm.bias"]
    assert len(conversion.copied) + len(conversion.dropped) == len(source.state_dict())
    target = model.state_dict()
    for name in conversion.copied:
        assert torch.equal(target[name], source.state_dict()[name]), name
    layer = model.encoder.layer[0]
    for dense in (layer.attention.output.dense, layer.intermediate.dense, layer.output.dense, model.pooler.dense):
        assert isinstance(dense, BcosLinear) and dense.b == 1.5
    assert isinstance(model.classifier, BcosLinear)
    assert all(getattr(layer.attention.self, p).bias is None for p in ("query", "key", "value"))
    assert isinstance(layer.output.LayerNorm, BcosLayerNorm) and isinstance(layer.intermediate.act, GatedActivation)
    x = torch.randn(3, 32)
    assert torch.equal(model.pooler.act(x), x)  # no tanh


def test_bcos_linear_is_the_papers_formula():
    torch.manual_seed(0)
    layer = BcosLinear(16, 5, b=2.5)
    x = torch.randn(7, 16, dtype=torch.float64)
    layer.double()
    w = layer.weight / layer.weight.norm(dim=1, keepdim=True)
    cos = (x @ w.T) / x.norm(dim=1, keepdim=True)
    expected = (cos.abs() + 1e-6) ** 1.5 * (x @ w.T)
    assert torch.allclose(layer(x), expected, rtol=1e-12)
    # The rows' norms do not matter; B = 1 is a plain bias-free linear layer (of the unit rows).
    with torch.no_grad():
        layer.weight.mul_(torch.rand(5, 1, dtype=torch.float64) * 10 + 0.1)
    assert torch.allclose(layer(x), expected, rtol=1e-10)
    layer.b = 1
    assert torch.allclose(layer(x), F.linear(x, w), rtol=1e-12)


def test_layer_norm_and_gelu_of_the_bcos_flavour():
    x = torch.randn(4, 6, 32, dtype=torch.float64)
    norm = BcosLayerNorm(32, eps=1e-12).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    assert torch.allclose(norm(x), F.layer_norm(x, (32,), norm.weight, None, 1e-12), atol=1e-12)
    assert torch.allclose(GatedActivation(_phi)(x), F.gelu(x), atol=1e-12)


@pytest.mark.parametrize("b", [1.0, 1.5, 2.0])
def test_contributions_sum_to_the_logit(b):
    ids, mask = random_batch()
    target = torch.tensor([0, 1, 2, 1])
    for dtype, tolerance in ((torch.float64, 1e-4), (torch.float32, 1e-3)):
        model = converted(b).to(dtype)
        contrib, logit = contributions(model, ids, mask, target)
        with torch.no_grad():
            assert torch.equal(logit, model(ids, mask).gather(1, target[:, None]).squeeze(1))
        error = ((contrib.sum(1) - logit).abs() / logit.abs()).max().item()
        assert error < tolerance, (dtype, error)
        assert (contrib[mask == 0] == 0).all()  # padding takes no part
    # Without explanation mode the same input x gradient is not exact: the dynamic weights carry gradient.
    model = converted(b).double()
    x0 = model.embed(ids).detach().requires_grad_(True)
    logit = model.from_embeddings(x0, mask).gather(1, target[:, None]).squeeze(1)
    (grad,) = torch.autograd.grad(logit.sum(), x0)
    assert ((x0 * grad).sum((1, 2)) - logit).abs().max() > 1e-3


def test_explanation_mode_changes_no_output_and_restores_training():
    model = converted().train()
    ids, mask = random_batch()
    model.eval()
    with torch.no_grad():
        before = model(ids, mask)
    model.train()
    with explaining(model), torch.no_grad():
        assert not model.training and torch.equal(model(ids, mask), before)
        assert all(m.explain for m in model.modules() if hasattr(m, "explain"))
    assert model.training and not any(m.explain for m in model.modules() if hasattr(m, "explain"))


def test_contributions_need_a_bcos_model():
    ids, mask = random_batch()
    with pytest.raises(ValueError, match="B-cos model"):
        contributions(converted(None), ids, mask, torch.zeros(4, dtype=torch.long))


def test_b_below_one_is_refused():
    check_b(1)
    for b in (0.5, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"expected a number >= 1"):
            check_b(b)


def test_only_bert_checkpoints_are_converted(tmp_path):
    gpt2 = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(gpt2)
    with pytest.raises(ValueError, match=r"is a 'gpt2' model \(GPT2Model\); B-cos conversion takes a BERT-family"):
        base_config(str(gpt2))
    relative = tmp_path / "relative"
    tiny_bert(position_embedding_type="relative_key").save_pretrained(relative)
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        base_config(str(relative))
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        base_config(str(tmp_path / "no-such-model"))
    assert base_config("minilm").hidden_size == 384


# Faithfulness measures on hand-made inputs.


def test_perturbation_masks_the_top_tokens_and_never_the_special_ones(tokenizer):
    cls, sep, pad, mask_id = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                              tokenizer.mask_token_id)  # fmt: skip
    ids = torch.tensor(
        [[cls, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, sep], [cls, 21, 22, 23, sep, pad, pad, pad, pad, pad, pad, pad]]
    )
    mask = (ids != pad).long()
    attr = torch.tensor([[9.0, 1, 5, 2, 8, 3, 7, 4, 6, 0, -1, 9], [9.0, 3, 1, 2, 9, 0, 0, 0, 0, 0, 0, 0]])
    # 10 text tokens: the top 30% are 3 tokens (ids 14, 16, 18); 3 tokens: ceil(0.9) = 1 (id 21).
    comp = perturbed(ids, mask, attr, tokenizer, 30, keep=False)
    assert comp[0].tolist() == [cls, 11, 12, 13, mask_id, 15, mask_id, 17, mask_id, 19, 20, sep]
    assert comp[1].tolist() == [cls, mask_id, 22, 23, sep] + [pad] * 7
    suff = perturbed(ids, mask, attr, tokenizer, 30, keep=True)
    assert suff[0].tolist() == [cls] + [mask_id] * 3 + [14, mask_id, 16, mask_id, 18] + [mask_id] * 2 + [sep]
    assert suff[1].tolist() == [cls, 21, mask_id, mask_id, sep] + [pad] * 7
    # At 90% all but the weakest text token go (comprehensiveness); the specials stay either way.
    assert (perturbed(ids, mask, attr, tokenizer, 90, keep=False)[0] == mask_id).sum() == 9


def test_faithfulness_prefers_the_tokens_the_model_reads(tokenizer):
    # A B-cos model's own contributions against their reverse: masking its top tokens must hurt more.
    model = converted(seed=3, vocab_size=tokenizer.vocab_size)
    texts = ["the dog chased a cat across the yard", "a recipe for bread and butter", "oak trees grow slowly"] * 2
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    target = model(ids, mask).argmax(1)
    attr = explain("bcos", model, ids, mask, target, tokenizer)
    good = faithfulness(model, ids, mask, attr, tokenizer)
    bad = faithfulness(model, ids, mask, -attr, tokenizer)
    assert good["comprehensiveness"].mean() > bad["comprehensiveness"].mean()
    assert good["sufficiency"].mean() < bad["sufficiency"].mean()
    assert good["comprehensiveness_by_level"].shape == (9,)


def test_pointing_game_and_synthetic_inputs(tokenizer):
    ids, mask, segments = concatenate(tokenizer, [["a dog barked", "bread is food"], ["oak"] * 3], max_length=64)
    words = tokenizer.convert_ids_to_tokens(ids[0][mask[0].bool()])
    assert words == ["[CLS]", "a", "dog", "barked", "bread", "is", "food", "[SEP]"]
    assert segments[0, : len(words)].tolist() == [-1, 0, 0, 0, 1, 1, 1, -1]
    assert segments[1, :5].tolist() == [-1, 0, 1, 2, -1] and (segments[0, len(words) :] == -1).all()
    # Each text is cut to an equal share of the length.
    long, _, seg = concatenate(tokenizer, [["word " * 50, "word " * 50]], max_length=12)
    assert long.shape[1] == 12 and (seg[0] == 0).sum() == (seg[0] == 1).sum() == 5
    attr = torch.tensor([[5.0, 1, 2, -4, 3, 0, 0, 9], [0, 1, 1, 2, 0, 0, 0, 0]])
    assert pointing_game(attr[:1], segments[:1, :8], 0).item() == pytest.approx(3 / 6)
    assert pointing_game(attr[1:], segments[1:, :8], 2).item() == pytest.approx(0.5)
    assert pointing_game(torch.zeros(1, 8), segments[:1, :8], 0).item() == 0  # no positive mass


def test_every_post_hoc_method_runs_and_integrated_gradients_is_complete(tokenizer):
    model = converted(None, seed=2, vocab_size=tokenizer.vocab_size)
    batch = tokenizer(["a dog barked at the mail carrier", "bread"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    target = torch.tensor([0, 2])
    bcos = converted(seed=2, vocab_size=tokenizer.vocab_size)
    for method in METHODS:
        explained = model if METHODS[method].model == "conventional" else bcos
        attr = explain(method, explained, ids, mask, target, tokenizer, steps=8)
        assert attr.shape == ids.shape and torch.isfinite(attr).all(), method
        assert (attr[mask == 0] == 0).all() and (attr[:, 0] == 0).all(), method  # [CLS] and padding: never scored
    # IG's completeness: with many steps, the attributions (with [CLS]/[SEP], whose inputs equal the baseline's,
    # adding nothing) add up to logit(text) - logit(baseline).
    from workers.bcos import integrated_gradients

    attr = integrated_gradients(model.double(), ids, mask, target, tokenizer, steps=64)
    specials = (ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id) | (mask == 0)
    base = torch.where(specials, ids, tokenizer.pad_token_id)
    with torch.no_grad():
        gap = (model(ids, mask) - model(base, mask)).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(attr.sum(1), gap, rtol=0.02, atol=1e-4)


def test_batch_plan_is_seeded_complete_and_length_grouped():
    lengths = list(np.random.default_rng(0).integers(3, 60, 203))
    plan = batch_plan(lengths, batch=16, epochs=2, seed=0, pool=4)
    assert plan == batch_plan(lengths, batch=16, epochs=2, seed=0, pool=4)
    assert plan != batch_plan(lengths, batch=16, epochs=2, seed=1, pool=4)
    half = len(plan) // 2
    for epoch in (plan[:half], plan[half:]):
        assert sorted(i for b in epoch for i in b) == list(range(203))  # every row once per epoch
    assert all(8 <= len(b) < 24 for b in plan)  # a short last batch joins the one before it
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in plan])
    assert spread < 0.5 * np.ptp(lengths)  # rows of a batch have similar lengths


# Bad input: refused before any weights load, Ray starts or anything is written.


@pytest.fixture
def tripwires(monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("weights loaded or Ray started before the input was checked")

    monkeypatch.setattr(bcos_stage, "connect", loaded)
    monkeypatch.setattr(BertModel, "from_pretrained", loaded)


def glosses(tmp_path: Path, per_class: int = 50, classes=("noun.animal", "noun.food", "noun.plant"), **names) -> str:
    """`per_class` shipped glosses of each class (columns renamed by `names`)."""
    rows = pq.read_table(SHIPPED / "wordnet_glosses.parquet").to_pylist()
    picked = []
    for c in classes:
        picked += [{names.get(k, k): v for k, v in r.items()} for r in rows if r["label"] == c][:per_class]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(picked), path)
    return str(path)


def refused(tmp_path: Path, data: str, capsys, *options) -> str:
    out = tmp_path / "out"
    assert main(["bcos", "train", "--dataset", data, "--out", str(out), *options]) == 2
    assert not out.exists()
    return capsys.readouterr().err


def test_dataset_without_the_columns(tmp_path, tripwires, capsys):
    err = refused(tmp_path, glosses(tmp_path, label="category"), capsys)
    assert "no column 'label'" in err and "category" in err


def test_dataset_with_one_class(tmp_path, tripwires, capsys):
    err = refused(tmp_path, glosses(tmp_path, classes=("noun.food",)), capsys)
    assert "at least 2 classes" in err and "noun.food" in err


def test_b_below_one_on_the_command_line(tmp_path, tripwires, capsys):
    err = refused(tmp_path, glosses(tmp_path), capsys, "--b", "0.5")
    assert "B = 0.5" in err and ">= 1" in err


def test_checkpoint_that_is_not_bert(tmp_path, tripwires, capsys):
    gpt2 = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(gpt2)
    err = refused(tmp_path, glosses(tmp_path), capsys, "--model", str(gpt2))
    assert "'gpt2' model" in err and "BertModel" in err


def test_explain_without_a_model(tmp_path, capsys):
    assert main(["bcos", "explain", str(tmp_path / "nothing"), "a text"]) == 2
    assert "holds no trained bcos model" in capsys.readouterr().err


# Slow: training on Ray Train, explanations, the report, a killed worker resumed, S3.

RECIPE = ["--epochs", "4", "--batch", "8", "--lr", "3e-3"]  # a checkpoint per epoch: every 15 steps


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random BertModel saved with MiniLM's tokenizer: a BERT checkpoint as any other."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert(vocab_size=load_tokenizer("minilm").vocab_size, max_position_embeddings=128).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory, tiny_model_dir) -> tuple[str, str, list[str]]:
    """(dataset, output, command) of an uninterrupted `toklabel bcos train` on 150 shipped glosses."""
    root = tmp_path_factory.mktemp("bcos")
    data = glosses(root)
    out = str(root / "out")
    command = ["bcos", "train", "--dataset", data, "--out", out, "--model", tiny_model_dir, *RECIPE]
    assert main(command) == 0
    return data, out, command


@pytest.mark.slow
def test_train_explain_and_rerun(trained, capsys):
    data, out, command = trained
    root = Path(out)
    for path in ("bcos.json", "summary.json", "_manifest.json", "results/results.parquet", "test/test.parquet",
                 "model/config.json", "model/bcos.safetensors", "model/conventional.safetensors",
                 "checkpoints/bcos/checkpoint_manager_snapshot.json"):  # fmt: skip
        assert (root / path).is_file(), path
    summary = json.loads((root / "summary.json").read_text())
    assert set(summary) == {"dataset", "text_col", "label_col", "results"} and summary["dataset"] == data
    results = {r["method"]: r for r in summary["results"]}
    assert set(results) == {"bcos", "conventional"}
    assert all(set(r) == {"method", "pooling", "binarised", "macro_f1", "accuracy"} for r in results.values())
    assert results["bcos"]["accuracy"] > 0.6 and results["conventional"]["accuracy"] > 0.5  # chance: 1/3
    manifest = json.loads((root / "_manifest.json").read_text())
    assert manifest["n_test"] == 30 and manifest["training"]["bcos"]["steps"] == 60  # 4 epochs of 15 batches
    assert manifest["training"]["bcos"]["resumed_from"] == []
    test = pq.read_table(root / "test" / "test.parquet").to_pylist()
    assert len(test) == 30 and {r["label"] for r in test} == {"noun.animal", "noun.food", "noun.plant"}
    for r in test:
        assert r["tokens"][0] == "[CLS]" and r["tokens"][-1] == "[SEP]" and len(r["tokens"]) == len(r["contributions"])
        assert math.isclose(sum(r["contributions"]), r["logit"], rel_tol=1e-3, abs_tol=1e-5)
    accuracy = np.mean([r["bcos_class"] == r["label"] for r in test])
    assert accuracy == pytest.approx(results["bcos"]["accuracy"])

    capsys.readouterr()
    assert main(["bcos", "explain", out, test[0]["text"], "--color", "never"]) == 0
    shown = capsys.readouterr().out
    assert f"predicted {test[0]['bcos_class']}" in shown and "sum of token contributions" in shown
    assert "[+" in shown and "strongest for:" in shown
    assert main(["bcos", "explain", out, "a dog", "--class", "noun.plant", "--color", "always"]) == 0
    assert "explaining noun.plant" in capsys.readouterr().out
    assert main(["bcos", "explain", out, "a dog", "--class", "noun.car"]) == 2
    assert "not one of the model's classes" in capsys.readouterr().err

    # A rerun of the same command finds both models trained and scores them again; other settings are refused.
    stamp = (root / "model" / "bcos.safetensors").stat().st_mtime_ns
    assert main(command) == 0
    assert (root / "model" / "bcos.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((root / "summary.json").read_text()) == summary
    assert main([*command, "--b", "2"]) == 2
    assert "other settings (differing: ['b'])" in capsys.readouterr().err


@pytest.mark.slow
def test_report_shows_explanations_beside_the_probe(trained, tmp_path, tiny_sae_dir):
    from synthetic_run import write_run

    from pipeline import probe as probe_stage
    from pipeline.config import RunConfig

    data, out, _ = trained
    run = str(tmp_path / "run")
    write_run(run, n_features=40, shard_size=10)
    hook = "blocks.3.hook_resid_post"
    Path(run, "config.yaml").write_text(RunConfig(out=run, sae=str(tiny_sae_dir), model="minilm", hook=hook).to_yaml())
    probe = str(tmp_path / "probe")
    probe_stage.probe(probe_stage.ProbeConfig(run=run, dataset=data, out=probe))
    page = tmp_path / "report.html"
    assert main(["report", run, "-o", str(page), "--probe", probe, "--bcos", out]) == 0
    html = page.read_text()
    assert "B-cos: " in html and html.count('class="bcos-example"') == 3  # one test text per class
    assert html.count('class="bcos-feats"') == 3 and "strongest SAE features" in html
    assert "probe: sae " in html and "probe baseline: tfidf" in html
    test = pq.read_table(Path(out, "test", "test.parquet")).to_pylist()
    first = next(r for r in test if r["label"] == "noun.animal")
    assert f'title="{first["contributions"][1]:+.3f}"' in html  # the first text's first token, with its contribution


def train_workers() -> list:
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]


@pytest.mark.slow
def test_killed_worker_resumes_on_s3_and_ends_equal(trained, s3_server, monkeypatch, tiny_model_dir):
    """The B-cos model trained into S3, its worker killed after the first checkpoint: Ray Train restarts it from that
    checkpoint (on S3), and the model ends exactly as the uninterrupted local run's (same seed: same data order,
    dropout and optimiser state, all in the checkpoint)."""
    import signal

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    data, reference, command = trained
    config = bcos_stage.TrainConfig(
        dataset=data, out="s3://toklabel/bcos/killed", model=tiny_model_dir, epochs=4, batch=8, lr=3e-3
    )
    dataset = bcos_stage.read_dataset(config)
    store = bcos_stage.prepare_store(config, config.key(dataset.texts))
    assert RunStore(reference).read_json("bcos.json")["key"] == config.key(dataset.texts)  # the same settings
    snapshot = "checkpoints/bcos/checkpoint_manager_snapshot.json"
    killed, finished = [], threading.Event()

    def kill_after_first_checkpoint() -> None:
        while not finished.is_set():
            if store.exists(snapshot):
                for p in train_workers():
                    p.send_signal(signal.SIGKILL)
                    killed.append(p.pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_checkpoint)
    killer.start()
    try:
        first = bcos_stage.fit(store, config, "bcos", dataset)
    finally:
        finished.set()
        killer.join()
    assert killed and first["resumed_from"][:1] in ([15], [30], [45]) and first["steps"] == 60
    weights = f"{bcos_stage.MODEL}/bcos.safetensors"
    expected = load_safetensors(Path(reference, weights).read_bytes())
    got = load_safetensors(store.read_bytes(weights))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)

    # A rerun (the command killed after the last checkpoint, before the weights were written) resumes there.
    store.delete(weights)
    again = bcos_stage.fit(store, config, "bcos", dataset)
    assert again["resumed_from"] == [60] and again["steps"] == 60
    got = load_safetensors(store.read_bytes(weights))
    assert all(torch.equal(got[k], expected[k]) for k in got)
