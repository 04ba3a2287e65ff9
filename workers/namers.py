"""Namers: propose the category that a feature's tied candidate labels share.

The search ends with several labels that predict a feature about equally well: often members or neighbours
of one concept ("horse", "dogs", "livestock") rather than its name ("mammals"). A namer reads them as a list
and proposes words that name what they share; it also says how well each given candidate names the others.
The labeler then verifies every proposal with the discriminator (see `workers.labeler`).

One interface (`Namer`), one implementation per kind of model, and the registry that picks it: the default is
a small instruction-tuned causal LM (the bundled SmolLM2-135M-Instruct) read through list patterns such as
"A, B and C are all kinds of ___": the next-token distribution at the slot scores every word of the
label vocabulary at once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import AutoConfig

from workers.discriminators import CausalLMDiscriminator, discriminator_kind
from workers.models import SMOLLM2, left_pad, load_causal_lm, load_tokenizer, resolve_model
from workers.vocab import label_vocab, label_words

MEMBERS_SLOT = "{members}"
DEFAULT_NAMER = SMOLLM2
DEFAULT_PATTERNS = (
    "{members} are all kinds of",
    "Q: What do {members} have in common? A: They are all",
)
MEMBERS = 6
"""candidate labels of a feature listed in the patterns, best first: half in each of two prompts"""
EXTEND = 4
"""labels of several words: the best one-word proposals extended by a word each"""
COMPOUND = 0.1
"""a second word joins a proposal where the namer gives it at least this probability after the first"""
STEM = 4
"""letters two words share at the start when they are forms of one word ("animal", "animals")"""
MIN_WORDS = 100
"""a namer whose tokenizer writes fewer label-vocabulary words as one token is refused"""


@dataclass
class Naming:
    """What a namer says of one feature's candidates."""

    proposals: list[tuple[str, float]]
    """labels not among the candidates that name what the candidates share, with the namer's score, best first"""
    scores: dict[str, float]
    """the namer's score of each candidate it can read, as the name of the other candidates"""


class Namer(ABC):
    """Proposes category labels for lists of candidate labels; see the module docstring."""

    name: str

    @abstractmethod
    def name_features(self, candidates: list[list[str]], top: int, max_words: int = 1) -> list[Naming]:
        """For each feature's candidate labels (best first), `top` proposals of at most `max_words` words each,
        and the score of every candidate; one batch over all the features."""


