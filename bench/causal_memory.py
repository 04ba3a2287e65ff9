"""Peak memory of labeling with a causal-LM discriminator on CPU, against (feature, example) pairs per forward
pass and against texts per shard: settings bound it, the amount of work does not.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/causal_memory.py

Each point is one `Labeler.label` call (2 optimiser steps, features_per_batch features at a time) in a fresh
process over a shard of synthetic features, 20 demo-corpus texts each; the discriminator is a random Llama
(hidden 256, 4 layers) with SmolLM2's real tokenizer, prompted without its chat template (a short suffix).
Peak RSS is the process's high-water mark; "labeling" is that peak less the RSS after the model loaded.
Prints a table and writes bench/results/causal_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "causal_memory.json"
EXAMPLES_PER_FEATURE = 20


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def point(model: str, features: int, pair_batch: int, features_per_batch: int) -> dict:
    """One measurement, in this (fresh) process."""
    import pyarrow as pa
    import torch

    from workers.corpus import DEMO_CORPUS, read_corpus
    from workers.discriminators import CausalLMDiscriminator
    from workers.labeler import Labeler
    from workers.optimiser import OptimiserConfig
    from workers.vocab import label_vocab

    torch.set_num_threads(2)
    texts = read_corpus(str(DEMO_CORPUS), limit=features * EXAMPLES_PER_FEATURE)
    rows = {"feature_id": [], "text": [], "activation": []}
    for i, text in enumerate(texts):
        rows["feature_id"].append(i // EXAMPLES_PER_FEATURE)
        rows["text"].append(text)
        rows["activation"].append(float(i % 4 == 0))
    table = pa.table(
        {
            "feature_id": pa.array(rows["feature_id"], pa.int64()),
            "text": rows["text"],
            "activation": pa.array(rows["activation"], pa.float32()),
        }
    )
    disc = CausalLMDiscriminator(model, chat=False, pair_batch=pair_batch)
    vocab = label_vocab(disc.tokenizer)[:2000]
    labeler = Labeler(disc, vocab, OptimiserConfig(steps=2), batch_size=features_per_batch)
    loaded = rss_mib()
    t0 = time.perf_counter()
    out = labeler.label(table, list(range(features)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert out.num_rows == features
    return {
        "features": features,
        "texts": len(texts),
        "pair_batch": pair_batch,
        "features_per_batch": features_per_batch,
        "seconds": round(time.perf_counter() - t0, 1),
        "rss_after_load_mib": round(loaded),
        "peak_rss_mib": round(peak),
        "labeling_mib": round(peak - loaded),
    }


def build_model(folder: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    config = LlamaConfig(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=688,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair-batches", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--shard-features", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--features-per-batch", type=int, default=16)
    parser.add_argument(
        "--point", nargs=4, metavar=("MODEL", "FEATURES", "PAIR_BATCH", "PER_BATCH"), help=argparse.SUPPRESS
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.point:
        model, *numbers = args.point
        print(json.dumps(point(model, *map(int, numbers))))
        return
    with tempfile.TemporaryDirectory() as folder:
        build_model(folder)
        grid = [(64, pb, "pairs per forward pass") for pb in args.pair_batches]
        grid += [(n, 512, "texts per shard") for n in args.shard_features]
        points = []
        for features, pair_batch, axis in grid:
            cmd = [
                sys.executable,
                __file__,
                "--point",
                folder,
                str(features),
                str(pair_batch),
                str(args.features_per_batch),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            points.append({"axis": axis, **json.loads(out)})
            print(points[-1], flush=True)
    print()
    head = ("varied", "features", "texts", "pair_batch", "per batch", "labeling MiB", "peak MiB", "s")
    print("{:<24} {:>8} {:>6} {:>10} {:>9} {:>12} {:>9} {:>6}".format(*head))
    for p in points:
        print(
            f"{p['axis']:<24} {p['features']:>8} {p['texts']:>6} {p['pair_batch']:>10} {p['features_per_batch']:>9} "
            f"{p['labeling_mib']:>12} {p['peak_rss_mib']:>9} {p['seconds']:>6}"
        )
    result = {"points": points, "load_average_1m": round(os.getloadavg()[0], 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
