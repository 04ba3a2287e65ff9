"""A run's storage: one URI (local directory or s3://bucket/prefix) holding its tables and manifest.

Layout: URI/config.yaml, URI/examples/*.parquet, URI/labels/*.parquet, URI/_manifest.json (written last).
Every file is written whole or not at all, so a crash never leaves a half-written shard behind.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
CONFIG = "config.yaml"
TABLES = ("examples", "labels")


def shard_name(first: int, last: int) -> str:
    """Deterministic file name of the shard holding features first..last."""
    return f"features-{first:08d}-{last:08d}.parquet"


class RunStore:
    """Read and write one run's files through a pyarrow filesystem."""

    def __init__(self, uri: str):
        self.uri = uri
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri).resolve())
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def list(self, table: str) -> list[str]:
        """File names of a table's shards, sorted."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(table), allow_not_found=True))
        return sorted(i.base_name for i in info if i.is_file and i.base_name.endswith(".parquet"))

    def write_table(self, table_name: str, name: str, table: pa.Table) -> None:
        self._atomic(f"{table_name}/{name}", lambda f: pq.write_table(table, f))

    def read_table(self, table_name: str, name: str) -> pa.Table:
        return pq.read_table(self.path(f"{table_name}/{name}"), filesystem=self.fs)

    def dataset(self, table_name: str) -> ds.Dataset:
        """All shards of a table as one dataset (filters push down to files and row groups)."""
        files = [self.path(f"{table_name}/{n}") for n in self.list(table_name)]
        return ds.dataset(files, format="parquet", filesystem=self.fs)

    def write_text(self, rel: str, text: str) -> None:
        self._atomic(rel, lambda f: f.write(text.encode()))

    def read_text(self, rel: str) -> str:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read().decode()

    def write_json(self, rel: str, obj) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True))

    def read_json(self, rel: str):
        return json.loads(self.read_text(rel))

    def _atomic(self, rel: str, write) -> None:
        target = self.path(rel)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        if not self.local:
            # An object store PUT is atomic already: readers see the old object or the whole new one.
            with self.fs.open_output_stream(target) as f:
                write(f)
            return
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                write(f)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
