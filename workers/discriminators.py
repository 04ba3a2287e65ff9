"""Discriminators: frozen language models that predict, from a label, whether a feature fires on a text.

Every discriminator maps label embeddings [features, K, d] (points in its input-embedding space, so a
label may be a superposition of tokens) and each feature's example texts to one raw logit per
(feature, example). Per-text work is done once in `encode_texts` and reused at every optimiser step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F

from workers.models import MINILM, load_encoder, load_tokenizer

LABEL_SLOT = "{label}"
TEXT_CACHE_SIZE = 200_000  # text embeddings kept per discriminator (~300 MB at d=384)


class Discriminator(ABC):
    """A frozen model that scores (label, text) pairs; see the module docstring."""

    name: str
    tokenizer: object

    @property
    @abstractmethod
    def embedding_matrix(self) -> torch.Tensor:
        """Input embeddings [vocab, d]; a label embedding is a mixture of its rows."""

    @abstractmethod
    def check_label_tokens(self, k: int) -> None:
        """Raise ValueError when labels of k tokens do not fit the model and template."""

    @abstractmethod
    def encode_texts(self, texts: list[str]) -> object:
        """Per-text state computed once (embeddings, key-value caches)."""

    @abstractmethod
    def logits(self, label_embeds: torch.Tensor, texts: object, index: torch.Tensor) -> torch.Tensor:
        """Raw logits [F, n] for labels [F, K, d] against texts `index` [F, n] of the encoded set."""

    def token_logits(self, token_ids: torch.Tensor, texts: object, index: torch.Tensor) -> torch.Tensor:
        """Raw logits [F, T, n] of every single-token label in `token_ids` [T] (exhaustive search)."""
        emb = self.embedding_matrix[token_ids][:, None, :]
        rows = [self.logits(emb, texts, index[f].expand(len(token_ids), -1)) for f in range(len(index))]
        return torch.stack(rows)


class EmbeddingDiscriminator(Discriminator):
    """Sentence-embedding encoder (sentence-transformers style): logit = cos(label, text).

    Text embeddings are computed once; a step runs only the template with its K label slots through
    the encoder.
    """

    def __init__(self, model: str = MINILM, template: str = LABEL_SLOT, max_length: int = 128, batch_size: int = 64):
        if template.count(LABEL_SLOT) != 1:
            raise ValueError(f"template {template!r} must contain {LABEL_SLOT} exactly once")
        self.name = model
        self.template = template
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(model)
        self.model = load_encoder(model)
        self._embedding = self.model.get_input_embeddings().weight.detach()
        self._prefix, self._suffix = self._template_ids(*template.split(LABEL_SLOT))
        self._vocab_cache: dict[tuple, torch.Tensor] = {}
        self._text_cache: dict[str, torch.Tensor] = {}

    def _template_ids(self, before: str, after: str) -> tuple[torch.Tensor, torch.Tensor]:
        # Tokenise the template with a marker word in the slot and cut around it, so special tokens
        # ([CLS], [SEP]) land where the tokenizer would put them.
        marker = "[MASK]" if self.tokenizer.mask_token else "X"
        ids = self.tokenizer(f"{before}{marker}{after}")["input_ids"]
        marker_id = self.tokenizer.convert_tokens_to_ids(marker)
        pos = ids.index(marker_id)
        return torch.tensor(ids[:pos]), torch.tensor(ids[pos + 1 :])

    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self._embedding

    def check_label_tokens(self, k: int) -> None:
        n = len(self._prefix) + k + len(self._suffix)
        limit = self.model.config.max_position_embeddings
        if k < 1 or n > limit:
            raise ValueError(
                f"label_tokens={k} does not fit {self.name} with template {self.template!r}: "
                f"need 1 <= K and {n} <= {limit} positions"
            )

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        # Shards share many contexts (the negative pool above all), so embeddings are kept across calls.
        todo = sorted({t for t in texts if t not in self._text_cache}, key=len)
        if len(self._text_cache) + len(todo) > TEXT_CACHE_SIZE:
            self._text_cache.clear()
            todo = sorted(set(texts), key=len)
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            batch = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            hidden = self.model(**batch).last_hidden_state
            self._text_cache.update(zip(chunk, F.normalize(_mean_pool(hidden, batch["attention_mask"]), dim=-1)))
        if not texts:
            return torch.zeros(0, self._embedding.shape[1])
        return torch.stack([self._text_cache[t] for t in texts])

    def encode_labels(self, label_embeds: torch.Tensor) -> torch.Tensor:
        """Unit sentence embeddings [F, d] of labels [F, K, d] placed in the template."""
        n = label_embeds.shape[0]
        prefix = self._embedding[self._prefix].expand(n, -1, -1)
        suffix = self._embedding[self._suffix].expand(n, -1, -1)
        inputs = torch.cat([prefix, label_embeds, suffix], dim=1)
        mask = torch.ones(inputs.shape[:2], dtype=torch.long)
        hidden = self.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        return F.normalize(_mean_pool(hidden, mask), dim=-1)

    def logits(self, label_embeds: torch.Tensor, texts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.einsum("fd,fnd->fn", self.encode_labels(label_embeds), texts[index])

    @torch.no_grad()
    def token_logits(self, token_ids: torch.Tensor, texts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # Every token's label embedding is computed once per vocabulary and shared by all features.
        key = tuple(token_ids.tolist())
        if key not in self._vocab_cache:
            emb = self._embedding[token_ids][:, None, :]
            self._vocab_cache = {
                key: torch.cat([self.encode_labels(emb[i : i + 1024]) for i in range(0, len(emb), 1024)])
            }
        return torch.einsum("td,fnd->ftn", self._vocab_cache[key], texts[index])


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


DISCRIMINATORS: dict[str, Callable[..., Discriminator]] = {"embedding": EmbeddingDiscriminator}


def load_discriminator(name: str, kind: str = "embedding", **options) -> Discriminator:
    """Build a discriminator of `kind` around model `name` ("minilm" = the bundled MiniLM)."""
    if kind not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator kind {kind!r}; expected one of {sorted(DISCRIMINATORS)}")
    return DISCRIMINATORS[kind](name, **options)