def format_members(words: list[str]) -> str:
    """A list as a sentence writes it: "a, b and c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def check_patterns(patterns) -> tuple[str, ...]:
    """The patterns as a tuple; ValueError for none, or for one without its slot once at its end."""
    patterns = tuple(patterns)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"namer_patterns {list(patterns)!r}: expected a list of text patterns")
    for p in patterns:
        if p.count(MEMBERS_SLOT) != 1:
            raise ValueError(
                f"namer pattern {p!r} must hold the slot {MEMBERS_SLOT} once, e.g. '{DEFAULT_PATTERNS[0]}'"
            )
        if not p.split(MEMBERS_SLOT)[1].strip():
            raise ValueError(
                f"namer pattern {p!r}: the category is the word after the pattern, so text must follow "
                f"{MEMBERS_SLOT} (e.g. '{DEFAULT_PATTERNS[0]}')"
            )
    return patterns


class CausalLMNamer(Namer):
    """A causal LM read through list patterns.

    A feature's first `MEMBERS` candidates are split into two halves, each listed in every pattern; the
    next-token log-probability of each word (its lower-case and capitalised single-token forms, summed) is
    averaged over patterns. Proposals are the best words of both halves' average; a candidate is scored by the
    prompts of the half it is not listed in, so that no word is judged by a list that already holds it.
    Labels of two or more words extend the best one-word proposals by a word each."""

    def __init__(
        self,
        model: str,
        words: list[str],
        patterns=DEFAULT_PATTERNS,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 64,
        lm=None,
        tokenizer=None,
    ):
        self.name = model
        self.patterns = check_patterns(patterns)
        self.tokenizer = load_tokenizer(model) if tokenizer is None else tokenizer
        self.model = load_causal_lm(model, device, dtype) if lm is None else lm
        self.batch_size = batch_size
        self.words = list(words)
        self.word_index = {w: i for i, w in enumerate(self.words)}
        self._forms, self._form_mask = word_forms(self.tokenizer, self.words)
        self._readable = self._form_mask.any(-1)
        self._forms, self._form_mask = self._forms.to(self.device), self._form_mask.to(self.device)
        self._readable = self._readable.to(self.device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @classmethod
    def preflight(cls, name: str, words: list[str], patterns=DEFAULT_PATTERNS, tokenizer=None) -> None:
        """Raise ValueError when namer `name` (its config and tokenizer, no weights) is no causal LM, its
        patterns lack their slot, or its tokenizer writes too few of the label vocabulary's words."""
        check_patterns(patterns)
        if tokenizer is None:
            config = AutoConfig.from_pretrained(resolve_model(name))
            architectures = config.architectures or []
            if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
                raise ValueError(f"it is a {(architectures or [config.model_type])[0]}; a namer is a causal LM")
            tokenizer = load_tokenizer(name)
        _, mask = word_forms(tokenizer, words)
        readable = int(mask.any(-1).sum())
        if readable < min(MIN_WORDS, len(words)):
            raise ValueError(
                f"its tokenizer writes only {readable} of the label vocabulary's {len(words)} words as a single "
                f"token; a namer needs a tokenizer with whole-word tokens (at least {MIN_WORDS})"
            )

    def name_features(self, candidates: list[list[str]], top: int, max_words: int = 1) -> list[Naming]:
        halves = [_halves(c[:MEMBERS]) for c in candidates]
        prompts = [p.replace(MEMBERS_SLOT, format_members(h)) for hs in halves for h in hs for p in self.patterns]
        n_pat = len(self.patterns)
        word_lp = self._word_logprobs(prompts).view(len(candidates), 2, n_pat, -1).mean(2)  # [F, 2, W]
        out = []
        for f, (cands, hs) in enumerate(zip(candidates, halves)):
            mean = word_lp[f].mean(0)
            listed = {w: 1 - h for h, half in enumerate(hs) for w in half}  # the half a listed word is judged by
            scores = {}
            for c in cands:
                i = self.word_index.get(c)
                if i is not None and self._readable[i]:
                    scores[c] = float(word_lp[f, listed[c], i] if c in listed else mean[i])
            taken = set(cands)
            order = mean.masked_fill(~self._readable, float("-inf")).argsort(descending=True)[: top + len(taken)]
            proposals = [(self.words[i], float(mean[i])) for i in order.tolist() if self.words[i] not in taken][:top]
            out.append(Naming(proposals, scores))
        if max_words > 1:
            first = self.patterns[0]
            self._extend(out, [first.replace(MEMBERS_SLOT, format_members(hs[0])) for hs in halves])
        return out

    @torch.no_grad()
    def _word_logprobs(self, prompts: list[str], continuations: list[list[int]] | None = None) -> torch.Tensor:
        """log p [N, W] of each word (any of its forms) as the next word after prompt n (plus its continuation
        tokens, when given); words without a single-token form read -inf."""
        rows = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        if continuations is not None:
            rows = [r + c for r, c in zip(rows, continuations)]
        # Batches of prompts of about one length: the forward passes run little padding.
        order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
        out = torch.empty(len(rows), len(self.words), device=self.device)
        for i in range(0, len(rows), self.batch_size):
            part = order[i : i + self.batch_size]
            ids, mask = left_pad([rows[r] for r in part], self.tokenizer, self.device)
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1
            ).logits[:, -1]
            log_p = torch.log_softmax(logits.float(), -1)
            forms = log_p[:, self._forms].masked_fill(~self._form_mask, float("-inf"))
            out[part] = forms.logsumexp(-1)
        return out

    def _extend(self, namings: list[Naming], prompts: list[str]) -> None:
        """Add to each feature's proposals its best one-word proposals followed by a next word the namer
        expects (at least COMPOUND likely: "musical" -> "instruments", not a word that merely may follow, nor
        the same word again), scored as the one-word score plus the next word's log-probability."""
        rows, heads = [], []
        for f, naming in enumerate(namings):
            for word, score in naming.proposals[:EXTEND]:
                rows.append(f)
                heads.append((word, score))
        if not rows:
            return
        # Each head word as written in lower case where that is a token, else capitalised.
        index = [self.word_index[w] for w, _ in heads]
        forms = self._forms[index, 0].where(self._form_mask[index, 0], self._forms[index, 1])
        continuation = [[t] for t in forms.tolist()]
        next_lp = self._word_logprobs([prompts[f] for f in rows], continuation)
        best = next_lp.masked_fill(~self._readable, float("-inf")).topk(2, dim=-1)
        for f, (word, score), values, indices in zip(rows, heads, best.values.tolist(), best.indices.tolist()):
            for lp, i in zip(values, indices):
                second = self.words[i]
                if lp >= math.log(COMPOUND) and second[:STEM] != word[:STEM]:
                    namings[f].proposals.append((f"{word} {second}", score + lp))
        for naming in namings:
            naming.proposals.sort(key=lambda p: -p[1])


