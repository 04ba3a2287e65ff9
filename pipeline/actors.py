"""Ray actors: each loads its models once and then serves many chunks or shards."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from pipeline.config import DTYPES
from pipeline.plan import Shard
from pipeline.storage import RunStore
from workers.discriminators import load_discriminator
from workers.harvest import Harvest, Harvester
from workers.labeler import Labeler
from workers.models import default_device
from workers.namers import load_namer
from workers.optimiser import OptimiserConfig
from workers.sae import load_sae
from workers.subject import SubjectModel
from workers.vocab import label_vocab, label_words


def _use_cpus(n: float) -> None:
    # One torch thread per CPU Ray granted, so actors sharing a node do not oversubscribe it.
    torch.set_num_threads(max(1, int(n)))


@ray.remote
class HarvestActor:
    """Subject model + SAE; harvests corpus chunks."""

    def __init__(
        self,
        model: str,
        hook: str,
        dtype: str,
        sae_path: str,
        context_length: int,
        top_k: int,
        batch_size: int,
        cpus: float,
        sample_size: int = 0,
        seed: int = 0,
    ):
        _use_cpus(cpus)
        device = default_device()
        sae = load_sae(sae_path, device, model_name=model, hook_name=hook)
        subject = SubjectModel.load(model, hook, device, DTYPES[dtype])
        self.harvester = Harvester(subject, sae, context_length, top_k, batch_size, sample_size, seed)

    def harvest(self, texts: list[str], first_id: int, pool: np.ndarray) -> Harvest:
        return self.harvester.harvest(texts, first_id, pool)


@ray.remote
class LabelActor:
    """Discriminator + optimiser; labels shards read from and written to the run's storage."""

    def __init__(
        self,
        uri: str,
        discriminator: str,
        options: dict,
        optimiser: OptimiserConfig,
        namer: str,
        patterns: tuple[str, ...],
        batch_size: int,
        test_fraction: float,
        config_hash: str,
        cpus: float,
    ):
        _use_cpus(cpus)
        self.store = RunStore(uri)
        disc = load_discriminator(discriminator, device=default_device(), **options)
        vocab = label_vocab(disc.tokenizer)
        namer_model = load_namer(
            namer, label_words(disc.tokenizer, vocab), patterns, disc, device=disc.device, dtype=options.get("dtype")
        )
        self.labeler = Labeler(disc, vocab, optimiser, batch_size, test_fraction, config_hash, namer_model)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def label_shard(self, shard: Shard) -> dict:
        t0 = time.perf_counter()
        examples = self.store.read_table("examples", shard.name)
        examples = examples.filter(pc.is_in(examples["feature_id"], value_set=pa.array(shard.feature_ids, pa.int64())))
        table = self.labeler.label(examples, list(shard.feature_ids))
        seconds = time.perf_counter() - t0
        # Where and how long each shard ran, kept with its rows (the labeler itself knows nothing of shards).
        n = table.num_rows
        table = (
            table.append_column("shard", pa.array([shard.name] * n, pa.string()))
            .append_column("worker", pa.array([self.worker] * n, pa.string()))
            .append_column("shard_seconds", pa.array([seconds] * n, pa.float64()))
        )
        self.store.write_table("labels", shard.name, table)
        status = table.column("status").to_pylist()
        return {
            "shard": shard.name,
            "rows": n,
            "ok": status.count("ok"),
            "dead": status.count("dead"),
            "failed": status.count("failed"),
            "seconds": seconds,
            "worker": self.worker,
        }
