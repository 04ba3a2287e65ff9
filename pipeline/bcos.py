"""`toklabel bcos`: B-cos language models, classifiers whose token explanations are exact (arXiv 2502.12992).

`toklabel bcos train` converts a BERT-family encoder to a B-cos network and fine-tunes it on a labeled dataset,
and fine-tunes the conventional model with the same recipe as the baseline; both run on Ray Train
(`TorchTrainer`: one CPU worker here, N GPU workers on a cluster), with checkpoints under the output URI, so a
killed worker (or a killed command, rerun) resumes from the last checkpoint. Both are scored on the same seeded
stratified test split as `toklabel probe`, and every test text gets its B-cos explanation. Layout under the URI
(local or s3://):

  bcos.json                     settings (another run's settings are refused, the same ones resumed)
  checkpoints/{bcos,conventional}/   Ray Train's storage: the latest checkpoint (model, optimiser, RNG, step)
  model/config.json             the BERT config, the classes, B, the maximum length
  model/tokenizer/              the tokenizer's files
  model/{bcos,conventional}.safetensors   the fine-tuned weights
  results/results.parquet       per model: accuracy, macro F1, steps, seconds, resumptions
  test/test.parquet             per test text: both models' predictions, the B-cos tokens and contributions
  summary.json                  {"dataset", "text_col", "label_col", "results": [...]} (the probe's keys)
  _manifest.json                written last
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoTokenizer

from pipeline.actors import _use_cpus
from pipeline.driver import _versions, connect
from pipeline.probe import RESULT_KEYS, texts_digest
from pipeline.progress import Progress, format_seconds
from pipeline.show import SPECIAL_TOKENS, readable_pieces
from pipeline.storage import MANIFEST, RunStore, storage_env
from workers.bcos import (
    DEFAULT_B,
    BertClassifier,
    base_config,
    batch_plan,
    build,
    check_b,
    contributions,
    encode,
    from_config,
    load_base_tokenizer,
    model_config,
    predict,
    warmup_linear,
)
from workers.models import default_device
from workers.probe import check_classes, read_labeled, split

SETTINGS, SUMMARY = "bcos.json", "summary.json"
CHECKPOINTS, MODEL, RESULTS, TEST = "checkpoints", "model", "results", "test"
STATE = "state.pt"
FLAVOURS = ("bcos", "conventional")
RESULTS_SCHEMA = pa.schema(
    [
        ("method", pa.string()),
        ("pooling", pa.string()),
        ("binarised", pa.bool_()),
        ("macro_f1", pa.float64()),
        ("accuracy", pa.float64()),
        ("b", pa.float64()),
        ("n_train", pa.int64()),
        ("n_test", pa.int64()),
        ("steps", pa.int64()),
        ("seconds", pa.float64()),
        ("resumed_from", pa.list_(pa.int64())),
    ]
)
TEST_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("bcos_class", pa.string()),
        ("bcos_probability", pa.float64()),
        ("conventional_class", pa.string()),
        ("conventional_probability", pa.float64()),
        ("tokens", pa.list_(pa.string())),
        ("contributions", pa.list_(pa.float32())),
        ("logit", pa.float64()),
    ]
)


@dataclass
class TrainConfig:
    """One `toklabel bcos train`; attribute docstrings are the options' documentation."""

    dataset: str
    """labeled texts: .jsonl / .parquet with a text and a label column, or hf:NAME[:CONFIG][:SPLIT]"""
    out: str
    """where the models and results go (local path or s3://)"""
    text_col: str = "text"
    label_col: str = "label"
    model: str = "minilm"
    """the BERT-family checkpoint converted and fine-tuned (alias, folder or hub name)"""
    b: float = DEFAULT_B
    """B of the B-cos layers (>= 1; 1 is a plain bias-free linear layer)"""
    epochs: int = 3
    batch: int = 32
    """texts per step, over all workers"""
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    """share of the steps with a linear learning-rate warm-up (then linear decay to 0)"""
    max_length: int = 64
    """tokens per text, with [CLS] and [SEP]"""
    test_fraction: float = 0.2
    seed: int = 0
    """seed of the split (the probe's), the data order, the head's initialisation and dropout"""
    max_texts: int | None = None
    """use the dataset's first N usable rows (needed for hf: datasets)"""
    workers: int = 1
    """Ray Train workers (data parallel)"""
    gpu: bool = False
    """one GPU per worker"""
    cpus_per_worker: int = 1
    checkpoint_every: int | None = None
    """steps between checkpoints; default: once per epoch"""
    max_failures: int = 3
    """worker failures Ray Train recovers from (from the last checkpoint) before the training fails"""

    def __post_init__(self):
        check_b(self.b)
        checks = [
            (self.epochs >= 1, "epochs", self.epochs, "at least 1"),
            (self.batch >= 1, "batch", self.batch, "at least 1"),
            (self.lr > 0, "lr", self.lr, "> 0"),
            (0 <= self.warmup < 1, "warmup", self.warmup, "in [0, 1)"),
            (self.max_length >= 3, "max_length", self.max_length, "at least 3 ([CLS], a token, [SEP])"),
            (0 < self.test_fraction < 1, "test_fraction", self.test_fraction, "between 0 and 1"),
            (self.max_texts is None or self.max_texts >= 1, "max_texts", self.max_texts, "at least 1"),
            (self.workers >= 1 and self.cpus_per_worker >= 1, "workers", self.workers, "at least 1"),
            (self.batch >= 2 * self.workers, "batch", self.batch, f"at least 2 per worker ({self.workers})"),
            (self.checkpoint_every is None or self.checkpoint_every >= 1, "checkpoint_every", None, ">= 1"),
            (self.max_failures >= 0, "max_failures", self.max_failures, ">= 0"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise ValueError(f"bcos option {key} = {value!r}; expected {expected}")

    def key(self, texts: list[str]) -> dict:
        """What the models depend on; a rerun with the same key resumes, another key is refused. Parallelism
        (workers, GPUs, CPUs) and fault tolerance are left out, so a run can resume on other hardware."""
        skip = {"out", "workers", "gpu", "cpus_per_worker", "max_failures", "checkpoint_every"}
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return {**settings, "texts": len(texts), "texts_sha256": texts_digest(texts)}


@dataclass
class Dataset:
    texts: list[str]
    labels: list[str]
    classes: list[str]
    train: np.ndarray
    test: np.ndarray


def read_dataset(config: TrainConfig) -> Dataset:
    """The labeled texts, checked (columns, classes), with the probe's seeded stratified split."""
    texts, labels = read_labeled(config.dataset, config.text_col, config.label_col, config.max_texts)
    check_classes(labels, config.dataset)
    train, test = split(labels, config.test_fraction, config.seed)
    return Dataset(texts, labels, sorted(set(labels)), train, test)


def prepare_store(config: TrainConfig, key: dict) -> RunStore:
    """The output storage, checked writable; a run of other settings there is refused."""
    store = RunStore(config.out)
    store.check_writable()
    if store.exists(SETTINGS):
        old = store.read_json(SETTINGS).get("key", {})
        if old != key:
            changed = sorted(k for k in key if old.get(k) != key[k])
            raise ValueError(
                f"{config.out} already holds B-cos models of other settings (differing: {changed}); "
                "choose another --out or delete that folder"
            )
    return store


def save_tokenizer(store: RunStore, tokenizer) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            store.write_bytes(f"{MODEL}/tokenizer/{path.name}", path.read_bytes())


def load_model(uri: str, flavour: str = "bcos") -> tuple[BertClassifier, object, dict]:
    """(model in eval mode, tokenizer, model/config.json) of a finished `toklabel bcos train` at `uri`."""
    store = RunStore(uri)
    weights = f"{MODEL}/{flavour}.safetensors"
    if not store.exists(f"{MODEL}/config.json") or not store.exists(weights):
        raise FileNotFoundError(f"{uri} holds no trained {flavour} model (no {weights}): run toklabel bcos train")
    config = store.read_json(f"{MODEL}/config.json")
    model = from_config(config, load_safetensors(store.read_bytes(weights)), bcos=flavour == "bcos")
    with tempfile.TemporaryDirectory() as tmp:
        for name in store.list(f"{MODEL}/tokenizer", suffix=""):
            Path(tmp, name).write_bytes(store.read_bytes(f"{MODEL}/tokenizer/{name}"))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    return model, tokenizer, config


# The training loop: one per Ray Train worker.


def _save_checkpoint(model, optimizer, scheduler, step: int, folder: str) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "step": step,
    }
    torch.save(state, Path(folder, STATE))


def train_loop(cfg: dict) -> None:
    """Fine-tune one flavour: data-parallel over the workers, a checkpoint every `checkpoint_every` steps, resumed
    from the latest one when Ray Train restarts the workers (or a rerun finds one); rank 0 writes the weights."""
    import ray.train
    import ray.train.torch

    _use_cpus(cfg["cpus"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    tokenizer = load_base_tokenizer(cfg["model"])
    texts, targets = cfg["texts"], torch.tensor(cfg["targets"])
    model, _ = build(cfg["model"], cfg["classes"], cfg["b"], seed=cfg["seed"])
    bare = model.to(device)
    model = ray.train.torch.prepare_model(bare)  # DistributedDataParallel with more than one worker
    decay = [p for n, p in bare.named_parameters() if p.ndim > 1 and "embeddings" not in n]
    rest = [p for n, p in bare.named_parameters() if not (p.ndim > 1 and "embeddings" not in n)]
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"])
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=cfg["max_length"])["input_ids"]]
    plan = batch_plan(lengths, cfg["batch"], cfg["epochs"], cfg["seed"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(len(plan), cfg["warmup"]))
    step, queue = 0, cfg["progress"]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder, STATE), weights_only=True, map_location="cpu")
        bare.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
    else:
        torch.manual_seed(cfg["seed"] + rank)  # dropout, each worker its own draws
    if rank == 0:
        queue.put({"event": "start", "step": step, "steps": len(plan)})
    every = cfg["checkpoint_every"] or math.ceil(len(plan) / cfg["epochs"])
    model.train()
    while step < len(plan):
        rows = plan[step][rank::world]
        ids, mask = encode(tokenizer, [texts[i] for i in rows], cfg["max_length"])
        loss = F.cross_entropy(model(ids.to(device), mask.to(device)), targets[rows].to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        metrics = {"step": step, "loss": float(loss)}
        if step % every == 0 or step == len(plan):
            with tempfile.TemporaryDirectory() as folder:
                checkpoint = None
                if rank == 0:
                    _save_checkpoint(bare, optimizer, scheduler, step, folder)
                    checkpoint = ray.train.Checkpoint.from_directory(folder)
                ray.train.report(metrics, checkpoint=checkpoint)
        if rank == 0:
            queue.put({"event": "step", **metrics})
    if rank == 0:
        weights = {k: v.detach().cpu().contiguous() for k, v in bare.state_dict().items()}
        RunStore(cfg["uri"]).write_bytes(f"{MODEL}/{cfg['flavour']}.safetensors", save_safetensors(weights))


def fit(store: RunStore, config: TrainConfig, flavour: str, data: Dataset) -> dict:
    """Train one flavour on Ray Train (resuming from its latest checkpoint); what happened, for the manifest."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    t0 = time.perf_counter()
    queue = Queue(actor_options={"num_cpus": 0})
    rows = data.train
    loop = {
        "uri": store.uri,
        "flavour": flavour,
        "model": config.model,
        "classes": data.classes,
        "b": config.b if flavour == "bcos" else None,
        "texts": [data.texts[i] for i in rows],
        "targets": [data.classes.index(data.labels[i]) for i in rows],
        "cpus": config.cpus_per_worker,
        "progress": queue,
        "checkpoint_every": config.checkpoint_every,
        **{k: getattr(config, k) for k in ("epochs", "batch", "lr", "weight_decay", "warmup", "max_length", "seed")},
    }
    storage = {"storage_path": store.path(CHECKPOINTS)}
    if not store.local:  # Ray Train writes through the same filesystem (endpoint, credentials) as the store
        storage["storage_filesystem"] = store.shareable_fs()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop,
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=config.gpu, resources_per_worker={"CPU": config.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=flavour,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            worker_runtime_env={"env_vars": storage_env(store.uri)},
            **storage,
        ),
    )
    starts: list[int] = []
    done = threading.Event()

    def show() -> None:
        progress, first = None, 0
        while not done.is_set() or not queue.empty():
            try:
                event = queue.get(timeout=0.5)
            except Empty:
                continue
            if event["event"] == "start":
                starts.append(event["step"])
                if progress is None:
                    progress, first = Progress(event["steps"] - event["step"], flavour, "steps"), event["step"]
                else:
                    print(f"{flavour}: workers restarted, resuming from step {event['step']}", file=sys.stderr)
            elif progress is not None:
                progress.update(event["step"] - first - progress.done)

    reader = threading.Thread(target=show, daemon=True)
    reader.start()
    try:
        result = trainer.fit()
    except Exception as err:  # Ray Train wraps the worker's error; show the worker's own message
        raise RuntimeError(f"{flavour} training failed: {err}") from err
    finally:
        done.set()
        reader.join()
        ray.kill(queue.actor)
    return {
        "steps": int(result.metrics["step"]),
        "loss": float(result.metrics["loss"]),
        "resumed_from": [s for s in starts if s > 0],
        "seconds": time.perf_counter() - t0,
    }


@ray.remote
def evaluate(uri: str, texts: list[str], max_length: int, cpus: int, batch: int = 64) -> dict:
    """Both models' predictions on the test texts, and the B-cos contributions for its predicted class."""
    _use_cpus(cpus)
    device, out = default_device(), {}
    for flavour in FLAVOURS:
        model, tokenizer, _ = load_model(uri, flavour)
        model.to(device)
        ids, mask = encode(tokenizer, texts, max_length)
        probs = predict(model, ids.to(device), mask.to(device), batch).cpu()
        out[flavour] = probs.numpy()
        if flavour == "bcos":
            target = probs.argmax(1)
            parts = [slice(i, i + batch) for i in range(0, len(ids), batch)]
            contrib, logits = zip(
                *(contributions(model, ids[p].to(device), mask[p].to(device), target[p].to(device)) for p in parts)
            )
            contrib, lengths = torch.cat(contrib).cpu(), mask.sum(1)
            out["tokens"] = [tokenizer.convert_ids_to_tokens(ids[i, : lengths[i]]) for i in range(len(ids))]
            out["contributions"] = [contrib[i, : lengths[i]].tolist() for i in range(len(ids))]
            out["logits"] = torch.cat(logits).cpu().tolist()
    return out


def train(config: TrainConfig, address: str | None = None) -> dict:
    """Fine-tune the B-cos and the conventional model, score both on the test split; the manifest."""
    t0 = time.perf_counter()
    # Every check that loads no weights first: the dataset, B, the checkpoint's config and tokenizer, storage.
    data = read_dataset(config)
    bert = base_config(config.model)
    if config.max_length > bert.max_position_embeddings:
        raise ValueError(
            f"bcos option max_length = {config.max_length}; {config.model!r} has only "
            f"{bert.max_position_embeddings} positions"
        )
    tokenizer = load_base_tokenizer(config.model)
    key = config.key(data.texts)
    store = prepare_store(config, key)
    store.write_json(SETTINGS, {"key": key, "settings": dataclasses.asdict(config)})
    store.delete(MANIFEST)  # an earlier run's: the manifest marks a finished run, and this one is not yet
    if not store.exists(f"{MODEL}/config.json"):
        save_tokenizer(store, tokenizer)
        bcos = BertClassifier(bert, data.classes, config.b)
        store.write_json(f"{MODEL}/config.json", {**model_config(bcos), "max_length": config.max_length})
    training = {}
    started = connect(address)
    try:
        for flavour in FLAVOURS:
            if store.exists(f"{MODEL}/{flavour}.safetensors"):  # trained by an earlier run of these settings
                training[flavour] = {"steps": None, "loss": None, "resumed_from": [], "seconds": 0.0}
                continue
            training[flavour] = fit(store, config, flavour, data)
        print("evaluating both models on the test split", file=sys.stderr)
        options = {"num_cpus": config.cpus_per_worker, "num_gpus": 1 if config.gpu else 0}
        test_texts = [data.texts[i] for i in data.test]
        remote = evaluate.options(**options).remote(store.uri, test_texts, config.max_length, config.cpus_per_worker)
        scored = ray.get(remote)
    finally:
        if started:
            ray.shutdown()
    truth = [data.labels[i] for i in data.test]
    results, rows = [], []
    predicted = {f: [data.classes[j] for j in scored[f].argmax(1)] for f in FLAVOURS}
    for flavour in FLAVOURS:
        results.append(
            {
                "method": flavour,
                "pooling": None,
                "binarised": None,
                "macro_f1": float(f1_score(truth, predicted[flavour], average="macro")),
                "accuracy": float(accuracy_score(truth, predicted[flavour])),
                "b": config.b if flavour == "bcos" else None,
                "n_train": len(data.train),
                "n_test": len(data.test),
                **{k: training[flavour][k] for k in ("steps", "seconds")},
                "resumed_from": training[flavour]["resumed_from"],
            }
        )
    for n, i in enumerate(data.test):
        rows.append(
            {
                "row": int(i),
                "text": data.texts[i],
                "label": data.labels[i],
                **{f"{f}_class": predicted[f][n] for f in FLAVOURS},
                **{f"{f}_probability": float(scored[f][n].max()) for f in FLAVOURS},
                "tokens": scored["tokens"][n],
                "contributions": scored["contributions"][n],
                "logit": scored["logits"][n],
            }
        )
    store.write_table(RESULTS, "results.parquet", pa.Table.from_pylist(results, schema=RESULTS_SCHEMA))
    store.write_table(TEST, "test.parquet", pa.Table.from_pylist(rows, schema=TEST_SCHEMA))
    summary = {
        "dataset": config.dataset,
        "text_col": config.text_col,
        "label_col": config.label_col,
        "results": [{k: r[k] for k in RESULT_KEYS} for r in results],
    }
    store.write_json(SUMMARY, summary)
    manifest = {
        "uri": config.out,
        "settings": dataclasses.asdict(config),
        "key": key,
        "texts": len(data.texts),
        "classes": data.classes,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "results": results,
        "training": training,
        "seconds": time.perf_counter() - t0,
        "versions": _versions(),
        "command": " ".join(sys.argv),
    }
    store.write_json(MANIFEST, manifest)
    return manifest


def read_bcos(uri: str) -> tuple[dict, dict, pa.Table]:
    """(summary, manifest, test table) of a finished `toklabel bcos train`."""
    store = RunStore(uri)
    if not store.exists(MANIFEST) or not store.exists(SUMMARY):
        raise FileNotFoundError(
            f"{uri} holds no finished B-cos run (no {SUMMARY} and {MANIFEST}): run toklabel bcos train"
        )
    return store.read_json(SUMMARY), store.read_json(MANIFEST), store.read_table(TEST, "test.parquet")


def markdown(manifest: dict) -> str:
    """Accuracy and macro F1 of both models."""
    s = manifest["settings"]
    lines = [
        f"# toklabel bcos: {s['dataset']} on {s['model']}",
        "",
        f"{manifest['texts']} texts, {len(manifest['classes'])} classes; {manifest['n_train']} train / "
        f"{manifest['n_test']} test (stratified, seed {s['seed']}); {s['epochs']} epochs, batch {s['batch']}, "
        f"lr {s['lr']:g}, max length {s['max_length']}, B = {s['b']:g}.",
        "",
        "| model | accuracy | macro F1 | steps | training time |",
        "|---|---|---|---|---|",
    ]
    for r in manifest["results"]:
        resumed = f" (resumed at step {', '.join(map(str, r['resumed_from']))})" if r["resumed_from"] else ""
        steps = r["steps"] if r["steps"] is not None else "done before"
        lines.append(
            f"| {r['method']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {steps} "
            f"| {format_seconds(r['seconds'])}{resumed} |"
        )
    return "\n".join(lines) + "\n"


# Explanations in the terminal.

# 256-colour backgrounds: blues for negative contributions, pale to strong; oranges for positive ones.
NEGATIVE_SHADES = (195, 153, 117, 75, 33)
POSITIVE_SHADES = (230, 223, 216, 209, 202)


def explain_text(uri: str, text: str, target: str | None = None) -> dict:
    """The B-cos model's prediction for `text` and each token's contribution to the logit of `target` (default:
    the predicted class)."""
    model, tokenizer, config = load_model(uri, "bcos")
    ids, mask = encode(tokenizer, [text], config["max_length"])
    probs = predict(model, ids, mask)[0]
    if target is not None and target not in model.classes:
        raise ValueError(f"class {target!r} is not one of the model's classes {model.classes}")
    index = model.classes.index(target) if target is not None else int(probs.argmax())
    contrib, logit = contributions(model, ids, mask, torch.tensor([index]))
    return {
        "tokens": tokenizer.convert_ids_to_tokens(ids[0]),
        "contributions": contrib[0].tolist(),
        "logit": float(logit[0]),
        "class": model.classes[index],
        "predicted": model.classes[int(probs.argmax())],
        "probabilities": dict(zip(model.classes, probs.tolist())),
    }


def render_explanation(e: dict, color: bool) -> str:
    """Tokens shaded by contribution (orange for, blue against the class), or marked word[+0.12] without colour."""
    peak = max((abs(c) for c in e["contributions"]), default=0.0) or 1.0
    out = []
    for piece, token, c in zip(readable_pieces(e["tokens"]), e["tokens"], e["contributions"]):
        if token in SPECIAL_TOKENS:
            continue
        space, word = piece[: len(piece) - len(piece.lstrip())], piece.lstrip()
        if color:
            shades = POSITIVE_SHADES if c > 0 else NEGATIVE_SHADES
            shade = shades[min(len(shades) - 1, int(abs(c) / peak * len(shades)))]
            out.append(f"{space}\033[38;5;16;48;5;{shade}m{word}\033[0m")
        else:
            out.append(f"{space}{word}[{c:+.2f}]")
    p = e["probabilities"]
    ranked = sorted(((c, t) for t, c in zip(e["tokens"], e["contributions"]) if t not in SPECIAL_TOKENS), reverse=True)
    lines = [
        f"predicted {e['predicted']} (p = {p[e['predicted']]:.3f}); explaining {e['class']}: logit {e['logit']:.4f}"
        f" = sum of token contributions {sum(e['contributions']):.4f}",
        "",
        "".join(out),
        "",
        "strongest for:     " + ("  ".join(f"{t} {c:+.3f}" for c, t in ranked[:5] if c > 0) or "none"),
        "strongest against: " + ("  ".join(f"{t} {c:+.3f}" for c, t in ranked[::-1][:5] if c < 0) or "none"),
    ]
    return "\n".join(lines)


# Command-line handlers (registered in pipeline/cli.py).

TRAIN_OPTIONS = [f.name for f in dataclasses.fields(TrainConfig)]


def cmd_train(args) -> None:
    config = TrainConfig(**{k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k, None) is not None})
    manifest = train(config, args.address)
    print(markdown(manifest))
    print(f"outputs in {manifest['uri']}", file=sys.stderr)


def cmd_explain(args) -> None:
    color = sys.stdout.isatty() if args.color == "auto" else args.color == "always"
    print(render_explanation(explain_text(args.uri, args.text, getattr(args, "class")), color))


COMMANDS = {"train": cmd_train, "explain": cmd_explain}
