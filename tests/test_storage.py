import pyarrow as pa

from pipeline.storage import RunStore


def test_tables_round_trip_and_list_only_finished_shards(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    t = pa.table({"feature_id": pa.array([1, 2], pa.int64())})
    store.write_table("labels", "b.parquet", t)
    store.write_table("labels", "a.parquet", t)
    (tmp_path / "run" / "labels" / "c.parquet.tmp-123").write_text("partial")
    assert store.list("labels") == ["a.parquet", "b.parquet"]
    assert store.read_table("labels", "a.parquet").equals(t)
    assert store.dataset("labels").count_rows() == 4
    assert store.list("examples") == []


def test_failed_write_leaves_no_file(tmp_path):
    store = RunStore(str(tmp_path))

    def boom(_):
        raise RuntimeError("disk full")

    try:
        store._atomic("labels/x.parquet", boom)
    except RuntimeError:
        pass
    assert list((tmp_path / "labels").iterdir()) == []


def test_json_round_trip(tmp_path):
    store = RunStore(str(tmp_path))
    store.write_json("_manifest.json", {"a": [1, 2]})
    assert store.read_json("_manifest.json") == {"a": [1, 2]}
    assert store.exists("_manifest.json") and not store.exists("nope")
