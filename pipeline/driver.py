"""The driver: check inputs, harvest examples, label shards on Ray actors, write the manifest."""

from __future__ import annotations

import platform
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import pyarrow.dataset as ds
import ray
import yaml

from pipeline.actors import HarvestActor, LabelActor
from pipeline.config import RunConfig, parse_features
from pipeline.plan import Shard, chunks, plan_actors, plan_shards
from pipeline.progress import Progress
from pipeline.storage import CONFIG, FAILURES, MANIFEST, PLAN, RunStore, storage_env
from workers.corpus import make_contexts, read_corpus
from workers.discriminators import check_discriminator, load_discriminator
from workers.harvest import (
    SAMPLE_OVERSAMPLING,
    Harvest,
    examples_table,
    hard_negative_ids,
    latents_table,
    negative_pool,
)
from workers.labeler import check_examples
from workers.models import load_tokenizer
from workers.namers import check_namer
from workers.sae import load_sae
from workers.subject import check_hook

# A shard whose task died this many times (actor killed, node lost, error) is recorded as failed.
MAX_ATTEMPTS = 4


@dataclass
class RunResult:
    uri: str
    features: int
    seconds: dict[str, float] = field(default_factory=dict)
    labeled: int = 0
    failed_shards: list[str] = field(default_factory=list)


def connect(address: str | None = None) -> bool:
    """Join the Ray cluster at `address`, or start a local one; True when this call started Ray."""
    if ray.is_initialized():
        return False
    kwargs = {"address": address} if address else {"include_dashboard": False}
    ray.init(logging_level="WARNING", log_to_driver=False, configure_logging=True, **kwargs)
    return True


def _actor_count(actors: int | None, gpus_per_actor: float | None) -> tuple[int, float, float]:
    """(actors, CPUs each, GPUs each) for the cluster as it is now (see `plan_actors`)."""
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    return plan_actors(actors, gpus_per_actor, ray.cluster_resources(), node_cpus)


def restartable_actors(actors: int | None, gpus_per_actor: float | None, uri: str) -> tuple[int, float, dict]:
    """(actors, CPUs each, Ray options) for a pool of actors that reach the storage at `uri` and that Ray restarts
    when they die, rerunning their task there (tasks sent while one restarts wait for it)."""
    n, cpus, gpus = _actor_count(actors, gpus_per_actor)
    options = {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "max_restarts": -1,
        "max_task_retries": MAX_ATTEMPTS - 1,
        "runtime_env": {"env_vars": storage_env(uri)},
    }
    return n, cpus, options


def start_failure(err: Exception, role: str) -> RuntimeError | None:
    """The error to stop the run with when `err` says an actor could not even start (bad model, no memory):
    it would fail the same way on every retry. None for other failures."""
    if isinstance(err, ray.exceptions.RayActorError) and err.actor_init_failed:
        cause = str(err).strip().splitlines()[-1]  # the constructor's own error, after Ray's traceback
        return RuntimeError(f"a {role} actor could not start: {cause}")
    return None


def prepare_store(config: RunConfig) -> RunStore:
    """The run's storage, checked writable, and its discriminator, checked loadable; refuse to mix results of
    another config into an existing run.

    Writes nothing but the probe, so a run refused for bad input leaves the location as it was.
    """
    check_discriminator(config.discriminator, config.label_tokens, **config.discriminator_options())
    check_namer(config.namer, config.discriminator, config.patterns)
    store = RunStore(config.out)
    store.check_writable()
    if store.exists(CONFIG):
        source = f"{config.out}/{CONFIG}"
        old = RunConfig.from_dict(yaml.safe_load(store.read_text(CONFIG)), source=source)
        if old.hash() != config.hash():
            raise ValueError(
                f"{config.out} already holds a run with another configuration (hash {old.hash()}, "
                f"this one {config.hash()}); choose another --out or delete the old run"
            )
    return store


def write_plan(store: RunStore, config: RunConfig, shards: list[Shard]) -> None:
    """The config and the shards this run will write, once its inputs passed every check
    (`toklabel status` tells pending from done by the plan)."""
    store.write_text(CONFIG, config.to_yaml())
    plan = {"config_hash": config.hash(), "shards": {s.name: len(s.feature_ids) for s in shards}}
    store.write_json(PLAN, plan)


