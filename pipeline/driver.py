"""The driver: check inputs, harvest examples, label shards on Ray actors, write the manifest."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import pyarrow.dataset as ds
import ray
import yaml

from pipeline.actors import HarvestActor, LabelActor
from pipeline.config import RunConfig, parse_features
from pipeline.plan import Shard, chunks, plan_shards
from pipeline.progress import Progress
from pipeline.storage import CONFIG, MANIFEST, RunStore
from workers.corpus import read_corpus
from workers.harvest import Harvest, examples_table, latents_table, negative_pool
from workers.labeler import check_examples
from workers.sae import load_sae


@dataclass
class RunResult:
    uri: str
    features: int
    seconds: dict[str, float] = field(default_factory=dict)
    labeled: int = 0


def connect(address: str | None = None) -> bool:
    """Join the Ray cluster at `address`, or start a local one; True when this call started Ray."""
    if ray.is_initialized():
        return False
    kwargs = {"address": address} if address else {"include_dashboard": False}
    ray.init(logging_level="WARNING", log_to_driver=False, configure_logging=True, **kwargs)
    return True


def _actor_count(requested: int | None) -> tuple[int, float, float]:
    """(actors, CPUs each, GPUs each): one per GPU where there are GPUs, else one per 2 CPUs."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = ray.cluster_resources().get("CPU", 1)
    n = requested or gpus or max(1, int(cpus // 2))
    return n, max(1.0, cpus // n), 1.0 if gpus else 0.0


def prepare_store(config: RunConfig) -> RunStore:
    """The run's storage; refuse to mix results of another config into an existing run."""
    store = RunStore(config.out)
    if store.exists(CONFIG):
        source = f"{config.out}/{CONFIG}"
        old = RunConfig.from_dict(yaml.safe_load(store.read_text(CONFIG)), source=source)
        if old.hash() != config.hash():
            raise ValueError(
                f"{config.out} already holds a run with another configuration (hash {old.hash()}, "
                f"this one {config.hash()}); choose another --out or delete the old run"
            )
    store.write_text(CONFIG, config.to_yaml())
    return store


def run(config: RunConfig, address: str | None = None) -> RunResult:
    """Harvest, label and score as `config` says; resumes from shards already in storage."""
    for key in ("sae", "corpus"):
        if not getattr(config, key):
            raise ValueError(f"config key {key!r} is required to run (harvest needs an SAE and a corpus)")
    t0 = time.perf_counter()
    # Everything cheap and checkable happens before Ray starts or a model loads.
    sae = load_sae(config.sae)
    model = config.model or sae.cfg.model_name
    hook = config.hook or sae.cfg.hook_name
    if not model or not hook:
        raise ValueError(f"config: set 'model' and 'hook'; the SAE at {config.sae} does not name them")
    texts = read_corpus(config.corpus, config.text_column, config.max_contexts)
    feature_ids = parse_features(config.features, sae.cfg.d_sae)
    shards = plan_shards(feature_ids, config.shard_size)
    store = prepare_store(config)
    started = connect(address)
    try:
        result = RunResult(config.out, len(feature_ids))
        missing = [s for s in shards if s.name not in set(store.list("examples"))]
        if missing:
            h = harvest(config, model, hook, texts)
            write_examples(store, h, missing, texts, config)
        result.seconds["harvest"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        result.labeled = label_shards(store, config, shards)
        result.seconds["label"] = time.perf_counter() - t1
        write_manifest(store, config, shards, result, extra={"model": model, "hook": hook, "contexts": len(texts)})
        return result
    finally:
        if started:
            ray.shutdown()


def harvest(config: RunConfig, model: str, hook: str, texts: list[str]) -> Harvest:
    """Per-latent top-k and pool activations over the corpus, sharded by chunk across Ray actors."""
    n_actors, cpus, gpus = _actor_count(config.actors)
    actors = [
        HarvestActor.options(num_cpus=cpus, num_gpus=gpus).remote(
            model, hook, config.sae, config.context_length, config.top_k, config.harvest_batch, cpus
        )
        for _ in range(n_actors)
    ]
    pool = negative_pool(len(texts), config.negative_pool, config.seed)
    pieces = chunks(len(texts), config.harvest_chunk)
    progress = Progress(len(texts), "harvest", "contexts")
    pending = {}
    queue = list(pieces)
    total: Harvest | None = None
    for actor in actors:
        for _ in range(2):  # two chunks in flight per actor keep it busy while the driver merges
            if queue:
                start, stop = queue.pop(0)
                pending[actor.harvest.remote(texts[start:stop], start, pool)] = (actor, stop - start)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        actor, n = pending.pop(ref)
        part = ray.get(ref)
        total = part if total is None else total.merge(part)
        progress.update(n)
        if queue:
            start, stop = queue.pop(0)
            pending[actor.harvest.remote(texts[start:stop], start, pool)] = (actor, stop - start)
    for actor in actors:
        ray.kill(actor)
    return total


def write_examples(store: RunStore, h: Harvest, shards: list[Shard], texts: list[str], config: RunConfig) -> None:
    for shard in shards:
        ids = list(shard.feature_ids)
        store.write_table("latents", shard.name, latents_table(h, ids))
        store.write_table("examples", shard.name, examples_table(h, ids, texts, config.random_negatives, config.seed))


def label_shards(store: RunStore, config: RunConfig, shards: list[Shard]) -> int:
    """Label every shard without a labels file, on a pool of actors; the features now labeled."""
    done = set(store.list("labels"))
    todo = [s for s in shards if s.name not in done]
    total = sum(len(s.feature_ids) for s in shards)
    if not todo:
        return total
    n_actors, cpus, gpus = _actor_count(config.actors)
    n_actors = min(n_actors, len(todo))
    actors = [
        LabelActor.options(num_cpus=cpus, num_gpus=gpus).remote(
            config.out,
            config.discriminator,
            config.template,
            config.optimiser_config(),
            config.features_per_batch,
            config.test_fraction,
            config.hash(),
            cpus,
        )
        for _ in range(n_actors)
    ]
    progress = Progress(sum(len(s.feature_ids) for s in todo), "label", "features")
    queue = list(todo)
    pending = {}
    for actor in actors:
        pending[actor.label_shard.remote(queue.pop(0))] = actor
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        actor = pending.pop(ref)
        info = ray.get(ref)
        progress.update(info["rows"])
        if queue:
            pending[actor.label_shard.remote(queue.pop(0))] = actor
    for actor in actors:
        ray.kill(actor)
    return total


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("toklabel", "torch", "transformers", "ray", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def write_manifest(store: RunStore, config: RunConfig, shards: list[Shard], result: RunResult, extra: dict) -> None:
    """The manifest, written last: its presence marks the run complete."""
    tables = {
        t: {n: ds.dataset(store.path(f"{t}/{n}"), filesystem=store.fs).count_rows() for n in store.list(t)}
        for t in ("examples", "labels", "latents")
    }
    manifest = {
        "config_hash": config.hash(),
        "shards": [s.name for s in shards],
        "features": result.features,
        "tables": tables,
        "seconds": result.seconds,
        "versions": _versions(),
        "command": " ".join(sys.argv),
        **extra,
    }
    store.write_json(MANIFEST, manifest)


def label_examples(examples_path: str, config: RunConfig, address: str | None = None) -> RunResult:
    """Label the features of a user's examples table (Parquet file or folder); the same run layout."""
    t0 = time.perf_counter()
    table = ds.dataset(examples_path, format="parquet").to_table()
    check_examples(table)
    feature_ids = sorted(set(table.column("feature_id").to_pylist()))
    shards = plan_shards(feature_ids, config.shard_size)
    store = prepare_store(config)
    fids = table.column("feature_id").to_numpy()
    for shard in shards:
        if shard.name not in set(store.list("examples")):
            store.write_table("examples", shard.name, table.filter((fids >= shard.first) & (fids <= shard.last)))
    started = connect(address)
    try:
        result = RunResult(config.out, len(feature_ids))
        result.labeled = label_shards(store, config, shards)
        result.seconds["label"] = time.perf_counter() - t0
        write_manifest(store, config, shards, result, extra={"examples": str(examples_path)})
        return result
    finally:
        if started:
            ray.shutdown()