def _halves(members: list[str]) -> tuple[list[str], list[str]]:
    """Alternate members into two lists (best, third, ... / second, fourth, ...); one member fills both."""
    first, second = members[0::2], members[1::2]
    return first, second or first


def word_forms(tokenizer, words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [W, 2] of each word as it follows a space, lower-case and capitalised, where that form is one
    token of `tokenizer`, and the mask [W, 2] of the forms that are."""
    ids = torch.zeros(len(words), 2, dtype=torch.long)
    mask = torch.zeros(len(words), 2, dtype=torch.bool)
    for w, word in enumerate(words):
        for j, form in enumerate(dict.fromkeys((word, word.capitalize()))):
            pieces = tokenizer(" " + form, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1:
                ids[w, j], mask[w, j] = pieces[0], True
    return ids, mask


NAMERS: dict[str, Callable[..., Namer]] = {"causal-lm": CausalLMNamer}
NONE, DISCRIMINATOR = "none", "discriminator"


def namer_model(namer: str, discriminator: str) -> str | None:
    """The model a `namer` setting names: None for "none", the discriminator's for "discriminator"."""
    if namer == NONE:
        return None
    return discriminator if namer == DISCRIMINATOR else namer


def check_namer(namer: str, discriminator: str, patterns=DEFAULT_PATTERNS) -> None:
    """Refuse a namer setting that cannot work, before any work, from configs and tokenizers alone (the
    discriminator's is checked already): "discriminator" with a discriminator that is not a causal LM, a model
    that cannot be loaded or is no causal LM, patterns without their slot, a tokenizer that writes too few of
    the discriminator's label words as one token."""
    model = namer_model(namer, discriminator)
    if model is None:
        return
    kind = discriminator_kind(discriminator)
    if namer == DISCRIMINATOR and kind != "causal-lm":
        raise ValueError(
            f"namer 'discriminator' needs a causal-LM discriminator; {discriminator!r} is an {kind} model: set "
            f"namer to a causal LM ('{DEFAULT_NAMER}', a hub name or folder) or 'none'"
        )
    tokenizer = load_tokenizer(discriminator)
    words = label_words(tokenizer, label_vocab(tokenizer))
    try:
        NAMERS["causal-lm"].preflight(model, words, patterns)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"namer {namer!r} cannot be used ({str(err).splitlines()[0]}); expected 'none', 'discriminator', "
            f"'{DEFAULT_NAMER}' (bundled), a causal LM folder or a hub name where the network allows"
        ) from err


def load_namer(namer: str, words: list[str], patterns=DEFAULT_PATTERNS, discriminator=None, **options) -> Namer | None:
    """The namer a setting names ("none": None; "discriminator": the causal-LM discriminator's own model), over
    the label vocabulary's `words`; `options` (device, dtype) go to its constructor."""
    if namer == NONE:
        return None
    if namer == DISCRIMINATOR:
        if not isinstance(discriminator, CausalLMDiscriminator):
            raise ValueError("namer 'discriminator' needs a causal-LM discriminator")
        return NAMERS["causal-lm"](
            discriminator.name, words, patterns, lm=discriminator.model, tokenizer=discriminator.tokenizer, **options
        )
    return NAMERS["causal-lm"](namer, words, patterns, **options)