def run(config: RunConfig, address: str | None = None) -> RunResult:
    """Harvest, label and score as `config` says; resumes from shards already in storage."""
    for key in ("sae", "corpus"):
        if not getattr(config, key):
            raise ValueError(f"config key {key!r} is required to run (harvest needs an SAE and a corpus)")
    t0 = time.perf_counter()
    # Everything cheap and checkable happens before Ray starts or a model loads.
    store = prepare_store(config)
    sae = load_sae(config.sae, model_name=config.model, hook_name=config.hook)
    model = config.model or sae.cfg.model_name
    hook = config.hook or sae.cfg.hook_name
    if not model or not hook:
        raise ValueError(f"config: set 'model' and 'hook'; the SAE at {config.sae} does not name them")
    check_hook(model, hook, sae.cfg.d_in)
    texts = read_corpus(config.corpus, config.text_column, config.max_contexts)
    if config.split_documents or config.min_context_tokens:
        texts = make_contexts(
            texts, load_tokenizer(model), config.context_length, config.split_documents, config.min_context_tokens
        )
    feature_ids = parse_features(config.features, sae.cfg.d_sae)
    shards = plan_shards(feature_ids, config.shard_size)
    write_plan(store, config, shards)
    started = connect(address)
    try:
        result = RunResult(config.out, len(feature_ids))
        written = set(store.list("examples"))
        missing = [s for s in shards if s.name not in written]
        if missing:
            h = harvest(config, model, hook, texts)
            write_examples(store, h, missing, texts, config)
        result.seconds["harvest"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        result.labeled, result.failed_shards = label_shards(store, config, shards)
        result.seconds["label"] = time.perf_counter() - t1
        extra = {"model": model, "hook": hook, "contexts": len(texts), "dead_latents": dead_latents(store)}
        write_manifest(store, config, shards, result, extra)
        return result
    finally:
        if started:
            ray.shutdown()


def harvest(config: RunConfig, model: str, hook: str, texts: list[str]) -> Harvest:
    """Per-latent top-k, quantile sample and pool firing over the corpus, sharded by chunk across Ray actors."""
    n_actors, cpus, gpus = _actor_count(config.actors, config.gpus_per_actor)
    actors = [
        HarvestActor.options(num_cpus=cpus, num_gpus=gpus).remote(
            model,
            hook,
            config.dtype,
            config.sae,
            config.context_length,
            config.top_k,
            config.harvest_batch,
            cpus,
            config.quantile_bins * config.quantile_per_bin * SAMPLE_OVERSAMPLING,
            config.seed,
        )
        for _ in range(n_actors)
    ]
    pool = negative_pool(len(texts), config.negative_pool, config.seed)
    pieces = chunks(len(texts), config.harvest_chunk)
    progress = Progress(len(texts), "harvest", "contexts")
    pending = {}
    queue = deque(pieces)
    total: Harvest | None = None

    def submit(actor) -> None:
        if queue:
            start, stop = queue.popleft()
            pending[actor.harvest.remote(texts[start:stop], start, pool)] = (actor, stop - start)

    for actor in actors:
        for _ in range(2):  # two chunks in flight per actor keep it busy while the driver merges
            submit(actor)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        actor, n = pending.pop(ref)
        part = ray.get(ref)
        total = part if total is None else total.merge(part)
        progress.update(n)
        submit(actor)
    for actor in actors:
        ray.kill(actor)
    return total


def dead_latents(store: RunStore) -> list[int]:
    """Ids of the latents that never fired on the corpus, from the run's latents tables."""
    latents = ds.dataset(store.path("latents"), filesystem=store.fs, format="parquet")
    dead = latents.to_table(columns=["feature_id"], filter=ds.field("n_active") == 0)
    return sorted(dead.column(0).to_pylist())


def write_examples(store: RunStore, h: Harvest, shards: list[Shard], texts: list[str], config: RunConfig) -> None:
    """Per shard: the latents table and the examples (top, quantile, random and optional hard negatives)."""
    embed = None
    if config.hard_negatives:
        embed = load_discriminator("minilm").embed_sentences
    for shard in shards:
        ids = list(shard.feature_ids)
        hard = hard_negative_ids(h, ids, texts, config.hard_negatives, embed) if embed else None
        table = examples_table(
            h, ids, texts, config.random_negatives, config.seed, config.quantile_bins, config.quantile_per_bin, hard
        )
        store.write_table("latents", shard.name, latents_table(h, ids))
        store.write_table("examples", shard.name, table)


def label_shards(store: RunStore, config: RunConfig, shards: list[Shard]) -> tuple[int, list[str]]:
    """Label every shard without a labels file on a pool of actors; (features labeled, failed shards).

    An actor that dies (process killed, node lost) is restarted by Ray, which reruns its shard there. A shard
    whose task still fails (an error, or its actor dying every time) goes back into the queue, up to
    MAX_ATTEMPTS times, then is recorded as failed. Each shard's labels file is written whole under its
    deterministic name, so a rerun shard never doubles its rows.
    """
    done = set(store.list("labels"))
    todo = [s for s in shards if s.name not in done]
    if not todo:
        return sum(len(s.feature_ids) for s in shards), []
    n_actors, cpus, options = restartable_actors(config.actors, config.gpus_per_actor, config.out)
    args = (
        config.out,
        config.discriminator,
        {**config.discriminator_options(), "dtype": config.torch_dtype},
        config.optimiser_config(),
        config.namer,
        config.patterns,
        config.features_per_batch,
        config.test_fraction,
        config.hash(),
        cpus,
    )
    actors = [LabelActor.options(**options).remote(*args) for _ in range(min(n_actors, len(todo)))]
    progress = Progress(sum(len(s.feature_ids) for s in todo), "label", "features")
    queue = deque(todo)
    attempts: Counter[str] = Counter()
    failed: list[str] = []
    pending = {}

    def submit(actor) -> None:
        if queue:
            shard = queue.popleft()
            pending[actor.label_shard.remote(shard)] = (actor, shard)

    for actor in actors:
        submit(actor)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        actor, shard = pending.pop(ref)
        try:
            info = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            stop = start_failure(err, "labeling")
            if stop:
                raise stop from err
            attempts[shard.name] += 1
            reason = str(err).strip().splitlines()[0]
            if attempts[shard.name] < MAX_ATTEMPTS:
                print(f"label: shard {shard.name} lost ({reason}); retrying", file=sys.stderr)
                queue.append(shard)
            else:
                print(f"label: shard {shard.name} failed {MAX_ATTEMPTS} times; giving up: {reason}", file=sys.stderr)
                failed.append(shard.name)
                store.write_json(f"{FAILURES}/{shard.name}.json", {"attempts": MAX_ATTEMPTS, "error": str(err)})
        else:
            store.delete(f"{FAILURES}/{shard.name}.json")
            progress.update(info["rows"])
        submit(actor)
    for actor in actors:
        ray.kill(actor)
    labeled = sum(len(s.feature_ids) for s in shards if s.name not in failed)
    return labeled, failed


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
        "failed_shards": result.failed_shards,
        "tables": tables,
        "seconds": result.seconds,
        "versions": _versions(),
        "command": " ".join(sys.argv),
        **extra,
    }
    store.write_json(MANIFEST, manifest)


