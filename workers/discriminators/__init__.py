"""Discriminators: one interface (`base.Discriminator`), one file per kind of model, and the registry that
picks the kind from a model's config."""

from __future__ import annotations

from collections.abc import Callable

from transformers import AutoConfig

from workers.discriminators.base import LABEL_SLOT, Discriminator, check_fits
from workers.discriminators.causal import CAUSAL_TEMPLATE, TEXT_SLOT, CausalLMDiscriminator, PrefixCache
from workers.discriminators.embedding import READOUTS, EmbeddingDiscriminator, EncodedTexts
from workers.models import load_tokenizer, resolve_model
from workers.vocab import label_vocab

__all__ = [
    "CAUSAL_TEMPLATE",
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


def discriminator_kind(name: str, config=None) -> str:
    """ "causal-lm" for a model whose config (read when not given) names a causal-LM architecture, else
    "embedding"."""
    config = AutoConfig.from_pretrained(resolve_model(name)) if config is None else config
    architectures = config.architectures or []
    return "causal-lm" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) else "embedding"


def check_discriminator(
    name: str, template: str | None = None, readout: str | None = None, label_tokens: int = 1
) -> None:
    """Refuse a discriminator that cannot be loaded, offers no label vocabulary, does not take `template` or
    `readout`, or has too few positions for labels of `label_tokens` tokens, reading only its config and
    tokenizer (no weights), so that bad input fails before any work."""
    try:
        config = AutoConfig.from_pretrained(resolve_model(name))
        kind = discriminator_kind(name, config)
        tokenizer = load_tokenizer(name)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"discriminator {name!r} cannot be loaded ({str(err).splitlines()[0]}); expected 'minilm', "
            "a Hugging Face model folder, or a hub name where the network allows"
        ) from err
    try:
        label_vocab(tokenizer)
        cls = DISCRIMINATORS[kind]
        template = cls.default_template if template is None else template
        cls.check_template(template)
        if readout is not None and kind != "embedding":
            raise ValueError(f"readout {readout!r} is for embedding models; a {kind} discriminator reads yes/no")
        positions = cls.prompt_positions(tokenizer, template, label_tokens, cls.default_max_length)
        check_fits(name, config, positions, label_tokens, template)
    except ValueError as err:
        raise ValueError(f"discriminator {name!r}: {err}") from err


def load_discriminator(name: str, kind: str = "auto", **options) -> Discriminator:
    """Build a discriminator around model `name` ("minilm" = the bundled MiniLM); kind auto-detected; `options`
    (template, readout, device, ...) go to its constructor."""
    kind = discriminator_kind(name) if kind == "auto" else kind
    if kind not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator kind {kind!r}; expected one of {sorted(DISCRIMINATORS)}")
    return DISCRIMINATORS[kind](name, **options)
