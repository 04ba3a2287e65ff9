"""Harvest throughput and peak memory: MiniLM layer 3 + random TopK SAEs over the shipped demo corpus.

Each case runs in a fresh process (peak RSS is per process), harvesting with one Harvester in-process
(no Ray), so the numbers are the harvest itself. Prints a table and writes bench/results/harvest.json.

    .venv/bin/python bench/harvest.py                      # defaults: 4096 latents / 30k tokens, 16384 / 50k
    .venv/bin/python bench/harvest.py --cases 16384:1000000   # LATENTS:TOKENS pairs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results" / "harvest.json"
HOOK = "blocks.3.hook_resid_post"


def run_case(n_latents: int, n_tokens: int, length: int, batch: int, k: int) -> dict:
    """Harvest about `n_tokens` tokens with a random TopK SAE of `n_latents`; return the measurements."""
    import torch

    from workers.corpus import DEMO_CORPUS, make_contexts, read_corpus
    from workers.harvest import Harvester, negative_pool
    from workers.sae import SAEConfig, build_sae
    from workers.subject import SubjectModel

    subject = SubjectModel.load("minilm", HOOK)
    # Every 7th document first, then the next 7th: the corpus' sources (examples, glosses, poems) mix from the start.
    corpus = read_corpus(str(DEMO_CORPUS))
    docs = [doc for offset in range(7) for doc in corpus[offset::7]]
    texts, tokens = [], 0
    for start in range(0, len(docs), 2000):
        contexts = make_contexts(docs[start : start + 2000], subject.tokenizer, length, split_documents=True)
        counts = [min(len(ids), length) for ids in subject.tokenizer(contexts, add_special_tokens=False)["input_ids"]]
        for text, count in zip(contexts, counts):
            if tokens < n_tokens:
                texts.append(text)
                tokens += count
        if tokens >= n_tokens:
            break
    else:
        raise SystemExit(f"the demo corpus sample holds only {tokens} tokens; ask for fewer")
    n = len(texts)
    cfg = SAEConfig("topk", 384, n_latents, "minilm", HOOK, k=32)
    sae = build_sae(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(n_latents, 384, generator=gen), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    sae.eval().requires_grad_(False)
    harvester = Harvester(subject, sae, length, k, batch, sample_size=20, seed=0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    h = harvester.harvest(texts, 0, negative_pool(len(texts), 4096, 0))
    seconds = time.perf_counter() - t0
    return {
        "latents": n_latents,
        "contexts": n,
        "tokens": tokens,
        "context_length": length,
        "batch": batch,
        "top_k": k,
        "sample_size": 20,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "contexts_per_s": round(n / seconds, 1),
        "live_latents": int((h.n_active > 0).sum()),
        "peak_rss_mib_before_harvest": round(rss_before, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        # The CPU may be shared: the 1-minute load average at the end says how much.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["4096:30000", "16384:50000"], help="LATENTS:TOKENS")
    parser.add_argument("--length", type=int, default=64, help="context length in tokens")
    parser.add_argument("--batch", type=int, default=64, help="contexts per forward pass")
    parser.add_argument("--top-k", type=int, default=40, help="top contexts kept per latent")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.one:
        latents, tokens = (int(x) for x in args.one.split(":"))
        print(json.dumps(run_case(latents, tokens, args.length, args.batch, args.top_k)))
        return
    rows = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--one", case, "--length", str(args.length), "--batch", str(args.batch)]
        out = subprocess.run([*cmd, "--top-k", str(args.top_k)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    header = ("latents", "tokens", "contexts", "seconds", "tokens_per_s", "contexts_per_s", "peak_rss_mib")
    print(" | ".join(f"{h:>14}" for h in header))
    for row in rows:
        print(" | ".join(f"{row[h]:>14}" for h in header))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    RESULTS.write_text(json.dumps({"machine": machine, "cases": rows}, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
