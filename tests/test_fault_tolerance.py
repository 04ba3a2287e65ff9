"""Real failures mid-run: labeling actors killed, a node removed, the driver killed and the run resumed."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml
from conftest import LOCAL_RAY
from test_pipeline import corpus, small_config  # noqa: F401 (corpus is a fixture)

from pipeline import driver
from pipeline.config import RunConfig
from pipeline.status import run_status

pytestmark = pytest.mark.slow

# Words each found in 10+ texts of the demo corpus's first 2000 WordNet examples.
WORDS = ["play", "time", "work", "children", "game", "life", "team", "police", "troops", "business", "war", "money"]


@pytest.fixture(scope="module")
def examples(tmp_path_factory, demo_texts):
    """A small examples table: feature i is active on texts holding WORDS[i % 12], inactive on 20 random others."""
    texts = demo_texts["wordnet-example"][:2000]
    rng = np.random.default_rng(0)
    rows = {"feature_id": [], "text": [], "activation": []}
    for fid in range(24):
        word = WORDS[fid % len(WORDS)]
        pos = [t for t in texts if f" {word}" in t.lower()][:12]
        assert len(pos) >= 8, word  # enough actives for a held-out split
        neg = [texts[i] for i in rng.choice(len(texts), 20, replace=False) if word not in texts[i].lower()]
        for text, act in [(t, 1.0 + fid % 3) for t in pos] + [(t, 0.0) for t in neg]:
            rows["feature_id"].append(fid)
            rows["text"].append(text)
            rows["activation"].append(act)
    path = tmp_path_factory.mktemp("examples") / "examples.parquet"
    pq.write_table(
        pa.table(
            {
                "feature_id": pa.array(rows["feature_id"], pa.int64()),
                "text": pa.array(rows["text"]),
                "activation": pa.array(rows["activation"], pa.float32()),
            }
        ),
        path,
    )
    return path


def label_config(out, **kw) -> RunConfig:
    return RunConfig(**{"out": str(out), "steps": 20, "shard_size": 4, "features_per_batch": 4, **kw})


def ray_processes(parent: int, title: str) -> list[int]:
    """Pids of processes under `parent` whose title (Ray sets it to ray::Class) starts with `title`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [parent]
    while stack:
        for pid in children.get(stack.pop(), []):
            stack.append(pid)
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title.encode()):
                    found.append(pid)
            except OSError:
                pass
    return found


def raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def assert_each_feature_once(out, n: int) -> pa.Table:
    labels = pq.read_table(Path(out) / "labels")
    assert sorted(labels.column("feature_id").to_pylist()) == list(range(n))
    return labels


def test_killed_actors_are_restarted_and_every_feature_labeled_once(ray_session, examples, tmp_path):
    """A labeling actor's process is SIGKILLed three times mid-shard; the run still labels each feature once."""
    node = ray._private.worker._global_node
    killed: list[int] = []
    stop = threading.Event()

    def killer():
        while len(killed) < 3 and not stop.is_set():
            pids = [p for p in ray_processes(raylet_pid(node), "ray::LabelActor") if p not in killed]
            if pids:
                time.sleep(4)  # let it load the model and start a shard
                try:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                except ProcessLookupError:
                    pass
            time.sleep(0.5)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        # Shards long enough (60 steps) that three kills land before the run ends.
        result = driver.label_examples(str(examples), label_config(tmp_path / "run", actors=2, steps=60))
    finally:
        stop.set()
        thread.join()
    assert len(killed) == 3, "the run ended before three actors were killed"
    assert result.failed_shards == [] and result.labeled == 24
    labels = assert_each_feature_once(tmp_path / "run", 24)
    assert set(labels.column("status").to_pylist()) == {"ok"}


@pytest.fixture
def cluster():
    """A Ray cluster of a head and two worker nodes in this machine; the session's local Ray is restored after."""
    from ray.cluster_utils import Cluster

    was_up = ray.is_initialized()
    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()
    if was_up:
        ray.init(**LOCAL_RAY)


def test_a_node_removed_mid_run(cluster, examples, tmp_path):
    """The node under a labeling actor goes away mid-run; the actor restarts elsewhere and the run completes."""
    c, workers = cluster
    removed = []

    def remove_a_node():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not removed:
            for node in workers:
                if ray_processes(raylet_pid(node), "ray::LabelActor") and list((tmp_path / "run").glob("labels/*")):
                    c.remove_node(node, allow_graceful=False)
                    removed.append(node)
                    break
            time.sleep(0.3)

    thread = threading.Thread(target=remove_a_node, daemon=True)
    thread.start()
    result = driver.label_examples(str(examples), label_config(tmp_path / "run", actors=2))
    thread.join()
    assert removed, "no labeling actor ran on a worker node"
    assert result.failed_shards == [] and result.labeled == 24
    assert_each_feature_once(tmp_path / "run", 24)


def test_killed_driver_resumes_to_the_same_labels(ray_session, tiny_sae_dir, corpus, tmp_path):  # noqa: F811
    """`toklabel run` SIGKILLed after some shards: the same command resumes and ends where an uninterrupted run does."""
    reference = small_config(tiny_sae_dir, corpus, tmp_path / "reference", actors=1, features="0-31")
    driver.run(reference)
    out = tmp_path / "resumed"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({**reference.to_dict(), "out": str(out)}))
    command = [str(Path(sys.executable).parent / "toklabel"), "run", str(config_file)]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 150
    while not list(out.glob("labels/*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    st = run_status(str(out))
    assert st["shards_done"] == 1 and st["shards_pending"] == 1 and not st["complete"]
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("labels/*.parquet")}

    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {n: (out / "labels" / n).stat().st_mtime_ns for n in kept} == kept  # finished shards were skipped
    assert run_status(str(out))["complete"]
    cols = ["feature_id", "label", "score", "status"]
    ours = pq.read_table(out / "labels", columns=cols).sort_by("feature_id")
    theirs = pq.read_table(tmp_path / "reference" / "labels", columns=cols).sort_by("feature_id")
    assert ours.equals(theirs)


def test_actors_ask_ray_for_the_configured_gpus(examples, tmp_path):
    """gpus_per_actor: 0.5 puts two labeling actors on the one node that declares a GPU (there is no real GPU
    here: the actors see none and run on the CPU), never on the CPU-only head."""
    from ray.cluster_utils import Cluster

    was_up = ray.is_initialized()
    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    gpu_node = c.add_node(num_cpus=2, num_gpus=1)
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    seen = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append(len(ray_processes(raylet_pid(gpu_node), "ray::LabelActor")))
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        config = label_config(tmp_path / "run", actors=2, gpus_per_actor=0.5)
        result = driver.label_examples(str(examples), config)
    finally:
        done.set()
        thread.join()
        ray.shutdown()
        c.shutdown()
        if was_up:
            ray.init(**LOCAL_RAY)
    assert result.failed_shards == [] and result.labeled == 24
    assert max(seen) == 2
    assert_each_feature_once(tmp_path / "run", 24)
