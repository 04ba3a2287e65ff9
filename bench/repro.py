"""The paper's reproduction set: label the five known-meaning features with each optimiser mode.

HF_HUB_OFFLINE=1 python bench/repro.py [--steps N] [--template T] [--namer none|smollm2|discriminator]
    [--discriminator smollm2 --settings st-gumbel:1]

Prints a table of label, held-out AUROC and whether the label names the concept, per feature and
mode, and saves bench/results/repro.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.discriminators import load_discriminator  # noqa: E402
from workers.labeler import Labeler  # noqa: E402
from workers.namers import DEFAULT_NAMER, load_namer  # noqa: E402
from workers.optimiser import OptimiserConfig  # noqa: E402
from workers.vocab import label_vocab, label_words  # noqa: E402

REPRO = ROOT / "data" / "repro"
SETTINGS = [("soft", 1), ("st-gumbel", 1), ("exhaustive", 1), ("st-gumbel", 2)]


def load_repro():
    """The examples table and the concepts with their accepted labels."""
    concepts = json.loads((REPRO / "concepts.json").read_text())
    return pq.read_table(REPRO / "features.parquet"), concepts


def subsample(table: pa.Table, per_feature: int, seed: int = 0) -> pa.Table:
    """At most `per_feature` rows of each feature, a seeded sample keeping its share of active rows."""
    rng = np.random.default_rng(seed)
    fid = table.column("feature_id").to_numpy()
    active = table.column("activation").to_numpy() > 0
    keep = []
    for f in np.unique(fid):
        rows = np.flatnonzero(fid == f)
        if len(rows) <= per_feature:
            keep.extend(rows)
            continue
        n_active = round(per_feature * active[rows].mean())
        for cls, n in ((True, n_active), (False, per_feature - n_active)):
            members = rows[active[rows] == cls]
            keep.extend(rng.choice(members, min(n, len(members)), replace=False))
    return table.take(sorted(keep))


def named(label: str, accept: list[str]) -> bool:
    """Whether a (possibly multi-word) label names the concept: one of its words is accepted."""
    return any(word in accept for word in label.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=OptimiserConfig.steps)
    parser.add_argument("--template", default=None, help="discriminator template (default: the discriminator's)")
    parser.add_argument("--readout", default=None, help="embedding readout (default: the discriminator's)")
    parser.add_argument("--discriminator", default="minilm", help="discriminator model (default: minilm)")
    parser.add_argument("--namer", default=DEFAULT_NAMER, help="namer (none: the search alone)")
    parser.add_argument(
        "--settings",
        default=",".join(f"{m}:{k}" for m, k in SETTINGS),
        help="comma-separated MODE:K to run (default: all four)",
    )
    parser.add_argument("--examples-per-feature", type=int, default=None, help="a seeded sample of each feature's")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "repro.json"))
    args = parser.parse_args()
    table, concepts = load_repro()
    if args.examples_per_feature:
        table = subsample(table, args.examples_per_feature)
    options = {k: v for k, v in (("template", args.template), ("readout", args.readout)) if v}
    disc = load_discriminator(args.discriminator, **options)
    vocab = label_vocab(disc.tokenizer)
    namer = load_namer(args.namer, label_words(disc.tokenizer, vocab), discriminator=disc)
    results = []
    settings = [(m, int(k)) for m, k in (item.split(":") for item in args.settings.split(","))]
    for mode, k in settings:
        t0 = time.perf_counter()
        labeler = Labeler(disc, vocab, OptimiserConfig(mode=mode, label_tokens=k, steps=args.steps), namer=namer)
        rows = {r["feature_id"]: r for r in labeler.label(table, [c["feature_id"] for c in concepts]).to_pylist()}
        seconds = time.perf_counter() - t0
        for c in concepts:
            r = rows[c["feature_id"]]
            results.append(
                {
                    "mode": mode,
                    "label_tokens": k,
                    "concept": c["concept"],
                    "label": r["label"],
                    "auroc": r["score"],
                    "named": named(r["label"] or "", c["accept"]),
                    "status": r["status"],
                    "label_source": r["label_source"],
                    "alternatives": [a["label"] for a in r["alternatives"]],
                    "proposals": [
                        {"label": p["label"], "train_auroc": p["train_score"], "verified": p["verified"]}
                        for p in r["proposals"]
                    ],
                    "seconds": seconds,
                }
            )
    print(f"{'mode':<11} {'K':>1}  {'concept':<18} {'label':<24} {'AUROC':>6}  named  from    verified proposals")
    for r in results:
        verified = ", ".join(p["label"] for p in r["proposals"] if p["verified"])
        auroc = "-" if r["auroc"] is None else f"{r['auroc']:.3f}"  # none where the held-out split has one class
        print(
            f"{r['mode']:<11} {r['label_tokens']:>1}  {r['concept']:<18} {r['label'] or '-':<24} {auroc:>6}  "
            f"{'yes' if r['named'] else 'no ':<5}  {r['label_source'] or r['status']:<7} {verified}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "discriminator": args.discriminator,
                "namer": args.namer,
                "steps": args.steps,
                "template": disc.template,
                "readout": getattr(disc, "readout", None),
                "examples_per_feature": args.examples_per_feature,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
