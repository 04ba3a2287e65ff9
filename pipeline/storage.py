"""A run's storage: one URI (local directory or s3://bucket/prefix) holding its tables and manifest.

Layout: URI/config.yaml, URI/examples/*.parquet, URI/labels/*.parquet, URI/_manifest.json (written last).
Every file is written whole or not at all, so a crash never leaves a half-written shard behind.
Object storage (s3://) uses the standard AWS configuration: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_PROFILE. Its calls retry with exponential backoff, so an object
store that is away for a while delays a run instead of failing it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
CONFIG = "config.yaml"
PLAN = "_plan.json"
FAILURES = "_failures"  # one JSON file per shard that failed every attempt
TABLES = ("examples", "labels")
AWS_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)
# Errors no retry can fix: report them at once.
PERMANENT = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "does not exist")


def shard_name(first: int, last: int) -> str:
    """Deterministic file name of the shard holding features first..last."""
    return f"features-{first:08d}-{last:08d}.parquet"


def with_endpoint(uri: str) -> str:
    """An s3:// URI with the endpoint of AWS_ENDPOINT_URL(_S3) made explicit (older pyarrow ignores the variable)."""
    parts = urlsplit(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if parts.scheme != "s3" or not endpoint or "endpoint_override" in parse_qs(parts.query):
        return uri
    query = "&".join(q for q in (parts.query, urlencode({"endpoint_override": endpoint})) if q)
    return parts._replace(query=query).geturl()


def storage_env(uri: str) -> dict[str, str]:
    """The AWS variables of this process that remote actors need to reach the run at `uri`."""
    if not uri.startswith("s3://"):
        return {}
    return {k: os.environ[k] for k in AWS_ENV if k in os.environ}


class RunStore:
    """Read and write one run's files through a pyarrow filesystem."""

    def __init__(self, uri: str, retry_seconds: float = 120.0):
        self.uri = uri
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(with_endpoint(uri))
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri).resolve())
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.retry_seconds = 0.0 if self.local else retry_seconds

    def _retry(self, what: str, call):
        """call(), retried with exponential backoff (0.5 s doubling to 8 s) on transient errors for up to
        `retry_seconds`."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.5
        while True:
            try:
                return call()
            except OSError as err:
                if any(p in str(err) for p in PERMANENT) or time.monotonic() + delay > deadline:
                    raise
                print(f"storage: {what} failed ({err}); retrying in {delay:.1f} s", file=sys.stderr)
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def check_writable(self) -> None:
        """Write and delete a small object under the URI; a clear error when that fails (before any model loads)."""
        probe = self.path(f"_probe-{uuid.uuid4().hex}")
        try:
            if self.local:
                self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"toklabel")
            self.fs.delete_file(probe)
        except OSError as err:
            hint = (
                " (check that the bucket exists and the credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "or AWS_PROFILE, and AWS_ENDPOINT_URL for a non-AWS store)"
                if not self.local
                else ""
            )
            raise ValueError(f"cannot write to run storage {self.uri}: {err}{hint}") from None

    def shareable_fs(self) -> pafs.FileSystem:
        """This store's filesystem for processes that do not share this one's environment (Ray Train's controller
        and workers): on S3 with the keys of this process's AWS_* variables written in, as pyarrow pickles
        explicit keys only. Without such variables, the other processes use their own credential chain."""
        if self.local or not os.environ.get("AWS_ACCESS_KEY_ID"):
            return self.fs
        endpoint = parse_qs(urlsplit(with_endpoint(self.uri)).query).get("endpoint_override", [None])[0]
        return pafs.S3FileSystem(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
            region=self.fs.region,
            endpoint_override=endpoint,
        )

    def path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        return self._retry(f"stat {rel}", lambda: self.fs.get_file_info(self.path(rel)).type) != pafs.FileType.NotFound

    def list(self, table: str, suffix: str = ".parquet") -> list[str]:
        """File names of a table's shards (or other files with `suffix` in a folder), sorted."""
        selector = pafs.FileSelector(self.path(table), allow_not_found=True)
        info = self._retry(f"list {table}", lambda: self.fs.get_file_info(selector))
        return sorted(i.base_name for i in info if i.is_file and i.base_name.endswith(suffix))

    def write_table(self, table_name: str, name: str, table: pa.Table) -> None:
        self._atomic(f"{table_name}/{name}", lambda f: pq.write_table(table, f))

    def read_table(self, table_name: str, name: str) -> pa.Table:
        path = self.path(f"{table_name}/{name}")
        return self._retry(f"read {table_name}/{name}", lambda: pq.read_table(path, filesystem=self.fs))

    def dataset(self, table_name: str) -> ds.Dataset:
        """All shards of a table as one dataset (filters push down to files and row groups)."""
        files = [self.path(f"{table_name}/{n}") for n in self.list(table_name)]
        return ds.dataset(files, format="parquet", filesystem=self.fs)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._atomic(rel, lambda f: f.write(data))

    def read_bytes(self, rel: str) -> bytes:
        def read():
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()

        return self._retry(f"read {rel}", read)

    def delete(self, rel: str) -> None:
        """Remove a file if it exists."""
        if self.exists(rel):
            self._retry(f"delete {rel}", lambda: self.fs.delete_file(self.path(rel)))

    def write_json(self, rel: str, obj) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True))

    def read_json(self, rel: str):
        return json.loads(self.read_text(rel))

    def _atomic(self, rel: str, write) -> None:
        target = self.path(rel)
        if not self.local:
            # An object store PUT is atomic already: readers see the old object or the whole new one.
            # Object stores have no folders to create.
            def put():
                with self.fs.open_output_stream(target) as f:
                    write(f)

            self._retry(f"write {rel}", put)
            return
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                write(f)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
