"""Probe the shipped classification datasets with a labeled run: SAE probes against the baselines.

HF_HUB_OFFLINE=1 python bench/probe.py [--run runs/demo-all] [--out runs/probe-bench]

The run should have labels for every latent (`toklabel run data/configs/demo.yaml --features all --out
runs/demo-all`), so that every top feature can be read by its label. Runs `toklabel probe` on
data/classify/wordnet_glosses.parquet and data/classify/fortunes.parquet (one local Ray for both), prints
macro F1 per method, pooling and binarisation, and per class how many of the interpreted probe's top-10
features carry a label that names the class; saves bench/results/probe.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.driver import connect  # noqa: E402
from pipeline.probe import SHIPPED, ProbeConfig, probe, read_probe  # noqa: E402

DATASETS = ("wordnet_glosses", "fortunes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "demo-all"), help="labeled run (default: runs/demo-all)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "probe-bench"), help="folder of the probes")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "probe.json"))
    args = parser.parse_args()

    import ray

    connect()
    probes = {}
    try:
        for name in DATASETS:
            t0 = time.perf_counter()
            config = ProbeConfig(run=args.run, dataset=str(SHIPPED / f"{name}.parquet"), out=f"{args.out}/{name}")
            manifest, _ = probe(config)
            _, _, results, top = read_probe(config.uri)
            shown = [r for r in top.to_pylist() if r["interpreted"]]
            probes[name] = {
                "texts": manifest["texts"],
                "classes": manifest["class_counts"],
                "n_test": manifest["n_test"],
                "results": results.to_pylist(),
                "interpreted": manifest["interpreted"],
                "named": manifest["named"],
                "top_features": len(shown),
                "unlabeled_top_features": sum(r["label"] is None for r in shown),
                "seconds": time.perf_counter() - t0,
                "probe_seconds": manifest["seconds"],
            }
    finally:
        ray.shutdown()

    print(f"{'method':<12} {'pooling':<7} {'binarised':<9} " + " ".join(f"{n:>16}" for n in DATASETS))
    rows = probes[DATASETS[0]]["results"]
    for i, r in enumerate(rows):
        f1 = " ".join(f"{probes[n]['results'][i]['macro_f1']:>16.3f}" for n in DATASETS)
        binarised = "" if r["binarised"] is None else "yes" if r["binarised"] else "no"
        print(f"{r['method']:<12} {r['pooling'] or '':<7} {binarised:<9} {f1}")
    for name, p in probes.items():
        chosen = p["interpreted"]
        named = p["named"]
        total = sum(n for n in named.values() if n is not None)
        print(
            f"\n{name}: interpreted sae {chosen['pooling']} binarised={chosen['binarised']}; top-10 labels naming "
            f"their class: {total} of {p['top_features']} ({p['unlabeled_top_features']} without a label)"
        )
        for c, n in named.items():
            print(f"  {c:<20} {n}")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"run": args.run, "probes": probes}, indent=2) + "\n")
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