def label_examples(examples_path: str, config: RunConfig, address: str | None = None) -> RunResult:
    """Label the features of a user's examples table (Parquet file or folder); the same run layout.

    The table is never read whole: one pass over its feature_id column, then one filtered read per shard
    (fast when the table is sorted by feature_id, as harvest output is: row groups are skipped by their statistics).
    """
    t0 = time.perf_counter()
    dataset = ds.dataset(examples_path, format="parquet")
    check_examples(dataset.schema.empty_table())
    store = prepare_store(config)
    ids: set[int] = set()
    for batch in dataset.to_batches(columns=["feature_id"]):
        ids.update(batch.column(0).unique().to_pylist())
    if not ids:
        raise ValueError(f"examples table {examples_path} has no rows")
    feature_ids = sorted(ids)
    del ids
    shards = plan_shards(feature_ids, config.shard_size)
    write_plan(store, config, shards)
    written = set(store.list("examples"))
    fid = ds.field("feature_id")
    for shard in shards:
        if shard.name not in written:
            part = dataset.to_table(filter=(fid >= shard.first) & (fid <= shard.last))
            check_examples(part)
            store.write_table("examples", shard.name, part)
    started = connect(address)
    try:
        result = RunResult(config.out, len(feature_ids))
        result.labeled, result.failed_shards = label_shards(store, config, shards)
        result.seconds["label"] = time.perf_counter() - t0
        write_manifest(store, config, shards, result, extra={"examples": str(examples_path)})
        return result
    finally:
        if started:
            ray.shutdown()
