"""SQL over a run: DuckDB on the run's Parquet tables, read through pyarrow (local or object storage).

Python API: `open_run(uri)` is a DuckDB connection with the tables `labels`, `examples` and `latents`
(those the run has) as views, e.g. `open_run("runs/demo").sql("SELECT * FROM labels").df()`.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from typing import TextIO

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.storage import MANIFEST, RunStore

RUN_TABLES = ("labels", "examples", "latents")
FORMATS = ("table", "csv", "json", "parquet")
SHARD_FILE = re.compile(r"features-(\d+)-(\d+)\.parquet$")


class RunNotFound(ValueError):
    """The URI holds no run."""


def shard_dataset(store: RunStore, table: str) -> ds.Dataset:
    """A table's shards as one dataset, each file tagged with the feature-id range in its name,
    so a filter on feature_id skips other shards without opening them."""
    names = store.list(table)
    paths = [store.path(f"{table}/{n}") for n in names]
    partitions = []
    for name in names:
        m = SHARD_FILE.search(name)
        fid = ds.field("feature_id")
        partitions.append((fid >= int(m[1])) & (fid <= int(m[2])) if m else ds.scalar(True))
    schema = pq.read_schema(paths[0], filesystem=store.fs)
    return ds.FileSystemDataset.from_paths(
        paths, schema=schema, format=ds.ParquetFileFormat(), filesystem=store.fs, partitions=partitions
    )


def open_run(run: str | RunStore) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the run's tables (`labels`, `examples`, `latents`) as views."""
    store = run if isinstance(run, RunStore) else RunStore(run)
    present = [t for t in RUN_TABLES if store.list(t)]
    if not present:
        raise RunNotFound(
            f"{store.uri} holds no run: no Parquet files under {store.uri}/labels or {store.uri}/examples"
        )
    con = duckdb.connect()
    # Never reach out to the network for extensions; everything needed is built in.
    con.execute("SET autoinstall_known_extensions=false; SET autoload_known_extensions=false")
    # Results go to stdout and files; a progress bar on long scans would only garble them.
    con.execute("SET enable_progress_bar=false")
    for table in present:
        con.register(table, shard_dataset(store, table))
    return con


def has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether an `open_run` connection holds `table` (a run labeled from examples has no latents)."""
    return bool(con.execute("SELECT 1 FROM duckdb_views() WHERE view_name = ?", [table]).fetchall())


def query(uri: str, sql: str) -> pa.Table:
    """Run `sql` over the run at `uri`; the result as an Arrow table."""
    return open_run(uri).sql(sql).to_arrow_table()


def is_complete(uri: str) -> bool:
    """Whether the run's manifest (written last) exists."""
    return RunStore(uri).exists(MANIFEST)


def format_table(table: pa.Table, max_width: int = 60) -> str:
    """A plain-text table of an Arrow table, long cells cut to `max_width`."""

    def cell(v) -> str:
        if isinstance(v, float):
            text = f"{v:.4g}"
        else:
            text = "" if v is None else str(v)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    header = table.column_names
    rows = [[cell(v) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, sep, *body, f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])


def write_result(table: pa.Table, fmt: str, out: TextIO | str | None = None, max_width: int = 60) -> None:
    """Write a query result as `fmt` (table, csv, json = one object per line, parquet) to a path or stream."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {list(FORMATS)}")
    if fmt == "parquet":
        if not isinstance(out, str):
            raise ValueError("--format parquet writes a file: give one with -o FILE")
        pq.write_table(table, out)
        return
    stream = open(out, "w", newline="") if isinstance(out, str) else (out or sys.stdout)
    try:
        if fmt == "table":
            print(format_table(table, max_width), file=stream)
        elif fmt == "json":
            for row in table.to_pylist():
                stream.write(json.dumps(row, default=str) + "\n")
        else:
            writer = csv.writer(stream)
            writer.writerow(table.column_names)
            for row in table.to_pylist():
                # Nested cells (alternatives, tokens) become JSON so a CSV reader gets them back whole.
                writer.writerow([json.dumps(v, default=str) if isinstance(v, list | dict) else v for v in row.values()])
    finally:
        if isinstance(out, str):
            stream.close()
