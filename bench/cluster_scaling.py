"""Labeling throughput with 1, 2 and 4 actors on a simulated multi-node Ray cluster (ray.cluster_utils.Cluster).

Each worker node is a separate raylet with 1 CPU, all on this machine: the numbers show the orchestration
(sharding, actor start-up, storage round trips) working across nodes, and scale only as far as the machine's
real cores go. The workload is the synthetic examples table and tiny discriminator of bench/driver_memory.py.

    .venv/bin/python bench/cluster_scaling.py [--features 512] [--actors 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.driver_memory import RESULTS, tiny_discriminator, write_examples  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=512)
    p.add_argument("--examples-per-feature", type=int, default=16)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from pipeline import driver
    from pipeline.config import RunConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        examples = tmp / "examples.parquet"
        write_examples(examples, args.features, args.examples_per_feature)
        disc = tiny_discriminator(tmp / "tiny-bert")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(max(args.actors)):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        try:
            for n in args.actors:
                config = RunConfig(
                    out=str(tmp / f"run-{n}"),
                    discriminator=disc,
                    steps=args.steps,
                    shard_size=args.shard_size,
                    features_per_batch=args.shard_size,
                    actors=n,
                )
                t0 = time.perf_counter()
                result = driver.label_examples(str(examples), config)
                seconds = time.perf_counter() - t0
                rows.append(
                    {
                        "actors": n,
                        "nodes": max(args.actors),
                        "features": result.labeled,
                        "seconds": round(seconds, 1),
                        "features_per_s": round(result.labeled / seconds, 2),
                    }
                )
        finally:
            ray.shutdown()
            cluster.shutdown()
    base = rows[0]["features_per_s"]
    for r in rows:
        r["speedup"] = round(r["features_per_s"] / base, 2)
    record = {"cpu_cores": os.cpu_count(), "steps": args.steps, "shard_size": args.shard_size, "runs": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster_scaling.json").write_text(json.dumps(record, indent=2))
    print(f"{'actors':>6} {'features':>8} {'seconds':>8} {'features/s':>10} {'speedup':>7}")
    for r in rows:
        print(f"{r['actors']:>6} {r['features']:>8} {r['seconds']:>8} {r['features_per_s']:>10} {r['speedup']:>7}")
    print(f"({os.cpu_count()} CPU cores on this machine; simulated nodes share them)")


if __name__ == "__main__":
    main()
