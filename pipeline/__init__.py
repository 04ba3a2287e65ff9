"""Driver side of toklabel: config, shard planning, Ray orchestration, storage, query, CLI."""

from pipeline.query import open_run

__all__ = ["open_run"]
