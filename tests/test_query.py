"""SQL over a run: tables, filter push-down to shards, output formats, bad input."""

from __future__ import annotations

import csv
import io
import json

import duckdb
import pyarrow.parquet as pq
import pytest
from synthetic_run import write_run

from pipeline import open_run
from pipeline.cli import main
from pipeline.query import has_table, query
from pipeline.storage import RunStore


def spoil_shards_except(store: RunStore, table: str, keep: str) -> None:
    """Overwrite every shard of `table` but `keep` with bytes that are not Parquet: a query that reads one of
    them fails, so a query that succeeds afterwards read no shard but `keep`."""
    for name in store.list(table):
        if name != keep:
            with store.fs.open_output_stream(store.path(f"{table}/{name}")) as f:
                f.write(b"not a parquet file")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    return write_run(str(tmp_path_factory.mktemp("run") / "run"), n_features=200, shard_size=10).uri


def test_open_run_has_the_three_tables(run):
    con = open_run(run)
    assert all(has_table(con, t) for t in ("labels", "examples", "latents"))
    n = con.sql("SELECT count(*) FROM labels l JOIN latents USING (feature_id)").fetchall()[0][0]
    assert n == 200


def test_filter_on_feature_id_opens_one_shard(tmp_path):
    store = RunStore(write_run(str(tmp_path / "run"), n_features=200, shard_size=10).uri)
    con = open_run(store)  # reads one footer per table for the schema
    spoil_shards_except(store, "labels", keep="features-00000050-00000059.parquet")
    spoil_shards_except(store, "examples", keep="features-00000120-00000129.parquet")
    rows = con.sql("SELECT feature_id, label FROM labels WHERE feature_id = 57").fetchall()
    assert rows == [(57, "water57")]
    n = con.sql("SELECT count(*) FROM examples WHERE feature_id BETWEEN 120 AND 125").fetchall()[0][0]
    assert n == 6 * 6
    with pytest.raises(duckdb.Error, match="(?i)parquet"):  # without a filter every shard is read
        con.sql("SELECT count(*) FROM examples").fetchall()


def test_query_formats(run, tmp_path, capsys):
    sql = "SELECT feature_id, label, alternatives FROM labels WHERE status = 'ok' ORDER BY feature_id LIMIT 3"
    assert main(["query", run, sql, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["label"] for r in rows] == ["the0", "river1", "bank2"]
    assert json.loads(rows[0]["alternatives"])[0]["label"] == "the0"

    assert main(["query", run, sql, "--format", "json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["feature_id"] for line in lines] == [0, 1, 2]

    out = tmp_path / "top.parquet"
    assert main(["query", run, sql, "--format", "parquet", "-o", str(out)]) == 0
    assert pq.read_table(out).column("label").to_pylist() == ["the0", "river1", "bank2"]

    assert main(["query", run, sql, "--format", "json", "-o", str(tmp_path / "top.jsonl")]) == 0
    assert len((tmp_path / "top.jsonl").read_text().splitlines()) == 3


def test_parquet_needs_an_output_file(run, capsys):
    assert main(["query", run, "SELECT 1", "--format", "parquet"]) == 2
    assert "-o FILE" in capsys.readouterr().err


def test_bad_sql_is_duckdb_message_not_traceback(run, capsys):
    assert main(["query", run, "SELECT nope FROM labels"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["query", str(tmp_path / "none"), "SELECT 1"]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_unfinished_run_is_queryable_with_a_warning(tmp_path, capsys):
    uri = write_run(str(tmp_path / "partial"), n_features=20, manifest=False).uri
    assert query(uri, "SELECT count(*) AS n FROM labels").column("n")[0].as_py() == 20
    assert main(["query", uri, "SELECT count(*) AS n FROM labels"]) == 0
    captured = capsys.readouterr()
    assert "unfinished" in captured.err and "20" in captured.out


def test_query_and_show_over_s3(s3_server, monkeypatch, capsys):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{s3_server.bucket}/runs/query-test"
    write_run(uri, n_features=40, shard_size=10)
    assert main(["query", uri, "SELECT label FROM labels WHERE feature_id = 7", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["label", "rate7"]
    assert main(["show", uri, "7"]) == 0
    assert "[[rate" in capsys.readouterr().out

    store = RunStore(uri)
    con = open_run(store)
    spoil_shards_except(store, "examples", keep="features-00000030-00000039.parquet")
    assert con.sql("SELECT count(*) FROM examples WHERE feature_id = 33").fetchall() == [(6,)]
