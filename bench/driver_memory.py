"""Driver memory at scale: label many features (default 65,536) with a tiny discriminator; the driver's peak RSS.

The examples table is built synthetically (sorted by feature_id, as harvest writes it) and labeled through the
`toklabel label` path; the discriminator is a one-layer BERT with random weights and a small word vocabulary,
saved to a temporary folder. The driver must stream: it never holds all examples or all labels, so its RSS
stays flat as features grow.

    .venv/bin/python bench/driver_memory.py [--features 65536] [--steps 2]
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

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
WORDS = "river stone music engine garden winter market doctor ocean letter bridge forest candle silver".split()


def write_examples(path: Path, n_features: int, per_feature: int) -> int:
    """A sorted examples table written in row groups: half the rows active (the feature's word), half not."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    block = 4096  # features per row group
    rows = 0
    with pq.ParquetWriter(
        path, pa.schema([("feature_id", pa.int64()), ("text", pa.string()), ("activation", pa.float32())])
    ) as w:
        for first in range(0, n_features, block):
            fids = np.repeat(np.arange(first, min(first + block, n_features)), per_feature)
            k = np.tile(np.arange(per_feature), len(fids) // per_feature)
            active = k < per_feature // 2
            texts = [
                f"the {WORDS[(f + (0 if a else 1 + j % 5)) % len(WORDS)]} of day {j}"
                for f, j, a in zip(fids.tolist(), k.tolist(), active.tolist())
            ]
            w.write_table(
                pa.table({"feature_id": fids, "text": texts, "activation": np.where(active, 1.0, 0.0).astype("f4")})
            )
            rows += len(fids)
    return rows


def tiny_discriminator(folder: Path, n_words: int = 512) -> str:
    """A one-layer BERT with random weights and a word-level vocabulary of the examples' words plus `n_words`
    three-letter fillers, saved as a model folder: each optimiser step is cheap, the driver's work is not."""
    from itertools import product
    from string import ascii_lowercase

    from transformers import BertConfig, BertModel, BertTokenizerFast

    from workers.discriminators.embedding import save_sentence_encoder_files

    fillers = ["".join(p) for p in product(ascii_lowercase, repeat=3)][:n_words]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "of", "day", *WORDS, *fillers]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    save_sentence_encoder_files(folder)
    return str(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=65536)
    p.add_argument("--examples-per-feature", type=int, default=16)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--limit-gib", type=float, default=1.0)
    args = p.parse_args()

    from pipeline import driver
    from pipeline.config import RunConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        examples = tmp / "examples.parquet"
        # Built in a child process, so that building it does not count towards the driver's peak.
        code = (
            "import sys; from pathlib import Path; from bench.driver_memory import write_examples; "
            "print(write_examples(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))"
        )
        command = [sys.executable, "-c", code, str(examples), str(args.features), str(args.examples_per_feature)]
        rows = int(subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout)
        disc = tiny_discriminator(tmp / "tiny-bert")
        config = RunConfig(
            out=str(tmp / "run"),
            discriminator=disc,
            steps=args.steps,
            shard_size=args.shard_size,
            features_per_batch=1024,
            actors=args.actors,
        )
        t0 = time.perf_counter()
        result = driver.label_examples(str(examples), config)
        seconds = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux
    record = {
        "features": args.features,
        "examples_rows": rows,
        "steps": args.steps,
        "shard_size": args.shard_size,
        "actors": args.actors,
        "labeled": result.labeled,
        "failed_shards": len(result.failed_shards),
        "seconds": round(seconds, 1),
        "features_per_s": round(result.labeled / seconds, 1),
        "driver_peak_rss_gib": round(peak_gib, 3),
        "limit_gib": args.limit_gib,
        "under_limit": peak_gib < args.limit_gib,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "driver_memory.json").write_text(json.dumps(record, indent=2))
    width = max(map(len, record))
    for k, v in record.items():
        print(f"{k:<{width}}  {v}")
    if not record["under_limit"]:
        sys.exit(f"driver peak RSS {peak_gib:.2f} GiB is over the {args.limit_gib} GiB limit")


if __name__ == "__main__":
    main()
