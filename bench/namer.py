"""The namer's cost: load time cold (the GGUF file converted into an empty cache) and cached, and naming
throughput on lists of candidate labels.

HF_HUB_OFFLINE=1 python bench/namer.py [--namer smollm2] [--features 256] [--threads 2]

Prints a table and saves bench/results/namer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Each load runs in a fresh process, so that nothing of an earlier load (files in the page cache aside) is reused.
LOAD = """
import sys, time
t0 = time.perf_counter()
from workers.models import load_tokenizer
from workers.namers import load_namer
from workers.vocab import label_vocab, label_words
tokenizer = load_tokenizer("minilm")
t1 = time.perf_counter()
load_namer(sys.argv[1], label_words(tokenizer, label_vocab(tokenizer)))
print(time.perf_counter() - t1)
"""


def load_seconds(namer: str, cache: str) -> float:
    env = {**os.environ, "TOKLABEL_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", LOAD, namer], env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namer", default="smollm2")
    parser.add_argument("--features", type=int, default=256, help="lists named in the throughput arm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "namer.json"))
    args = parser.parse_args()

    import pyarrow.dataset as ds
    import torch

    from workers.labeler import PROPOSALS
    from workers.models import load_tokenizer
    from workers.namers import load_namer
    from workers.vocab import label_vocab, label_words

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as empty:
        cold = load_seconds(args.namer, empty)
    default_cache = os.environ.get("TOKLABEL_CACHE", "")  # empty: the default cache folder
    load_seconds(args.namer, default_cache)  # converts once where the default cache has no copy yet
    cached = load_seconds(args.namer, default_cache)
    # Candidate lists as the labeler gives them: the alternatives of the demo's labels where a demo run exists,
    # else lists of label-vocabulary words.
    tokenizer = load_tokenizer("minilm")
    words = label_words(tokenizer, label_vocab(tokenizer))
    demo = ROOT / "runs" / "demo" / "labels"
    if demo.is_dir():
        rows = ds.dataset(demo).to_table(columns=["alternatives"]).to_pylist()
        lists = [[a["label"] for a in r["alternatives"]] for r in rows if r["alternatives"]]
    else:
        lists = [words[i : i + 10] for i in range(0, 10 * args.features, 10)]
    lists = (lists * (args.features // max(len(lists), 1) + 1))[: args.features]
    namer = load_namer(args.namer, words)
    t0 = time.perf_counter()
    namer.name_features(lists, PROPOSALS)
    seconds = time.perf_counter() - t0
    result = {
        "namer": args.namer,
        "threads": args.threads,
        "load_cold_s": cold,
        "load_cached_s": cached,
        "features": len(lists),
        "naming_s": seconds,
        "features_per_s": len(lists) / seconds,
        "patterns": list(namer.patterns),
    }
    print(f"{'namer':<10} {'load cold':>10} {'load cached':>12} {'features':>9} {'naming':>8} {'features/s':>11}")
    print(
        f"{args.namer:<10} {cold:>9.1f}s {cached:>11.1f}s {len(lists):>9} {seconds:>7.1f}s "
        f"{result['features_per_s']:>11.2f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
