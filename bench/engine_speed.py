"""Engine speed: features/s at 1, 16, 64 and 256 features per batch against a per-feature loop of the
paper's shape, and causal-LM step time with and without the prefix key-value cache.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/engine_speed.py                 # CPU, MiniLM + tiny Llama
    HF_HUB_OFFLINE=1 .venv/bin/python bench/engine_speed.py --gpu           # adds a ~1B random Llama in bf16

Features are the demo SAE's latents 0..N-1 with their harvested examples (`runs/demo/examples`, written
by `toklabel demo`; harvested here in-process when absent). Every arm labels the same features (the
batch-of-1 and batch-of-16 arms a prefix of them, `--subset`), each from a cold text-embedding cache.

The per-feature loop is the paper's recipe done plainly: one feature at a time, the soft relaxation
p = softmax(v / T), e = p @ E, minibatches of 20 training examples, 5 epochs, Adam on v, every minibatch's
texts encoded again. Both sides are scored the same way: the discrete label's held-out ROC AUC on the
labeler's split. Prints tables and writes bench/results/engine_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from workers.discriminators import CausalLMDiscriminator, EmbeddingDiscriminator  # noqa: E402
from workers.labeler import Labeler, group_examples  # noqa: E402
from workers.optimiser import OptimiserConfig  # noqa: E402
from workers.scoring import roc_auc  # noqa: E402
from workers.vocab import label_vocab  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "engine_speed.json"
DEMO_EXAMPLES = ROOT / "runs" / "demo" / "examples"
DEMO_SAE = ROOT / "data" / "sae" / "minilm-L3-topk-1536"
TEST_FRACTION = 0.3
# Text, then an 8-token suffix for K=1: the label and "? yes or no. answer:" (7 tokens in MiniLM's vocabulary).
CAUSAL_TEMPLATE = "{text}\nIs this text about {label}? Yes or no. Answer:"
LLAMA = {
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=688),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, intermediate_size=5632),
}


# ---------------------------------------------------------------------------------------------- features


def load_examples(n_features: int, contexts: int) -> pa.Table:
    """Examples of the demo SAE's latents 0..n-1: the demo run's, or a fresh in-process harvest."""
    ids = pa.array(range(n_features), pa.int64())
    if DEMO_EXAMPLES.exists():
        table = ds.dataset(DEMO_EXAMPLES, format="parquet").to_table(
            columns=["feature_id", "text", "activation"], filter=pc.is_in(pc.field("feature_id"), ids)
        )
        if len(pc.unique(table["feature_id"])) >= n_features:
            return table
    from workers.corpus import DEMO_CORPUS, read_corpus
    from workers.harvest import SAMPLE_OVERSAMPLING, Harvester, examples_table, negative_pool
    from workers.sae import load_sae
    from workers.subject import SubjectModel

    print(f"harvesting {contexts} demo contexts (no {DEMO_EXAMPLES.relative_to(ROOT)})", flush=True)
    sae = load_sae(DEMO_SAE)
    texts = read_corpus(str(DEMO_CORPUS), limit=contexts)
    harvester = Harvester(
        SubjectModel.load("minilm", sae.cfg.hook_name), sae, 64, 40, 64, 10 * SAMPLE_OVERSAMPLING, seed=0
    )
    h = harvester.harvest(texts, 0, negative_pool(len(texts), 4096, 0))
    return examples_table(h, list(range(n_features)), texts, 40, 0, 5, 2).select(["feature_id", "text", "activation"])


# ------------------------------------------------------------------------------------ per-feature loop


def encode_uncached(disc: EmbeddingDiscriminator, texts: list[str]):
    """The texts' state for the discriminator's readout, computed afresh (no cache), as a plain implementation
    does."""
    disc.clear_cache()
    return disc.encode_texts(texts)


def paper_loop(disc, vocab, ex, lr: float, epochs: int = 5, batch: int = 20, entropy_weight: float = 0.02) -> int:
    """One feature: soft relaxation, Adam on the vocabulary logits; returns the argmax token id."""
    gen = torch.Generator().manual_seed(ex.feature_id)
    table = disc.embed_tokens(vocab)
    v = (0.01 * torch.randn(len(vocab), generator=gen)).requires_grad_()
    log_scale = torch.tensor(2.0, requires_grad=True)
    bias = torch.tensor(0.0, requires_grad=True)
    opt = torch.optim.Adam([v, log_scale, bias], lr=lr)
    train = np.flatnonzero(~ex.test)
    for _ in range(epochs):
        for chunk in torch.randperm(len(train), generator=gen).split(batch):
            rows = train[chunk.numpy()]
            texts = encode_uncached(disc, [ex.texts[i] for i in rows])
            p = torch.softmax(v, -1)
            raw = disc.logits((p @ table)[None, None], texts, torch.arange(len(rows))[None])[0]
            target = torch.from_numpy(ex.positive[rows]).float()
            loss = F.binary_cross_entropy_with_logits(log_scale.exp() * raw + bias, target)
            loss = loss - entropy_weight * (p * torch.log(p.clamp(min=1e-12))).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return int(vocab[v.argmax()])


def held_out_auroc(disc, token: int, ex) -> float | None:
    """The labeler's held-out score of a single-token label: ROC AUC on the feature's test split."""
    texts = [ex.texts[i] for i in np.flatnonzero(ex.test)]
    raw = disc.score(disc.embed_tokens([token])[:, None], disc.encode_texts(texts), torch.arange(len(texts))[None])
    return roc_auc(raw[0].numpy(), ex.positive[ex.test])


def run_paper_loop(disc, vocab, table: pa.Table, feature_ids: list[int], lr: float) -> dict:
    groups = group_examples(table, TEST_FRACTION, OptimiserConfig.seed)
    t0 = time.perf_counter()
    tokens = {fid: paper_loop(disc, vocab, groups[fid], lr) for fid in feature_ids}
    seconds = time.perf_counter() - t0
    scores = {fid: held_out_auroc(disc, tok, groups[fid]) for fid, tok in tokens.items()}
    labels = {fid: disc.tokenizer.convert_ids_to_tokens(tok) for fid, tok in tokens.items()}
    return {"seconds": seconds, "scores": scores, "labels": labels}


def warm_vocabulary(disc, vocab) -> float:
    """Forget every kept embedding, then embed the label vocabulary once (as an actor does when it starts);
    its seconds."""
    disc.clear_cache()
    t0 = time.perf_counter()
    disc.token_states(vocab)
    return time.perf_counter() - t0


def run_engine(disc, vocab, table: pa.Table, feature_ids: list[int], batch: int) -> dict:
    # Every arm starts cold but for the label vocabulary's own embeddings, computed once per discriminator.
    warm_vocabulary(disc, vocab)
    sub = table.filter(pc.is_in(table["feature_id"], pa.array(feature_ids, pa.int64())))
    t0 = time.perf_counter()
    rows = Labeler(disc, vocab, OptimiserConfig(), batch_size=batch, test_fraction=TEST_FRACTION).label(
        sub, feature_ids
    )
    seconds = time.perf_counter() - t0
    rows = rows.to_pylist()
    bad = [r["feature_id"] for r in rows if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"features {bad} did not label ok; pick live features")
    return {
        "seconds": seconds,
        "scores": {r["feature_id"]: r["score"] for r in rows},
        "labels": {r["feature_id"]: r["label"] for r in rows},
    }


def median_score(scores: dict, ids: list[int]) -> float:
    return statistics.median(scores[f] for f in ids if scores[f] is not None)


def feature_arms(args) -> list[dict]:
    table = load_examples(args.features, args.harvest_contexts)
    ids = sorted(set(table["feature_id"].to_pylist()))[: args.features]
    disc = EmbeddingDiscriminator(readout=args.readout)
    vocab = label_vocab(disc.tokenizer)
    vocabulary_seconds = warm_vocabulary(disc, vocab)
    baseline_ids = ids[: args.baseline_features]
    print(f"{len(ids)} features, {table.num_rows} examples; label vocabulary {len(vocab)} tokens", flush=True)
    base = run_paper_loop(disc, vocab, table, baseline_ids, args.baseline_lr)
    base_rate = len(baseline_ids) / base["seconds"]
    print(f"per-feature loop: {len(baseline_ids)} features in {base['seconds']:.1f} s", flush=True)
    arms = [
        {
            "arm": "per-feature loop (soft, batch 20, 5 epochs, Adam)",
            "readout": disc.readout,
            "features_per_batch": 1,
            "features": len(baseline_ids),
            "seconds": round(base["seconds"], 2),
            "features_per_s": round(base_rate, 3),
            "speedup": 1.0,
            "median_auroc": round(median_score(base["scores"], baseline_ids), 4),
            "baseline_median_auroc_same_features": round(median_score(base["scores"], baseline_ids), 4),
            "labels": {str(f): base["labels"][f] for f in baseline_ids[:10]},
        }
    ]
    for batch in args.batches:
        arm_ids = ids[: args.subset.get(batch, len(ids))]
        out = run_engine(disc, vocab, table, arm_ids, batch)
        rate = len(arm_ids) / out["seconds"]
        same = [f for f in arm_ids if f in base["scores"]]
        print(f"engine, {batch} per batch: {len(arm_ids)} features in {out['seconds']:.1f} s", flush=True)
        arms.append(
            {
                "arm": f"engine st-gumbel, {batch} per batch",
                "readout": disc.readout,
                # The same, with the one-time embedding of the label vocabulary counted in this arm.
                "speedup_vocabulary_counted": round(
                    len(arm_ids) / (out["seconds"] + vocabulary_seconds) / base_rate, 2
                ),
                "features_per_batch": batch,
                "features": len(arm_ids),
                "seconds": round(out["seconds"], 2),
                "features_per_s": round(rate, 3),
                "speedup": round(rate / base_rate, 2),
                "median_auroc": round(median_score(out["scores"], arm_ids), 4),
                "baseline_median_auroc_same_features": round(median_score(base["scores"], same), 4) if same else None,
                "engine_median_auroc_on_baseline_features": round(median_score(out["scores"], same), 4)
                if same
                else None,
                "labels": {str(f): out["labels"][f] for f in arm_ids[:10]},
            }
        )
    return arms, vocabulary_seconds


# ------------------------------------------------------------------------------------------ causal LM


def build_llama(size: str, vocab_size: int, folder: str, device: str = "cpu") -> int:
    """A random Llama of `size` with MiniLM's tokenizer, saved as a model folder; its parameter count. Built on
    `device`: a ~1B model initialises in seconds on a GPU, in a minute on a CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.models import load_tokenizer

    cfg = LlamaConfig(**LLAMA[size], vocab_size=vocab_size, max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def long_texts(n: int, tokenizer, tokens: int) -> list[str]:
    """`n` texts of at least `tokens` tokens: consecutive demo-corpus sentences joined."""
    from workers.corpus import DEMO_CORPUS, read_corpus

    out, cur = [], []
    for line in read_corpus(str(DEMO_CORPUS), limit=50 * n):
        cur.append(line)
        if len(tokenizer(" ".join(cur), add_special_tokens=False)["input_ids"]) >= tokens:
            out.append(" ".join(cur))
            cur = []
            if len(out) == n:
                return out
    raise SystemExit("the demo corpus is too short for these texts")


def full_prompt_logits(disc: CausalLMDiscriminator, label_embeds, texts: list[str], index) -> torch.Tensor:
    """The discriminator's logit without the prefix cache: text, label and question run as one prompt."""
    ids, pmask = disc.prefix_ids(texts)
    n_feat, n = index.shape
    flat = index.reshape(-1)
    suffix = disc.embed_tokens(disc._suffix).expand(len(flat), -1, -1)
    labels = label_embeds.to(suffix.dtype).repeat_interleave(n, dim=0)
    inputs = torch.cat([disc.embed_tokens(ids[flat]), labels, suffix], 1)
    ones = torch.ones(len(flat), labels.shape[1] + suffix.shape[1], device=ids.device).long()
    mask = torch.cat([pmask[flat], ones], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = disc.model.base_model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions)
    return disc._answer_logit(out.last_hidden_state[:, -1]).view(n_feat, n)


def causal_arm(size: str, device: str, dtype: torch.dtype, n_feat: int, n_ex: int, chunk: int, repeats: int) -> dict:
    """Step time (forward + backward to the label embeddings) with and without the prefix cache."""
    from workers.models import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    with tempfile.TemporaryDirectory() as folder:
        params = build_llama(size, max(len(tokenizer), 32000 if size == "1b" else 0), folder, device)
        disc = CausalLMDiscriminator(
            folder, template=CAUSAL_TEMPLATE, max_length=64, batch_size=32, device=device, dtype=dtype
        )
    texts = long_texts(n_ex, tokenizer, 64)
    label_ids = label_vocab(tokenizer)[: n_feat * 97 : 97]
    suffix_tokens = 1 + len(disc.prompt.after)
    index = torch.stack([torch.randperm(n_ex, generator=torch.Generator().manual_seed(f)) for f in range(n_feat)])
    index = index.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    cols = max(1, chunk // n_feat)

    def step(fn) -> float:
        label = disc.embed_tokens(label_ids)[:, None].float().clone().requires_grad_()
        sync()
        t0 = time.perf_counter()
        for c in range(0, n_ex, cols):
            fn(label, index[:, c : c + cols]).float().sum().backward()
        sync()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    cache = disc.encode_texts(texts)
    sync()
    encode_s = time.perf_counter() - t0
    with torch.no_grad():
        label = disc.embed_tokens(label_ids)[:, None]
        diff = (disc.logits(label, cache, index) - full_prompt_logits(disc, label, texts, index)).abs().max()
    arms = {
        "cached": lambda lab, idx: disc.logits(lab, cache, idx),
        "full prompt": lambda lab, idx: full_prompt_logits(disc, lab, texts, idx),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    memory: dict[str, int] = {}
    for fn in arms.values():
        step(fn)  # warm-up
    for _ in range(repeats):  # interleaved, so both arms see the same machine load
        for name, fn in arms.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            times[name].append(step(fn))
            if device.startswith("cuda"):
                memory[name] = torch.cuda.max_memory_allocated()
    cached, full = statistics.median(times["cached"]), statistics.median(times["full prompt"])
    steps = OptimiserConfig.steps
    result = {
        "model": f"random Llama {size}",
        "parameters": params,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "features": n_feat,
        "examples_per_feature": n_ex,
        "text_tokens": 64,
        "prefix_tokens": int(cache.mask.shape[1]),
        "suffix_tokens": suffix_tokens,
        "pairs_per_forward": n_feat * cols,
        "max_abs_logit_difference": float(diff),
        "encode_seconds": round(encode_s, 3),
        "step_seconds_cached": round(cached, 4),
        "step_seconds_full_prompt": round(full, 4),
        "cache_speedup": round(full / cached, 2),
        "repeats": repeats,
        # One batch of features: encode the texts once, then `steps` optimiser steps (rerank not counted).
        "features_per_s_cached": round(n_feat / (encode_s + steps * cached), 3),
        "features_per_s_full_prompt": round(n_feat / (steps * full), 3),
    }
    if memory:
        result["max_memory_gib"] = {k: round(v / 2**30, 2) for k, v in memory.items()}
    return result


# ----------------------------------------------------------------------------------------------- main


def parse_subset(items: list[str]) -> dict[int, int]:
    return {int(b): int(n) for b, n in (item.split(":") for item in items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=256, help="demo-SAE latents 0..N-1 used by every arm")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256], help="features per batch")
    parser.add_argument(
        "--subset", nargs="*", default=["1:16", "16:64"], help="BATCH:N - that arm labels only the first N features"
    )
    parser.add_argument("--baseline-features", type=int, default=64, help="features run through the per-feature loop")
    parser.add_argument("--baseline-lr", type=float, default=0.1, help="Adam step size of the per-feature loop")
    parser.add_argument("--harvest-contexts", type=int, default=20000, help="contexts to harvest without a demo run")
    parser.add_argument("--readout", default="sentence+word", help="embedding discriminator readout")
    parser.add_argument("--skip-features", action="store_true", help="only the causal-LM step times")
    parser.add_argument("--causal-features", type=int, default=8)
    parser.add_argument("--causal-examples", type=int, default=32, help="examples (64-token texts) per feature")
    parser.add_argument("--causal-chunk", type=int, default=256, help="(feature, example) pairs per forward")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per causal-LM arm")
    parser.add_argument("--gpu", action="store_true", help="also the ~1B random Llama in bf16 on CUDA")
    parser.add_argument("--gpu-features", type=int, default=16)
    parser.add_argument("--gpu-examples", type=int, default=64)
    parser.add_argument("--gpu-chunk", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady on a CPU shared with other jobs; 0: torch's)"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.subset = parse_subset(args.subset)
    started = time.perf_counter()
    result: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "optimiser": {"mode": OptimiserConfig.mode, "steps": OptimiserConfig.steps, "label_tokens": 1},
    }
    if not args.skip_features:
        result["features"], result["vocabulary_seconds"] = feature_arms(args)
    causal = [
        causal_arm(
            "tiny", "cpu", torch.float32, args.causal_features, args.causal_examples, args.causal_chunk, args.repeats
        )
    ]
    notes = []
    if args.gpu and torch.cuda.is_available():
        causal.append(
            causal_arm("1b", "cuda", torch.bfloat16, args.gpu_features, args.gpu_examples, args.gpu_chunk, args.repeats)
        )
    elif args.gpu:
        notes.append("--gpu asked for, but CUDA is not available: the ~1B Llama arm was skipped")
    else:
        notes.append("the ~1B Llama arm runs with --gpu on a CUDA machine; skipped")
    result["causal_lm"] = causal
    result["notes"] = notes
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_tables(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


def print_tables(result: dict) -> None:
    if "features" in result:
        print()
        print("median held-out AUROC: over the arm's own features, and engine vs loop over the features both ran")
        print(
            f"{'arm':<50} {'features':>8} {'seconds':>8} {'features/s':>10} {'speed-up':>8} {'AUROC':>6} {'shared':>13}"
        )
        for a in result["features"]:
            base = a["baseline_median_auroc_same_features"]
            mine = a.get("engine_median_auroc_on_baseline_features", base)
            shared = "" if base is None else f"{mine:.3f}/{base:.3f}"
            print(
                f"{a['arm']:<50} {a['features']:>8} {a['seconds']:>8.1f} {a['features_per_s']:>10.3f} "
                f"{a['speedup']:>7.1f}x {a['median_auroc']:>6.3f} {shared:>13}"
            )
        counted = {a["features_per_batch"]: a.get("speedup_vocabulary_counted") for a in result["features"]}
        print(
            f"label vocabulary embedded once per discriminator: {result['vocabulary_seconds']:.1f} s, not in the "
            f"arms; counted in it, the 256-per-batch arm is {counted.get(256)}x the loop"
        )
    print()
    print(
        f"{'causal LM':<22} {'device':>6} {'pairs':>5} {'prefix':>6} {'suffix':>6} {'cached s':>9} {'full s':>9} "
        f"{'speed-up':>8} {'feat/s':>7} {'max|diff|':>9}"
    )
    for c in result["causal_lm"]:
        print(
            f"{c['model']:<22} {c['device']:>6} {c['features'] * c['examples_per_feature']:>5} {c['prefix_tokens']:>6} "
            f"{c['suffix_tokens']:>6} {c['step_seconds_cached']:>9.4f} {c['step_seconds_full_prompt']:>9.4f} "
            f"{c['cache_speedup']:>7.1f}x {c['features_per_s_cached']:>7.2f} {c['max_abs_logit_difference']:>9.2e}"
        )
        if "max_memory_gib" in c:
            print(f"{'':<22} max memory GiB: {c['max_memory_gib']}")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"total {result['seconds']} s, load average {result['load_average_1m']}")


if __name__ == "__main__":
    main()
