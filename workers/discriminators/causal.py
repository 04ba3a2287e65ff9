"""The causal-LM discriminator: any Hugging Face causal LM, prompted with the text first and the label after it.

The logit is log p(yes) - log p(no) for the first token of the answer. The text prefix is the same at every
optimiser step, so its key-value cache is computed once per text of a feature batch; a step runs only the
suffix (the K label slots and the rest of the question) forward and backward, for the (feature, text) pairs
it is asked for.

Memory is bounded by settings: the prefix caches of one feature batch (its distinct texts x the prompt's
prefix length, see `PrefixCache`), and per forward pass `pair_batch` pairs, each with its copy of a prefix
cache. The answer is read from two groups of rows of the LM head (the answer words' tokens), never from the
full vocabulary, where the model's head is a plain linear map of its last hidden state (checked at load).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from workers.discriminators.base import LABEL_SLOT, Discriminator, check_fits
from workers.models import left_pad, load_causal_lm, load_tokenizer
from workers.vocab import decode_label, label_token_ids, space_mark

TEXT_SLOT = "{text}"
# The user's message where the model has a chat template (the answer is the assistant's first token) ...
CHAT_TEMPLATE = "Text: {text}\nIs this text about {label}? Answer yes or no."
# ... and the whole prompt where it has none.
PLAIN_TEMPLATE = "{text}\nQuestion: is this text about {label}? Answer:"
ANSWERS = ("yes", "no")
# Output transforms after the LM head that some families apply (config attribute -> how), so that the answer
# rows alone still give the model's own logits.
HEAD_TRANSFORMS = {
    "final_logit_softcapping": lambda z, cap: torch.tanh(z / cap) * cap,  # Gemma 2, Gemma 3
    "logit_scale": lambda z, scale: z * scale,  # Cohere
    "logits_scaling": lambda z, scale: z / scale,  # Granite
}
HEAD_TOLERANCE = 1e-3  # answer logit from the answer rows vs. the full forward pass, checked at load


def answer_forms(tokenizer, word: str) -> list[int]:
    """The single-token forms of answer `word` (as written, capitalised, after a space), so that the answer
    is read whichever of them the model would write."""
    forms = dict.fromkeys([word, word.capitalize(), f" {word}", f" {word.capitalize()}"])
    ids = [tokenizer(f, add_special_tokens=False)["input_ids"] for f in forms]
    return sorted({i[0] for i in ids if len(i) == 1})


def leading_specials(tokenizer) -> list[int]:
    """The special tokens the tokenizer itself puts before a text (BOS where the model wants one)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    return full[: full.index(plain[0])] if plain and plain[0] in full else []


@dataclass
class CausalPrompt:
    """A prompt around its two slots: the text's prefix `before_text + TEXT + between` is tokenised as one
    string (as the model reads it), then come the label's tokens and the ids `after` it, tokenised as they
    follow a word. The answer is read at the last position; `yes` and `no` are the answer words' token forms."""

    template: str
    chat: bool
    tokenizer: object = field(repr=False)
    head: list[int]  # special tokens the tokenizer itself puts first (BOS), where no chat template does
    before_text: str
    between: str
    after: list[int]
    yes: list[int]
    no: list[int]

    @classmethod
    def build(cls, tokenizer, template: str | None = None, chat: bool | None = None, answers=ANSWERS) -> CausalPrompt:
        """The prompt of `template` (None: the default for the model), wrapped in the tokenizer's chat template
        where `chat` says so (None: where it has one); ValueError on a template without its slots, a chat
        template asked of a tokenizer without one, or answers that are not single tokens."""
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if chat and not has_chat:
            raise ValueError("chat: true, but the tokenizer has no chat template; set chat: false")
        chat = has_chat if chat is None else chat
        template = (CHAT_TEMPLATE if chat else PLAIN_TEMPLATE) if template is None else template
        if (
            template.count(TEXT_SLOT) != 1
            or template.count(LABEL_SLOT) != 1
            or template.index(TEXT_SLOT) > template.index(LABEL_SLOT)
        ):
            raise ValueError(f"causal-LM template {template!r} must hold {TEXT_SLOT} once, then {LABEL_SLOT} once")
        answers = tuple(answers)
        if len(answers) != 2 or answers[0] == answers[1]:
            raise ValueError(f"answers {list(answers)}: expected two different words, the yes and the no")
        if chat:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": template}], tokenize=False, add_generation_prompt=True
            )
            if rendered.count(TEXT_SLOT) != 1 or rendered.count(LABEL_SLOT) != 1:
                raise ValueError(f"the tokenizer's chat template does not keep the slots of {template!r}")
        else:
            rendered = template
        before_text, rest = rendered.split(TEXT_SLOT)
        between, after = rest.split(LABEL_SLOT)
        if space_mark(tokenizer) is not None and between.endswith(" "):
            between = between[:-1]  # the label's first token carries the space before it ("Ġdog", "▁dog")
        forms = [answer_forms(tokenizer, a) for a in answers]
        for word, ids in zip(answers, forms):
            if not ids:
                raise ValueError(f"answer word {word!r} is not a single token of the tokenizer in any form")
        if set(forms[0]) & set(forms[1]):
            raise ValueError(f"answers {list(answers)} share a token")
        head = [] if chat else leading_specials(tokenizer)
        return cls(template, chat, tokenizer, head, before_text, between, _ids_after_word(tokenizer, after), *forms)

    def prefix_ids(self, text: str) -> list[int]:
        """Token ids of the prompt up to the label slot around `text`."""
        return self.head + self.tokenizer(self.before_text + text + self.between, add_special_tokens=False)["input_ids"]

    def positions(self, k: int, max_length: int) -> int:
        """Positions of the longest prompt with a k-token label (texts cut at `max_length` tokens; a token more
        where a text's ends merge with the template's)."""
        return len(self.prefix_ids("")) + max_length + 2 + k + len(self.after)


