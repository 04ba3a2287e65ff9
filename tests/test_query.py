"""SQL over a run: tables, filter push-down to shards, output formats, bad input."""

from __future__ import annotations

import csv
import io
import json

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from synthetic_run import write_run

from pipeline import open_run
from pipeline.cli import main
from pipeline.query import has_table, query
from pipeline.storage import RunStore


class CountingHandler(pafs.FileSystemHandler):
    """A pyarrow filesystem handler over another filesystem that records every file opened for reading."""

    def __init__(self, fs: pafs.FileSystem):
        self.fs = fs
        self.opened: list[str] = []

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def get_type_name(self):
        return "counting"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        self.opened.append(path)
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        self.opened.append(path)
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    return write_run(str(tmp_path_factory.mktemp("run") / "run"), n_features=200, shard_size=10).uri


def test_open_run_has_the_three_tables(run):
    con = open_run(run)
    assert all(has_table(con, t) for t in ("labels", "examples", "latents"))
    n = con.sql("SELECT count(*) FROM labels l JOIN latents USING (feature_id)").fetchall()[0][0]
    assert n == 200


def test_filter_on_feature_id_opens_one_shard(run):
    store = RunStore(run)
    handler = CountingHandler(store.fs)
    store.fs = pafs.PyFileSystem(handler)
    con = open_run(store)
    handler.opened.clear()
    rows = con.sql("SELECT feature_id, label FROM labels WHERE feature_id = 57").fetchall()
    assert rows == [(57, "water57")]
    assert handler.opened == [store.path("labels/features-00000050-00000059.parquet")]
    handler.opened.clear()
    n = con.sql("SELECT count(*) FROM examples WHERE feature_id BETWEEN 120 AND 125").fetchall()[0][0]
    assert n == 6 * 6
    assert handler.opened == [store.path("examples/features-00000120-00000129.parquet")]
    handler.opened.clear()
    con.sql("SELECT count(*) FROM examples").fetchall()
    assert len(handler.opened) == 20  # without a filter every shard is read


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
    handler = CountingHandler(store.fs)
    store.fs = pafs.PyFileSystem(handler)
    con = open_run(store)
    handler.opened.clear()  # open_run reads one footer per table for the schema
    assert con.sql("SELECT count(*) FROM examples WHERE feature_id = 33").fetchall() == [(6,)]
    assert handler.opened == [store.path("examples/features-00000030-00000039.parquet")]
