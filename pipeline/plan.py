"""Shard planning: feature ids cut into aligned blocks, one Parquet file per block and table."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.storage import shard_name


@dataclass(frozen=True)
class Shard:
    """The requested features inside block [first, last] of the dictionary."""

    first: int
    last: int
    feature_ids: tuple[int, ...]

    @property
    def name(self) -> str:
        return shard_name(self.first, self.last)


def plan_shards(feature_ids: list[int], shard_size: int) -> list[Shard]:
    """Group sorted feature ids by block of `shard_size`; a block's name depends only on its bounds,
    so examples and labels shards line up and a rerun writes the same names."""
    blocks: dict[int, list[int]] = {}
    for fid in sorted(set(feature_ids)):
        blocks.setdefault(fid // shard_size, []).append(fid)
    return [Shard(b * shard_size, (b + 1) * shard_size - 1, tuple(ids)) for b, ids in sorted(blocks.items())]


def chunks(n_items: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering n_items in pieces of `size`."""
    return [(s, min(s + size, n_items)) for s in range(0, n_items, size)]


def plan_actors(
    actors: int | None, gpus_per_actor: float | None, resources: dict, node_cpus: float
) -> tuple[int, float, float]:
    """(actors, CPUs each, GPUs each) on a cluster with `resources` (Ray's totals) whose largest node has
    `node_cpus` CPUs. GPU actors ask for `gpus_per_actor` each (default: 1 where the cluster has GPUs), one per
    share of the GPUs present unless `actors` says how many: on an autoscaling cluster with no GPU node up yet,
    the requests themselves start the nodes. Otherwise one CPU actor per 2 CPUs."""
    gpus = resources.get("GPU", 0)
    per_actor = (1.0 if gpus else 0.0) if gpus_per_actor is None else gpus_per_actor
    if per_actor > 0:
        # A GPU actor's work is on its GPU; one CPU each keeps the request small enough for any GPU node.
        return actors or max(1, int(gpus // per_actor)), 1.0, per_actor
    cpus = resources.get("CPU", 1)
    n = actors or max(1, int(cpus // 2))
    # An actor lives on one node: never ask for more CPUs than the largest node has.
    return n, max(1.0, min(cpus // n, node_cpus)), 0.0
