"""The discriminator interface: a frozen language model that predicts, from a label, whether a feature
fires on a text.

Every discriminator maps label embeddings [features, K, d] (points in its input-embedding space, so a
label may be a superposition of tokens) and each feature's example texts to one raw logit per
(feature, example). Per-text work is done once in `encode_texts` and reused at every optimiser step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

LABEL_SLOT = "{label}"


def check_fits(name: str, config, positions: int, k: int, template: str) -> None:
    """Refuse labels of k tokens when the prompt needs more positions than model `name`'s `config` has."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
    if k < 1 or positions > limit:
        raise ValueError(
            f"label_tokens={k} does not fit {name} with template {template!r}: "
            f"need 1 <= K and {positions} <= {limit} positions"
        )


class Discriminator(ABC):
    """A frozen model that scores (label, text) pairs; see the module docstring."""

    name: str
    tokenizer: object
    model: object
    template: str
    max_length: int
    pair_batch: int = 1 << 30
    """(feature, example) pairs per forward pass; bounds memory of models that see each pair"""

    @classmethod
    @abstractmethod
    def preflight(cls, name: str, config, tokenizer, label_tokens: int = 1, **options) -> None:
        """Raise ValueError when model `name` (its `config` and `tokenizer`, no weights) cannot take `options`
        (template, readout, answers, ...) or labels of `label_tokens` tokens."""

    @abstractmethod
    def check_label_tokens(self, k: int) -> None:
        """Raise ValueError when labels of k tokens do not fit the model and template."""

    @property
    def device(self) -> torch.device:
        return self.model.device

    def embed_tokens(self, token_ids) -> torch.Tensor:
        """Input embeddings [..., d] of token ids as the model's own input-embedding module gives them (some
        scale them, as Gemma does by sqrt(d)); a label embedding is a mixture of such rows."""
        with torch.no_grad():
            return self.model.get_input_embeddings()(torch.as_tensor(token_ids, device=self.device))

    @abstractmethod
    def encode_texts(self, texts: list[str]) -> object:
        """Per-text state computed once (embeddings, key-value caches)."""

    @abstractmethod
    def logits(
        self, label_embeds: torch.Tensor, texts: object, index: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw logits [F, n] for labels [F, K, d] against texts `index` [F, n] of the encoded set. Where `mask`
        [F, n] is False the pair is not needed: a model that sees each pair skips it (its logit is 0)."""

    @torch.no_grad()
    def score(
        self, label_embeds: torch.Tensor, texts: object, index: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`logits` without gradients, at most `pair_batch` pairs per forward pass."""
        step = max(1, self.pair_batch // max(index.shape[1], 1))
        parts = [
            self.logits(
                label_embeds[i : i + step], texts, index[i : i + step], None if mask is None else mask[i : i + step]
            )
            for i in range(0, len(index), step)
        ]
        return torch.cat(parts)

    def label_prior(
        self, vocab: torch.Tensor, texts: object, index: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor | None:
        """Log-probabilities [F, V'] the model itself gives each label-vocabulary token in the first label
        slot after each feature's texts (weighted by `weight` [F, n]); None when it has no such view."""
        return None

    def token_states(self, token_ids: torch.Tensor) -> torch.Tensor | None:
        """The model's own representation [T, s] of each single-token label where a label meets the texts only
        through such a vector (see `state_logits`), so that a mixture of tokens can be scored as the mixture of
        their states; None where label and text meet inside the model."""
        return None

    def state_logits(self, states: torch.Tensor, texts: object, index: torch.Tensor) -> torch.Tensor:
        """Raw logits [F, n] of label states [F, s] (see `token_states`) against texts `index` [F, n]."""
        raise TypeError(f"{type(self).__name__} meets labels and texts inside the model: it has no label states")

    def token_logits(self, token_ids: torch.Tensor, texts: object, index: torch.Tensor) -> torch.Tensor:
        """Raw logits [F, T, n] of every single-token label in `token_ids` [T] (exhaustive search)."""
        emb = self.embed_tokens(token_ids)[:, None, :]
        return torch.stack([self.score(emb, texts, index[f].expand(len(token_ids), -1)) for f in range(len(index))])
