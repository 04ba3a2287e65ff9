"""Discriminators: one interface (`base.Discriminator`), one file per kind of model, and the registry that
picks the kind from a model's config."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from transformers import AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from workers.discriminators.base import LABEL_SLOT, Discriminator
from workers.discriminators.causal import (
    CHAT_TEMPLATE,
    PLAIN_TEMPLATE,
    TEXT_SLOT,
    CausalLMDiscriminator,
    CausalPrompt,
    PrefixCache,
)
from workers.discriminators.embedding import READOUTS, EmbeddingDiscriminator, EncodedTexts, sentence_pooling
from workers.models import load_tokenizer, resolve_model
from workers.vocab import label_vocab

__all__ = [
    "CHAT_TEMPLATE",
    "PLAIN_TEMPLATE",
    "CausalPrompt",
    "DISCRIMINATORS",
    "LABEL_SLOT",
    "READOUTS",
    "TEXT_SLOT",
    "CausalLMDiscriminator",
    "Discriminator",
    "EmbeddingDiscriminator",
    "EncodedTexts",
    "PrefixCache",
    "check_discriminator",
    "discriminator_kind",
    "load_discriminator",
]

DISCRIMINATORS: dict[str, Callable[..., Discriminator]] = {
    "embedding": EmbeddingDiscriminator,
    "causal-lm": CausalLMDiscriminator,
}


# Architectures of models that are not text-only decoders or sentence encoders (vision-language models,
# encoder-decoders): refused rather than read as an encoder.
UNSUPPORTED = ("ForConditionalGeneration", "ForSeq2SeqLM", "ForVisionText2Text", "ForImageTextToText")


def discriminator_kind(name: str, config=None) -> str:
    """ "causal-lm" or "embedding": the kind of discriminator model `name` makes, from its config (read when not
    given) and, for encoders, its sentence-transformers files; ValueError for a model of no known kind."""
    config = AutoConfig.from_pretrained(resolve_model(name)) if config is None else config
    architectures = config.architectures or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) or (
        not architectures and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ):
        return "causal-lm"
    if any(a.endswith(UNSUPPORTED) for a in architectures):
        raise ValueError(
            f"it is a {architectures[0]} (multimodal or encoder-decoder): not supported; expected a text causal LM "
            "(...ForCausalLM) or a sentence encoder"
        )
    if sentence_pooling(name) is None:
        raise ValueError(
            f"it is a {(architectures or [config.model_type])[0]} without a sentence-embedding pooling: expected a "
            "causal LM (...ForCausalLM) or a sentence-transformers encoder (modules.json with a Pooling module)"
        )
    return "embedding"


def _check_options(kind: str, options: dict) -> None:
    accepted = inspect.signature(DISCRIMINATORS[kind].__init__).parameters
    for key in options:
        if key not in accepted:
            others = [k for k, cls in DISCRIMINATORS.items() if key in inspect.signature(cls.__init__).parameters]
            owner = f"for {' and '.join(others)} discriminators" if others else "unknown"
            raise ValueError(
                f"option {key!r} is {owner}; this is {'an' if kind[0] in 'aeiou' else 'a'} {kind} discriminator"
            )


def check_discriminator(name: str, label_tokens: int = 1, **options) -> None:
    """Refuse a discriminator that cannot be loaded, is of no known kind, offers no label vocabulary, does not
    take `options` (template, readout, answers, ...), or has too few positions for labels of `label_tokens`
    tokens, reading only its config and tokenizer (no weights), so that bad input fails before any work."""
    try:
        config = AutoConfig.from_pretrained(resolve_model(name))
        tokenizer = load_tokenizer(name)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"discriminator {name!r} cannot be loaded ({str(err).splitlines()[0]}); expected 'minilm', "
            "a Hugging Face model folder, or a hub name where the network allows"
        ) from err
    try:
        kind = discriminator_kind(name, config)
        _check_options(kind, options)
        label_vocab(tokenizer)
        DISCRIMINATORS[kind].preflight(name, config, tokenizer, label_tokens, **options)
    except ValueError as err:
        raise ValueError(f"discriminator {name!r}: {err}") from err


def load_discriminator(name: str, kind: str = "auto", **options) -> Discriminator:
    """Build a discriminator around model `name` ("minilm" = the bundled MiniLM); kind auto-detected; `options`
    (template, readout, device, ...) go to its constructor."""
    kind = discriminator_kind(name) if kind == "auto" else kind
    if kind not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator kind {kind!r}; expected one of {sorted(DISCRIMINATORS)}")
    _check_options(kind, options)
    return DISCRIMINATORS[kind](name, **options)
