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
