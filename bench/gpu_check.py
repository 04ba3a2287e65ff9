"""The GPU check: on one CUDA GPU, label the demo with MiniLM through the real Ray path, then time a ~1B-parameter
random Llama discriminator in bfloat16 with and without its prefix cache. Prints one table, writes
bench/results/gpu_check.json. Run through bench/gpu_check.sh, which makes a CUDA environment first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.engine_speed import causal_arm  # noqa: E402
from pipeline import driver  # noqa: E402
from pipeline.config import DEMO_CONFIG, RunConfig  # noqa: E402
from pipeline.query import open_run  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gpu_check.json"


def demo_on_gpu(out: str, features: str) -> dict:
    """The demo config through driver.run: Ray gives each actor the GPU, MiniLM harvests and labels there."""
    config = RunConfig.from_yaml(DEMO_CONFIG, out=out, features=features, gpus_per_actor=1)
    t0 = time.perf_counter()
    result = driver.run(config)
    seconds = time.perf_counter() - t0
    run = open_run(out)
    [(ok, median)] = run.sql("SELECT count(*), median(score) FROM labels WHERE status = 'ok'").fetchall()
    return {
        "arm": "demo, MiniLM, float32 (harvest + label)",
        "features": result.features,
        "labeled_ok": ok,
        "seconds": round(seconds, 1),
        "harvest_seconds": round(result.seconds.get("harvest", 0), 1),
        "label_seconds": round(result.seconds.get("label", 0), 1),
        "features_per_s": round(result.features / result.seconds["label"], 2),
        "median_heldout_auroc": round(median, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", default="0-511", help="demo latents to label")
    parser.add_argument("--llama-features", type=int, default=16)
    parser.add_argument("--llama-examples", type=int, default=64)
    parser.add_argument("--llama-chunk", type=int, default=512, help="(feature, example) pairs per forward pass")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: this check needs one (bench/gpu_check.sh sets up the environment)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        demo = demo_on_gpu(str(Path(tmp) / "demo"), args.features)
    llama = causal_arm("1b", "cuda", torch.bfloat16, args.llama_features, args.llama_examples, args.llama_chunk, 5)
    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "demo": demo,
        "llama_1b": llama,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print()
    print(f"GPU check on {result['gpu']} (torch {result['torch']}), {result['seconds']} s in all")
    memory = llama.get("max_memory_gib", {})
    rows = [
        ("arm", "features/s", "step s cached", "step s full", "speed-up", "GPU GiB", "AUROC"),
        (demo["arm"], demo["features_per_s"], "", "", "", "", demo["median_heldout_auroc"]),
        (
            f"random Llama {llama['parameters'] / 1e9:.2f}B, bfloat16",
            llama["features_per_s_cached"],
            llama["step_seconds_cached"],
            llama["step_seconds_full_prompt"],
            f"{llama['cache_speedup']}x",
            memory.get("cached", ""),
            "",
        ),
    ]
    for row in rows:
        print("{:<44} {:>10} {:>13} {:>11} {:>8} {:>8} {:>6}".format(*row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
