"""The run configuration: one dataclass whose attribute docstrings are the documentation of the YAML keys."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from workers.discriminators import READOUTS
from workers.namers import DEFAULT_NAMER, DEFAULT_PATTERNS, check_patterns
from workers.optimiser import MODES, OptimiserConfig

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Keys that change where or how fast a run goes, not what it finds (a feature's random draws depend on its id
# alone, and harvest chunks merge exactly).
UNHASHED = ("out", "actors", "gpus_per_actor", "features_per_batch", "pair_batch", "harvest_batch", "harvest_chunk")
DEMO_CONFIG = REPO / "data" / "configs" / "demo.yaml"


@dataclass
class RunConfig:
    """Everything a run needs: harvest + label + score."""

    out: str
    """run directory (local path) or s3://bucket/prefix"""
    sae: str | None = None
    """SAE folder or file: SAELens, EleutherAI sparsify (a layer folder) or Gemma Scope params.npz; needed to harvest"""
    corpus: str | None = None
    """.txt (a document per line) / .jsonl / .parquet with a text column, or hf:NAME[:CONFIG][:SPLIT]"""
    model: str | None = None
    """subject model the SAE was trained on; "minilm" = the bundled MiniLM; default: the SAE's own"""
    hook: str | None = None
    """hook point (blocks.L.hook_resid_post, ...) or module path; default: the SAE's own"""
    features: str | list[int] = "all"
    """all | "0-1023" | [1, 5, 9]"""
    discriminator: str = "minilm"
    """discriminator model: "minilm" (the bundled encoder) or a local folder / hub name"""
    label_tokens: int = 1
    """K, words per label"""
    optimiser: str = "st-gumbel"
    """st-gumbel | soft | exhaustive"""
    steps: int = 100
    """gradient steps per batch of features"""
    template: str | None = None
    """prompt around the label slot: "{label}" for embedding models, text first then label for causal LMs
    (default: the discriminator's own)"""
    readout: str | None = None
    """embedding discriminators: what a label is compared with: "sentence+word" (default; the text's sentence
    embedding and its best-matching word, summed), "sentence" or "word"; not for causal LMs"""
    tie_window: float = 0.05
    """labels this close to the best training AUROC are tied; the one most like the others is chosen"""
    naturalness_weight: float = 0.0
    """weight of the label's surprisal under a causal-LM discriminator's own next-token distribution"""
    namer: str = DEFAULT_NAMER
    """causal LM that proposes category names for each feature's tied labels, each verified by the
    discriminator: "smollm2" (the bundled SmolLM2-135M-Instruct), a folder or hub name, "discriminator" (a
    causal-LM discriminator names too), or "none" (the search's labels as they are)"""
    namer_patterns: list[str] | None = None
    """list patterns the namer completes, each with the slot {members} (default: "{members} are all kinds of"
    and "Q: What do {members} have in common? A: They are all")"""
    chat: bool | None = None
    """causal LMs: wrap the template in the model's chat template (default: where the model has one)"""
    answers: list[str] | None = None
    """causal LMs: the yes and the no word whose log-probability difference is the logit (default: [yes, no])"""
    dtype: str = "float32"
    """float32 | bfloat16 | float16: the discriminator's and the subject model's weights"""
    seed: int = 0
    text_column: str = "text"
    """column holding the text in .jsonl / .parquet corpora"""
    max_contexts: int | None = None
    """use at most this many documents of the corpus (its first ones)"""
    context_length: int = 64
    """tokens per context; longer documents are truncated (or cut, with split_documents)"""
    split_documents: bool = False
    """cut long documents into consecutive contexts of context_length tokens instead of truncating them"""
    min_context_tokens: int | None = None
    """drop contexts with fewer tokens than this; a run whose corpus has none that long is refused"""
    top_k: int = 40
    """top-activating contexts kept per feature"""
    quantile_bins: int = 5
    """activation-quantile examples: (0, max] of each feature split into this many equal bins; 0 = none"""
    quantile_per_bin: int = 2
    """contexts sampled per quantile bin (seeded, uniform among the feature's active contexts in the bin)"""
    random_negatives: int = 40
    """random non-activating contexts kept per feature"""
    hard_negatives: int = 0
    """non-activating pool contexts nearest (MiniLM embedding) to a feature's top contexts, per feature"""
    negative_pool: int = 4096
    """contexts sampled once per run, from which each feature's random negatives are drawn"""
    test_fraction: float = 0.3
    """share of each feature's examples held out for scoring"""
    shard_size: int = 256
    """features per shard (one Parquet file each in examples/ and labels/)"""
    features_per_batch: int = 128
    """features optimised together in one batch; bounds memory (a causal LM keeps the prefix caches of the
    batch's distinct texts)"""
    pair_batch: int | None = None
    """(feature, example) pairs per forward pass of the discriminator; bounds memory (default: the
    discriminator's own: 1024 for causal LMs, unbounded for embedding models)"""
    harvest_batch: int = 64
    """contexts per forward pass of the subject model"""
    harvest_chunk: int = 2048
    """contexts per harvest task"""
    actors: int | None = None
    """labeling and harvest actors; default: one per GPU (one per gpus_per_actor), else one per 2 CPUs"""
    gpus_per_actor: float | None = None
    """GPUs each actor asks Ray for (fractions share a GPU); default: 1 where the cluster has GPUs, else 0. Set it
    (with actors) on an autoscaling cluster that starts GPU nodes on demand"""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.answers, list):
            # YAML reads the words yes and no (unquoted) as booleans: `answers: [yes, no]` means the words.
            self.answers = [{True: "yes", False: "no"}.get(a, a) if isinstance(a, bool) else a for a in self.answers]
        checks = [
            (self.label_tokens in range(1, 5), "label_tokens", "an integer from 1 to 4"),
            (self.optimiser in MODES, "optimiser", f"one of {list(MODES)}"),
            (self.steps >= 1, "steps", "at least 1"),
            (self.readout is None or self.readout in READOUTS, "readout", f"one of {list(READOUTS)}"),
            (0 <= self.tie_window < 1, "tie_window", "at least 0 and below 1"),
            (self.dtype in DTYPES, "dtype", f"one of {list(DTYPES)}"),
            (self.pair_batch is None or self.pair_batch >= 1, "pair_batch", "at least 1"),
            (self.gpus_per_actor is None or self.gpus_per_actor >= 0, "gpus_per_actor", "0 or more"),
            (self.actors is None or self.actors >= 1, "actors", "at least 1"),
            (
                self.answers is None or (isinstance(self.answers, list) and len(self.answers) == 2),
                "answers",
                "a list of two words, the yes and the no",
            ),
            (isinstance(self.namer, str) and self.namer.strip(), "namer", "a model, 'discriminator' or 'none'"),
            (0 < self.test_fraction < 1, "test_fraction", "between 0 and 1"),
            (self.shard_size >= 1, "shard_size", "at least 1"),
            (self.features_per_batch >= 1, "features_per_batch", "at least 1"),
            (self.top_k >= 1, "top_k", "at least 1"),
            (self.random_negatives >= 1, "random_negatives", "at least 1"),
            (self.context_length >= 2, "context_length", "at least 2"),
            (self.quantile_bins >= 0, "quantile_bins", "0 or more"),
            (self.quantile_per_bin >= 0, "quantile_per_bin", "0 or more"),
            (self.hard_negatives >= 0, "hard_negatives", "0 or more"),
            (
                self.min_context_tokens is None or 1 <= self.min_context_tokens <= self.context_length,
                "min_context_tokens",
                f"between 1 and context_length={self.context_length}",
            ),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"config key {key!r} = {getattr(self, key)!r}; expected {expected}")
        if self.namer_patterns is not None:
            try:
                check_patterns(self.namer_patterns)
            except ValueError as err:
                raise ValueError(f"config key 'namer_patterns': {err}") from None
        if self.optimiser == "exhaustive" and self.label_tokens != 1:
            raise ValueError("config: optimiser 'exhaustive' needs label_tokens: 1")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> RunConfig:
        """Read a YAML config; relative paths in it are taken relative to the file; `overrides` win."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config file {path} must hold a mapping of keys, got {type(raw).__name__}")
        for key in ("sae", "corpus", "out", "model", "discriminator", "namer"):
            value = raw.get(key)
            if isinstance(value, str) and value.startswith(("./", "../")):
                raw[key] = str((path.parent / value).resolve())
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(known - {'extra'})}")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in raw
        ]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {missing}")
        return cls(**raw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """Hash of everything that changes the results: not where they are written, nor parallelism or batch
        sizes, so a run resumes after lowering one."""
        keys = {k: v for k, v in self.to_dict().items() if k not in UNHASHED}
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]

    def discriminator_options(self) -> dict:
        """The discriminator options this config sets (template, readout, ...); the rest are the model's
        defaults. `dtype` is not among them: it goes to every model, see `torch_dtype`."""
        keys = ("template", "readout", "chat", "answers", "pair_batch")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    @property
    def patterns(self) -> tuple[str, ...]:
        """The namer's list patterns."""
        return tuple(self.namer_patterns) if self.namer_patterns is not None else DEFAULT_PATTERNS

    @property
    def torch_dtype(self):
        return DTYPES[self.dtype]

    def optimiser_config(self) -> OptimiserConfig:
        return OptimiserConfig(
            mode=self.optimiser,
            label_tokens=self.label_tokens,
            steps=self.steps,
            seed=self.seed,
            naturalness_weight=self.naturalness_weight,
            tie_window=self.tie_window,
        )


def parse_features(spec: str | int | list[int], n_latents: int) -> list[int]:
    """Feature ids from "all", "A-B" (inclusive), "A,B,C", one id, or a list; each checked against the SAE."""
    if isinstance(spec, str):
        text = spec.strip()
        if text == "all":
            return list(range(n_latents))
        try:
            if "-" in text and "," not in text:
                lo, hi = (int(x) for x in text.split("-"))
                ids = list(range(lo, hi + 1))
            else:
                ids = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"features {spec!r}: expected 'all', a range like '0-1023' or ids like '1,5,9'") from None
    elif isinstance(spec, int):
        ids = [spec]
    else:
        ids = [int(x) for x in spec]
    bad = [i for i in ids if not 0 <= i < n_latents]
    if bad or not ids:
        raise ValueError(
            f"features {spec!r}: ids must lie in 0..{n_latents - 1} (the SAE's latents); got {bad[:5] or 'none'}"
        )
    return sorted(set(ids))
