"""SQL over a run: DuckDB on the run's Parquet tables, read through pyarrow (local or object storage)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from pipeline.storage import MANIFEST, RunStore

RUN_TABLES = ("labels", "examples", "latents")


class RunNotFound(ValueError):
    """The URI holds no run."""


def open_run(uri: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the run's tables (`labels`, `examples`, `latents`) as views."""
    store = RunStore(uri)
    present = [t for t in RUN_TABLES if store.list(t)]
    if not present:
        raise RunNotFound(f"{uri} holds no run: no Parquet files under {uri}/labels or {uri}/examples")
    con = duckdb.connect()
    # Never reach out to the network for extensions; everything needed is built in.
    con.execute("SET autoinstall_known_extensions=false; SET autoload_known_extensions=false")
    for table in present:
        con.register(table, store.dataset(table))
    return con


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
