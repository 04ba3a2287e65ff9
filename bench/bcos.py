"""B-cos against post-hoc explanations, and all three classifier families side by side, on the shipped datasets.

HF_HUB_OFFLINE=1 python bench/bcos.py [--out runs/bcos-bench] [--texts 200] [--pairs 100] [--ig-steps 20]

For data/classify/wordnet_glosses.parquet and data/classify/fortunes.parquet: `toklabel bcos train` with every
default (the B-cos MiniLM and the conventional MiniLM, on the probe's split; a finished training under --out is
reused), then on a seeded sample of --texts test texts the faithfulness of four explanations, each of its own
model's predicted class: the B-cos model's contributions, and Integrated Gradients (--ig-steps), input x gradient
and last-layer [CLS] attention on the conventional model (Captum for the first two). Comprehensiveness and
sufficiency: the mean over masking the top 10..90% of tokens with [MASK]; the sequence pointing game: --pairs
pairs of test texts of two classes, each classified correctly with p >= --confidence by both models, joined
into one input (each cut to the training length), and each segment's class explained. The SAE probe's scores
come from bench/results/probe.json (bench/probe.py, same split). Prints a table; writes bench/results/bcos.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.bcos import TrainConfig, load_model, read_bcos, train  # noqa: E402
from pipeline.driver import connect  # noqa: E402
from pipeline.probe import SHIPPED  # noqa: E402
from pipeline.progress import Progress  # noqa: E402
from workers.bcos import METHODS, concatenate, contributions, encode, explain, faithfulness, pointing_game  # noqa: E402

DATASETS = ("wordnet_glosses", "fortunes")


def pairs_of(test: list[dict], n: int, confidence: float, seed: int) -> list[list[dict]]:
    """Up to n pairs of test texts of different classes, each classified correctly with p >= confidence by both
    models; seeded, each text used once."""
    sure = [
        r
        for r in test
        if r["bcos_class"] == r["conventional_class"] == r["label"]
        and min(r["bcos_probability"], r["conventional_probability"]) >= confidence
    ]
    order = np.random.default_rng(seed).permutation(len(sure))
    pool, pairs = [sure[i] for i in order], []
    while pool and len(pairs) < n:
        first = pool.pop(0)
        other = next((j for j, r in enumerate(pool) if r["label"] != first["label"]), None)
        if other is None:
            break
        pairs.append([first, pool.pop(other)])
    return pairs


def evaluate(name: str, uri: str, args) -> dict:
    """Faithfulness and the pointing game of every method on one trained dataset."""
    models = {flavour: load_model(uri, flavour) for flavour in ("bcos", "conventional")}
    tokenizer, config = models["bcos"][1], models["bcos"][2]
    classes, length = config["classes"], config["max_length"]
    _, _, table = read_bcos(uri)
    test = table.to_pylist()
    rng = np.random.default_rng(args.seed)
    sample = [test[i] for i in sorted(rng.choice(len(test), min(args.texts, len(test)), replace=False))]
    ids, mask = encode(tokenizer, [r["text"] for r in sample], length)
    pairs = pairs_of(test, args.pairs, args.confidence, args.seed)
    joined = concatenate(tokenizer, [[r["text"] for r in p] for p in pairs], 2 * (length - 2) + 2)
    out = {"texts": len(sample), "pairs": len(pairs), "methods": {}}
    # The exactness of B-cos contributions on the real model (float32).
    bcos = models["bcos"][0]
    target = torch.tensor([classes.index(r["bcos_class"]) for r in sample])
    contrib, logit = contributions(bcos, ids, mask, target)
    out["max_relative_sum_error"] = float(((contrib.sum(1) - logit).abs() / logit.abs()).max())
    progress = Progress(len(METHODS) * (len(sample) + 2 * len(pairs)), name, "explanations")
    for method, spec in METHODS.items():
        t0 = time.perf_counter()
        model = models[spec.model][0]
        column = f"{spec.model}_class"
        target = torch.tensor([classes.index(r[column]) for r in sample])
        attr = explain(method, model, ids, mask, target, tokenizer, steps=args.ig_steps)
        scores = faithfulness(model, ids, mask, attr, tokenizer)
        progress.update(len(sample))
        pointing = []
        for segment in range(2):
            target = torch.tensor([classes.index(p[segment]["label"]) for p in pairs])
            attr = explain(method, model, joined[0], joined[1], target, tokenizer, steps=args.ig_steps)
            pointing.append(pointing_game(attr, joined[2], segment))
            progress.update(len(pairs))
        out["methods"][method] = {
            "model": spec.model,
            "comprehensiveness": float(scores["comprehensiveness"].mean()),
            "sufficiency": float(scores["sufficiency"].mean()),
            "comprehensiveness_by_level": scores["comprehensiveness_by_level"].round(4).tolist(),
            "sufficiency_by_level": scores["sufficiency_by_level"].round(4).tolist(),
            "pointing_game": float(torch.cat(pointing).mean()) if pairs else None,
            "seconds": time.perf_counter() - t0,
        }
    return out


def probe_rows(name: str, probes: dict) -> list[dict]:
    """The SAE probe chosen by CV, and the hidden-state and TF-IDF baselines, from bench/results/probe.json."""
    p = probes.get(name)
    if not p:
        return []
    chosen = p["interpreted"]
    rows = []
    for r in p["results"]:
        key = (r["method"], r["pooling"], r["binarised"])
        if key == (chosen["method"], chosen["pooling"], chosen["binarised"]):
            label = f"SAE probe (sae {r['pooling']}{' binarised' if r['binarised'] else ''}, best CV)"
        elif r["method"] in ("hidden-mean", "tfidf"):
            label = {"hidden-mean": "hidden state (mean) probe", "tfidf": "TF-IDF 1-2-grams probe"}[r["method"]]
        else:
            continue
        rows.append({"classifier": label, "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "bcos-bench"), help="folder of the trained models")
    parser.add_argument("--texts", type=int, default=200, help="test texts per dataset for faithfulness")
    parser.add_argument("--pairs", type=int, default=100, help="pairs per dataset for the pointing game")
    parser.add_argument("--ig-steps", type=int, default=20, help="Integrated Gradients steps")
    parser.add_argument("--confidence", type=float, default=0.7, help="pointing game: p of each text's class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", default=str(ROOT / "bench" / "results" / "probe.json"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "bcos.json"))
    args = parser.parse_args()

    import ray

    torch.set_num_threads(1)  # the machine's other core trains or is someone else's
    probes = json.loads(Path(args.probe).read_text())["probes"] if Path(args.probe).is_file() else {}
    results = {}
    connect()
    try:
        for name in DATASETS:
            t0 = time.perf_counter()
            config = TrainConfig(dataset=str(SHIPPED / f"{name}.parquet"), out=f"{args.out}/{name}")
            manifest = train(config)
            trained = time.perf_counter() - t0
            results[name] = {
                "settings": manifest["settings"],
                "n_test": manifest["n_test"],
                "models": manifest["results"],
                "training": manifest["training"],
                "train_seconds": trained,
                "probe": probe_rows(name, probes),
                **evaluate(name, config.out, args),
                "explain_seconds": time.perf_counter() - t0 - trained,
            }
    finally:
        ray.shutdown()

    print(f"{'dataset':<16} {'classifier':<46} {'acc':>6} {'F1':>6}  {'explanation':<21} ", end="")
    print(f"{'comp':>6} {'suff':>6} {'point':>6}")
    for name, r in results.items():
        scores = {m["method"]: m for m in r["models"]}
        for method, f in r["methods"].items():
            model = scores[f["model"]]
            classifier = "B-cos MiniLM (B = 1.5)" if f["model"] == "bcos" else "MiniLM fine-tuned (conventional)"
            point = f"{f['pointing_game']:.3f}" if f["pointing_game"] is not None else "–"
            print(
                f"{name:<16} {classifier:<46} {model['accuracy']:>6.3f} {model['macro_f1']:>6.3f}  {method:<21} "
                f"{f['comprehensiveness']:>6.3f} {f['sufficiency']:>6.3f} {point:>6}"
            )
        for p in r["probe"]:
            print(f"{name:<16} {p['classifier']:<46} {p['accuracy']:>6.3f} {p['macro_f1']:>6.3f}  {'–':<21}")
        print(
            f"{name}: {r['texts']} texts, {r['pairs']} pairs; B-cos contributions sum to the logit within "
            f"{r['max_relative_sum_error']:.1e} (relative, float32); training {r['train_seconds']:.0f} s, "
            f"explanations {r['explain_seconds']:.0f} s"
        )
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    payload = {"texts": args.texts, "pairs": args.pairs, "ig_steps": args.ig_steps, "confidence": args.confidence}
    Path(args.results).write_text(json.dumps({**payload, "datasets": results}, indent=2) + "\n")
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