def _ids_after_word(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as it follows a word in a prompt, not as the start of one: tokenizers that mark
    word starts would otherwise add a space mark to its first piece."""
    word = label_token_ids(tokenizer, "dog")
    ids = tokenizer(decode_label(tokenizer, word) + text, add_special_tokens=False)["input_ids"]
    return (
        ids[len(word) :] if tuple(ids[: len(word)]) == word else tokenizer(text, add_special_tokens=False)["input_ids"]
    )


@dataclass
class PrefixCache:
    """Key-value caches of the left-padded prompt prefixes (text first), one row per text of a feature batch:
    memory is texts x layers x 2 x key-value heads x head size x prefix length."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [N, heads, L, d_head]
    mask: torch.Tensor  # [N, L] 1 on real tokens
    last_hidden: torch.Tensor  # [N, d] the final hidden state at the last prefix position (for the label prior)


class CausalLMDiscriminator(Discriminator):
    """Any Hugging Face causal LM, prompted with the text first and the label after it (see the module
    docstring). `chat` wraps the template in the model's chat template (default: where it has one)."""

    def __init__(
        self,
        model: str,
        template: str | None = None,
        chat: bool | None = None,
        answers=ANSWERS,
        max_length: int = 64,
        batch_size: int = 16,
        pair_batch: int = 1024,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ):
        self.tokenizer = load_tokenizer(model)
        self.prompt = CausalPrompt.build(self.tokenizer, template, chat, answers)
        self.name = model
        self.template = self.prompt.template
        self.max_length = max_length
        self.batch_size = batch_size
        self.pair_batch = pair_batch
        self.model = load_causal_lm(model, device, dtype)
        config = self.model.config.get_text_config(decoder=True)
        self._check_window(config, self.prompt.positions(4, max_length))
        self._suffix = torch.tensor(self.prompt.after, dtype=torch.long, device=self.device)
        self._rows = torch.tensor(self.prompt.yes + self.prompt.no, device=self.device)
        self._transforms = [
            (fn, value) for key, fn in HEAD_TRANSFORMS.items() if (value := getattr(config, key, None)) is not None
        ]
        self._check_head()

    @classmethod
    def preflight(
        cls,
        name: str,
        config,
        tokenizer,
        label_tokens: int = 1,
        template: str | None = None,
        chat: bool | None = None,
        answers=ANSWERS,
        max_length: int = 64,
        **options,
    ) -> None:
        prompt = CausalPrompt.build(tokenizer, template, chat, answers)
        positions = prompt.positions(label_tokens, max_length)
        text_config = config.get_text_config(decoder=True)
        check_fits(name, text_config, positions, label_tokens, prompt.template)
        cls._check_window(text_config, positions)

    @staticmethod
    def _check_window(config, positions: int) -> None:
        # Left padding puts pad positions inside a sliding window, so a prompt must fit the smallest window.
        window = getattr(config, "sliding_window", None)
        if window and positions > window:
            raise ValueError(f"prompts of {positions} positions exceed the model's sliding window of {window}")

    def check_label_tokens(self, k: int) -> None:
        positions = self.prompt.positions(k, self.max_length)
        check_fits(self.name, self.model.config.get_text_config(decoder=True), positions, k, self.template)

    def _answer_logit(self, hidden: torch.Tensor) -> torch.Tensor:
        """log p(yes) - log p(no) [P] from final hidden states [P, d]: the answer rows of the LM head only."""
        z = self._head(hidden, self._rows)
        n_yes = len(self.prompt.yes)
        return torch.logsumexp(z[:, :n_yes], -1) - torch.logsumexp(z[:, n_yes:], -1)

    def _head(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The model's next-token logits [P, len(rows)] for vocabulary rows `rows`, in float32."""
        head = self.model.get_output_embeddings()
        bias = None if getattr(head, "bias", None) is None else head.bias[rows].float()
        z = F.linear(hidden.float(), head.weight[rows].float(), bias)
        for fn, value in self._transforms:
            z = fn(z, value)
        return z

    @torch.no_grad()
    def _check_head(self) -> None:
        """Refuse a model whose next-token logits are not its LM head's rows of the last hidden state (after the
        known output transforms): on one prompt, the answer rows and some others against the full forward pass,
        within the rounding of the model's dtype (a bfloat16 model rounds its logits, the rows here do not)."""
        label = list(label_token_ids(self.tokenizer, "dog"))
        ids = torch.tensor([self.prompt.prefix_ids("A short text.") + label + self.prompt.after], device=self.device)
        full = self.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
        rows = torch.cat([self._rows, torch.linspace(0, len(full) - 1, 64, device=self.device).long()])
        hidden = self.model.base_model(input_ids=ids).last_hidden_state[:, -1]
        got, expected = self._head(hidden, rows)[0], full[rows]
        eps = torch.finfo(self.model.dtype).eps if self.model.dtype.is_floating_point else 0.0
        tolerance = HEAD_TOLERANCE + 2 * eps * expected.abs()
        if not ((got - expected).abs() <= tolerance).all():
            worst = int((got - expected).abs().argmax())
            raise ValueError(
                f"discriminator {self.name!r} ({type(self.model).__name__}): its next-token logits are not a linear "
                f"map of the last hidden state (token {int(rows[worst])}: {got[worst].item():.4f} vs "
                f"{expected[worst].item():.4f}); this output head is not supported"
            )

    def prefix_ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [N, width] of each text's prompt up to the label slot, left-padded:
        every prefix ends at the same position, so one suffix batch continues them all."""
        return left_pad([self.prompt.prefix_ids(t) for t in self.cut_texts(texts)], self.tokenizer, self.device)

    def cut_texts(self, texts: list[str]) -> list[str]:
        """Each text cut after its first `max_length` tokens (at the character where that token ends; decoded
        from the kept tokens where the tokenizer has no character offsets)."""
        options = dict(add_special_tokens=False, truncation=True, max_length=self.max_length)
        if not self.tokenizer.is_fast:
            return [self.tokenizer.decode(ids) for ids in self.tokenizer(texts, **options)["input_ids"]]
        enc = self.tokenizer(texts, return_offsets_mapping=True, **options)
        return [t[: offsets[-1][1]] if offsets else t for t, offsets in zip(texts, enc["offset_mapping"])]

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> PrefixCache:
        ids, mask = self.prefix_ids(texts)
        base = self.model.base_model
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        last = []
        for i in range(0, len(ids), self.batch_size):
            m = mask[i : i + self.batch_size]
            out = base(
                input_ids=ids[i : i + self.batch_size],
                attention_mask=m,
                position_ids=(m.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
            )
            last.append(out.last_hidden_state[:, -1])
            for j, layer in enumerate(out.cache.layers):
                if i == 0:  # filled in place: no second copy of the caches while they are joined
                    shape = (len(ids), *layer.keys.shape[1:])
                    layers.append((layer.keys.new_empty(shape), layer.values.new_empty(shape)))
                layers[j][0][i : i + len(m)] = layer.keys
                layers[j][1][i : i + len(m)] = layer.values
        return PrefixCache(layers, mask, torch.cat(last))

    def logits(
        self, label_embeds: torch.Tensor, texts: PrefixCache, index: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        n_feat, n = index.shape
        if mask is None:
            mask = torch.ones_like(index, dtype=torch.bool)
        feature, column = mask.nonzero(as_tuple=True)
        out = torch.zeros(n_feat, n, device=self.device)
        if len(feature) == 0:
            return out
        flat = index[feature, column]
        suffix = self.embed_tokens(self._suffix).expand(len(flat), -1, -1)
        inputs = torch.cat([label_embeds[feature].to(suffix.dtype), suffix], 1)
        prefix_mask = texts.mask[flat]
        ones = torch.ones(len(flat), inputs.shape[1], dtype=prefix_mask.dtype, device=self.device)
        positions = prefix_mask.sum(-1, keepdim=True) + torch.arange(inputs.shape[1], device=self.device)
        cache = DynamicCache([(k[flat], v[flat]) for k, v in texts.layers], config=self.model.config)
        hidden = self.model.base_model(
            inputs_embeds=inputs,
            attention_mask=torch.cat([prefix_mask, ones], 1),
            position_ids=positions,
            cache=cache,
        ).last_hidden_state[:, -1]
        return out.index_put((feature, column), self._answer_logit(hidden))

    @torch.no_grad()
    def label_prior(
        self, vocab: torch.Tensor, texts: PrefixCache, index: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        # Log-probabilities over the label vocabulary at the slot, a chunk of texts at a time: never [texts, V'].
        w = weight / weight.sum(-1, keepdim=True).clamp(min=1e-12)
        dense = torch.zeros(len(index), len(texts.mask), device=self.device).scatter_add_(1, index, w)
        prior = torch.zeros(len(index), len(vocab), device=self.device)
        rows = vocab.to(self.device)
        for i in range(0, len(texts.mask), self.batch_size):
            log_q = torch.log_softmax(self._head(texts.last_hidden[i : i + self.batch_size], rows), -1)
            prior += dense[:, i : i + self.batch_size] @ log_q
        return prior
