"""Runs on object storage: a real SeaweedFS S3 server on 127.0.0.1 (the `s3_server` fixture), never a mock."""

import threading
import time

import pyarrow as pa
import pytest
from test_pipeline import corpus, small_config  # noqa: F401 (corpus is a fixture)

from pipeline import driver
from pipeline.query import query
from pipeline.status import run_status
from pipeline.storage import RunStore, with_endpoint


def test_endpoint_variable_becomes_explicit(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert with_endpoint("s3://b/run") == "s3://b/run?endpoint_override=http%3A%2F%2F127.0.0.1%3A9000"
    assert with_endpoint("s3://b/run?endpoint_override=x") == "s3://b/run?endpoint_override=x"
    assert with_endpoint("/tmp/run") == "/tmp/run"


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.mark.slow
def test_preflight_names_missing_bucket_and_wrong_keys(s3_env, monkeypatch, tiny_sae_dir, corpus):  # noqa: F811
    with pytest.raises(ValueError, match=r"cannot write to run storage s3://no-such-bucket/run.*bucket exists"):
        driver.prepare_store(small_config(tiny_sae_dir, corpus, "s3://no-such-bucket/run"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(ValueError, match=r"cannot write to run storage s3://toklabel/run.*credentials"):
        # driver.run checks storage before loading any model or starting Ray.
        driver.run(small_config(tiny_sae_dir, corpus, "s3://toklabel/run"))


@pytest.mark.slow
def test_run_on_s3_is_queryable(s3_env, ray_session, tiny_sae_dir, corpus):  # noqa: F811
    uri = "s3://toklabel/runs/e2e"
    result = driver.run(small_config(tiny_sae_dir, corpus, uri, features="0-31"))
    assert result.labeled == 32 and not result.failed_shards
    store = RunStore(uri)
    assert store.list("labels") == [f"features-{a:08d}-{a + 15:08d}.parquet" for a in (0, 16)]
    assert store.exists("_manifest.json") and store.exists("config.yaml")
    assert not [k for k in s3_env.client().list_objects_v2(Bucket="toklabel")["Contents"] if "_probe" in k["Key"]]
    rows = query(uri, "SELECT feature_id, shard, worker, shard_seconds FROM labels ORDER BY feature_id").to_pylist()
    assert [r["feature_id"] for r in rows] == list(range(32))
    assert all(r["shard"].startswith("features-") and r["worker"] and r["shard_seconds"] > 0 for r in rows)
    st = run_status(uri)
    assert (st["shards_planned"], st["shards_done"], st["shards_pending"], st["features_labeled"]) == (2, 2, 0, 32)


@pytest.mark.slow
def test_writes_survive_a_store_outage(s3_env):
    """The store is down for 20 s (killed, then restarted on the same data): a write retries and lands."""
    store = RunStore("s3://toklabel/runs/outage")
    table = pa.table({"feature_id": pa.array(range(1000), pa.int64())})
    store.write_table("labels", "before.parquet", table)
    s3_env.stop()
    done = threading.Event()
    writer = threading.Thread(target=lambda: (store.write_table("labels", "during.parquet", table), done.set()))
    t0 = time.monotonic()
    writer.start()
    time.sleep(20)
    assert not done.is_set()
    s3_env.start()
    writer.join(timeout=90)
    assert done.is_set(), "the write did not land after the store came back"
    assert time.monotonic() - t0 >= 20
    assert store.list("labels") == ["before.parquet", "during.parquet"]
    assert store.read_table("labels", "during.parquet").equals(table)
    assert store.read_table("labels", "before.parquet").equals(table)
