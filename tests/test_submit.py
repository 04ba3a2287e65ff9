"""`toklabel submit` against a real Ray head (`ray start --head`) with token authentication on."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_pipeline import corpus, small_config  # noqa: F401 (corpus is a fixture)

from pipeline.cli import main
from pipeline.config import REPO, RunConfig
from pipeline.submit import job_config

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_job_config_makes_repository_paths_relative(tmp_path):
    sae = REPO / "data" / "sae" / "minilm-L3-topk-1536"
    cfg = job_config(RunConfig(out=str(tmp_path / "out"), sae=str(sae), corpus="s3://bucket/corpus.jsonl"))
    assert (cfg.sae, cfg.corpus, cfg.out) == ("data/sae/minilm-L3-topk-1536", "s3://bucket/corpus.jsonl", cfg.out)
    with pytest.raises(FileNotFoundError, match="config key 'sae'"):
        job_config(RunConfig(out="s3://b/r", sae=str(tmp_path / "missing")))


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head with token auth in a private temp dir (so no other Ray on this machine finds or stops it)."""
    token = secrets.token_hex(32)
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths live under it
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env["HF_HUB_OFFLINE"] = "1"
    start = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={free_port()}",
        f"--dashboard-port={dashboard}",
        "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={free_port()}",
        # Ports of its own: a Ray already running on this machine holds the defaults (the job agent's above all).
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--num-cpus=2",
        "--include-dashboard=true",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    subprocess.run(start, env=env, check=True, timeout=180, capture_output=True)
    yield f"http://127.0.0.1:{dashboard}", token
    # Not `ray stop`, which stops every Ray on the machine: only the processes of this head (they name its temp dir).
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            if temp.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.slow
def test_submit_needs_the_clusters_token(ray_head, tmp_path):
    address, _ = ray_head
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"out": str(tmp_path / "out")}))
    # A fresh process each time: Ray keeps a token it has read once for the life of the process.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token
    command = [str(BIN / "toklabel"), "submit", str(config), "--address", address]
    none = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert none.returncode == 2
    assert "requires an auth token and none was found" in none.stderr
    wrong = subprocess.run(
        command, env={**env, "RAY_AUTH_TOKEN": "0" * 64}, capture_output=True, text=True, timeout=120
    )
    assert wrong.returncode == 2
    assert "refused the auth token" in wrong.stderr


@pytest.mark.slow
def test_submit_runs_the_config_as_a_ray_job(ray_head, tiny_sae_dir, corpus, tmp_path, monkeypatch, capsys):  # noqa: F811
    address, token = ray_head
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    cfg = small_config(tiny_sae_dir, corpus, tmp_path / "out", features="0-15")
    config = tmp_path / "run.yaml"
    config.write_text(cfg.to_yaml())
    t0 = time.monotonic()
    assert main(["submit", str(config), "--address", address, "--follow"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("raysubmit_")
    assert "features labeled" in out  # the job's own summary, streamed back
    labels = pq.read_table(tmp_path / "out" / "labels")
    assert sorted(labels.column("feature_id").to_pylist()) == list(range(16))
    assert (tmp_path / "out" / "_manifest.json").exists()
    assert time.monotonic() - t0 < 300
