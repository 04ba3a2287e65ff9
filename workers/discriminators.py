"""Discriminators: frozen language models that predict, from a label, whether a feature fires on a text.

Every discriminator maps label embeddings [features, K, d] (points in its input-embedding space, so a
label may be a superposition of tokens) and each feature's example texts to one raw logit per
(feature, example). Per-text work is done once in `encode_texts` and reused at every optimiser step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoConfig, DynamicCache

from workers.models import MINILM, load_causal_lm, load_encoder, load_tokenizer, resolve_model
from workers.vocab import label_vocab

LABEL_SLOT = "{label}"
CACHE_SIZE = 200_000  # text and phrase embeddings each kept per discriminator (~300 MB at d=384)
PHRASE_BATCH = 512  # short sequences (words, vocabulary tokens) per encoder pass


def template_ids(tokenizer, template: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the label slot of an embedding model's template, special tokens included:
    the template is tokenised with a marker word in the slot and cut around it, so that [CLS] and [SEP] land
    where the tokenizer puts them."""
    before, after = template.split(LABEL_SLOT)
    marker = "[MASK]" if tokenizer.mask_token else "X"
    ids = tokenizer(f"{before}{marker}{after}")["input_ids"]
    pos = ids.index(tokenizer.convert_tokens_to_ids(marker))
    return ids[:pos], ids[pos + 1 :]


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

    @property
    @abstractmethod
    def embedding_matrix(self) -> torch.Tensor:
        """Input embeddings [vocab, d]; a label embedding is a mixture of its rows."""

    @staticmethod
    @abstractmethod
    def check_template(template: str) -> None:
        """Raise ValueError when `template` does not have the slots this kind of discriminator needs."""

    template: str
    max_length: int
    model: object
    default_template: str
    """the template when none is given"""
    default_max_length: int
    """text tokens kept when none is given"""

    @staticmethod
    @abstractmethod
    def prompt_positions(tokenizer, template: str, k: int, max_length: int) -> int:
        """Positions the longest prompt with a k-token label takes (texts cut at `max_length` tokens)."""

    def check_label_tokens(self, k: int) -> None:
        """Raise ValueError when labels of k tokens do not fit the model and template."""
        positions = self.prompt_positions(self.tokenizer, self.template, k, self.max_length)
        check_fits(self.name, self.model.config, positions, k, self.template)

    @abstractmethod
    def encode_texts(self, texts: list[str]) -> object:
        """Per-text state computed once (embeddings, key-value caches)."""

    @abstractmethod
    def logits(self, label_embeds: torch.Tensor, texts: object, index: torch.Tensor) -> torch.Tensor:
        """Raw logits [F, n] for labels [F, K, d] against texts `index` [F, n] of the encoded set."""

    pair_batch: int = 1 << 30
    """(feature, example) pairs per forward pass; bounds memory of models that see each pair"""

    @torch.no_grad()
    def score(self, label_embeds: torch.Tensor, texts: object, index: torch.Tensor) -> torch.Tensor:
        """`logits` without gradients, at most `pair_batch` pairs per forward pass."""
        step = max(1, self.pair_batch // max(index.shape[1], 1))
        parts = [
            self.logits(label_embeds[i : i + step], texts, index[i : i + step]) for i in range(0, len(index), step)
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
        emb = self.embedding_matrix[token_ids][:, None, :]
        return torch.stack([self.score(emb, texts, index[f].expand(len(token_ids), -1)) for f in range(len(index))])


READOUTS = ("sentence", "word", "sentence+word")


@dataclass
class EncodedTexts:
    """Per-text state of an embedding discriminator, computed once and reused at every step."""

    sentences: torch.Tensor | None  # [N, d] unit sentence embeddings (sentence readouts)
    words: torch.Tensor | None  # [N, L] each text's words as rows of `lexicon`; U pads (word readouts)
    lexicon: torch.Tensor | None  # [U, d] unit embeddings of the distinct words of these texts


class EmbeddingDiscriminator(Discriminator):
    """Sentence-embedding encoder (sentence-transformers style): a label is embedded alone in its template
    and compared by cosine with the text (`readout`):

    - `sentence`: with the text's sentence embedding, "is the text about the label";
    - `word`: with each word of the text embedded alone like a label, the best match counting, "does
      the text say a word like the label". Most SAE latents fire on words, and a label and a word
      embedded the same way compare like with like: a text saying "ten" or "1990" matches "number",
      while the whole sentence's embedding mostly speaks of its topic;
    - `sentence+word`: the sum of both.

    Texts and words are embedded once (and kept across calls); a step runs only the template with its K
    label slots through the encoder.
    """

    default_template = LABEL_SLOT
    default_max_length = 128

    def __init__(
        self,
        model: str = MINILM,
        template: str = default_template,
        readout: str = "sentence+word",
        max_length: int = default_max_length,
        batch_size: int = 64,
        device: str = "cpu",
    ):
        self.check_template(template)
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; expected one of {list(READOUTS)}")
        self.name = model
        self.template = template
        self.readout = readout
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(model)
        self.model = load_encoder(model).to(device)
        self._embedding = self.model.get_input_embeddings().weight.detach()
        self._prefix, self._suffix = (
            torch.tensor(ids, dtype=torch.long, device=self._embedding.device)
            for ids in template_ids(self.tokenizer, template)
        )
        self._text_cache: dict[str, torch.Tensor] = {}
        self._phrase_cache: dict[tuple[int, ...], torch.Tensor] = {}

    @staticmethod
    def check_template(template: str) -> None:
        if template.count(LABEL_SLOT) != 1:
            raise ValueError(f"template {template!r} must contain {LABEL_SLOT} exactly once")

    @staticmethod
    def prompt_positions(tokenizer, template: str, k: int, max_length: int) -> int:
        prefix, suffix = template_ids(tokenizer, template)
        return len(prefix) + k + len(suffix)

    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self._embedding

    def clear_cache(self) -> None:
        """Forget the kept text and phrase embeddings (they are recomputed when next needed)."""
        self._text_cache.clear()
        self._phrase_cache.clear()

    def embed_sentences(self, texts: list[str]) -> torch.Tensor:
        """Unit sentence embeddings [N, d] of `texts` (mean-pooled, as the model was trained)."""
        # Shards share many contexts (the negative pool above all), so embeddings are kept across calls.
        tokenize = self.tokenizer
        return self._embed_rows(
            self._text_cache,
            texts,
            lambda todo: tokenize(todo, truncation=True, max_length=self.max_length)["input_ids"],
            self.batch_size,
        )

    def embed_phrases(self, phrases: list[tuple[int, ...]]) -> torch.Tensor:
        """Unit embeddings [P, d] of token-id sequences placed in the template, each exactly as `encode_labels`
        embeds it as a discrete label (kept across calls: words recur across texts and shards)."""
        prefix, suffix = self._prefix.tolist(), self._suffix.tolist()
        return self._embed_rows(
            self._phrase_cache, phrases, lambda todo: [prefix + list(p) + suffix for p in todo], PHRASE_BATCH
        )

    @torch.no_grad()
    def _embed_rows(self, cache: dict, keys: list, rows_of, batch: int) -> torch.Tensor:
        """Unit embeddings [len(keys), d], from `cache` or by encoding the token-id rows `rows_of(new keys)`;
        rows of similar length go together (least padding) and the new embeddings are kept."""
        todo = list(dict.fromkeys(k for k in keys if k not in cache))
        if len(cache) + len(todo) > CACHE_SIZE:
            cache.clear()
            todo = list(dict.fromkeys(keys))
        rows = rows_of(todo) if todo else []
        order = sorted(range(len(todo)), key=lambda i: len(rows[i]))
        pad = self.tokenizer.pad_token_id or 0
        device = self._embedding.device
        for i in range(0, len(order), batch):
            part = order[i : i + batch]
            lengths = torch.tensor([len(rows[j]) for j in part], device=device)
            width = int(lengths.max())
            ids = torch.tensor([rows[j] + [pad] * (width - len(rows[j])) for j in part], device=device)
            mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            cache.update(zip((todo[j] for j in part), F.normalize(_mean_pool(hidden, mask), dim=-1)))
        if not keys:
            return torch.zeros(0, self._embedding.shape[1], device=device)
        return torch.stack([cache[k] for k in keys])

    def text_words(self, texts: list[str]) -> list[list[tuple[int, ...]]]:
        """Each text's words, as the token ids the tokenizer gives each word (punctuation and each CJK
        character count as words, as the tokenizer splits them)."""
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_length)
        out = []
        for i, ids in enumerate(encoded["input_ids"]):
            words: dict[int, list[int]] = {}
            for token, word in zip(ids, encoded.word_ids(i)):
                words.setdefault(-1 if word is None else word, []).append(token)
            out.append([tuple(w) for w in words.values()] or [(self.tokenizer.unk_token_id or 0,)])
        return out

    def encode_texts(self, texts: list[str]) -> EncodedTexts:
        sentences = self.embed_sentences(texts) if self.readout != "word" else None
        if self.readout == "sentence":
            return EncodedTexts(sentences, None, None)
        per_text = self.text_words(texts)
        distinct = {w: i for i, w in enumerate(dict.fromkeys(w for ws in per_text for w in ws))}
        width = max((len(ws) for ws in per_text), default=1)
        words = torch.full((len(texts), width), len(distinct), dtype=torch.long)
        for i, ws in enumerate(per_text):
            words[i, : len(ws)] = torch.tensor([distinct[w] for w in ws])
        return EncodedTexts(sentences, words.to(self._embedding.device), self.embed_phrases(list(distinct)))

    def encode_labels(self, label_embeds: torch.Tensor) -> torch.Tensor:
        """Unit sentence embeddings [F, d] of labels [F, K, d] placed in the template."""
        n = label_embeds.shape[0]
        prefix = self._embedding[self._prefix].expand(n, -1, -1)
        suffix = self._embedding[self._suffix].expand(n, -1, -1)
        inputs = torch.cat([prefix, label_embeds, suffix], dim=1)
        mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        hidden = self.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        return F.normalize(_mean_pool(hidden, mask), dim=-1)

    def token_states(self, token_ids: torch.Tensor) -> torch.Tensor:
        # A token's state is its own embedding as a label, computed once and kept.
        return self.embed_phrases([(t,) for t in token_ids.tolist()])

    def state_logits(self, states: torch.Tensor, texts: EncodedTexts, index: torch.Tensor) -> torch.Tensor:
        labels = F.normalize(states, dim=-1)  # a mixture of unit states is scored by its direction
        out = 0
        if texts.sentences is not None:
            out = torch.einsum("rd,rnd->rn", labels, texts.sentences[index])
        if texts.words is not None:
            # Words are shared by texts, so each label meets each distinct word once.
            out = out + _best_word(labels @ texts.lexicon.T, texts.words[index])
        return out

    def logits(self, label_embeds: torch.Tensor, texts: EncodedTexts, index: torch.Tensor) -> torch.Tensor:
        return self.state_logits(self.encode_labels(label_embeds), texts, index)

    @torch.no_grad()
    def token_logits(self, token_ids: torch.Tensor, texts: EncodedTexts, index: torch.Tensor) -> torch.Tensor:
        labels = self.token_states(token_ids)
        n_feat, n = index.shape
        out = torch.zeros(n_feat, len(labels), n, device=labels.device)
        if texts.sentences is not None:
            out += torch.einsum("td,fnd->ftn", labels, texts.sentences[index])
        if texts.words is not None:
            words = texts.words[index]  # [F, n, L]
            for start in range(0, len(labels), PHRASE_BATCH):
                sims = _pad_column(labels[start : start + PHRASE_BATCH] @ texts.lexicon.T)
                for f in range(n_feat):
                    best = sims.index_select(1, words[f].flatten()).view(len(sims), *words.shape[1:])
                    out[f, start : start + len(sims)] += best.amax(-1)
        return out


def _best_word(sims: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """[R, n]: per row, the best similarity `sims` [R, U] gives any of a text's words `words` [R, n, L] (rows of
    the lexicon; U pads)."""
    return _pad_column(sims).gather(1, words.flatten(1)).view(words.shape).amax(-1)


def _pad_column(sims: torch.Tensor) -> torch.Tensor:
    """`sims` [R, U] with a column U below any cosine, which padded word slots point at."""
    return F.pad(sims, (0, 1), value=-2.0)


TEXT_SLOT = "{text}"
CAUSAL_TEMPLATE = '{text}\nQuestion: is this text about "{label}"? Answer:'


@dataclass
class PrefixCache:
    """Key-value caches of the left-padded prompt prefixes (text first), one row per text."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [N, heads, L, d_head]
    mask: torch.Tensor  # [N, L] 1 on real tokens
    next_token: torch.Tensor  # [N, vocab] log-probabilities of the token after the prefix


class CausalLMDiscriminator(Discriminator):
    """Any Hugging Face causal LM, prompted with the text first and the label after it.

    The logit is log p(yes) - log p(no) for the token after the prompt. The text prefix is the same at
    every optimiser step, so its key-value cache is computed once per text; a step runs only the
    suffix (the K label slots and the question) forward and backward.
    """

    default_template = CAUSAL_TEMPLATE
    default_max_length = 64

    def __init__(
        self,
        model: str,
        template: str = default_template,
        answers: tuple[str, str] = ("yes", "no"),
        max_length: int = default_max_length,
        batch_size: int = 16,
        pair_batch: int = 4096,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ):
        self.check_template(template)
        self.name = model
        self.template = template
        self.max_length = max_length
        self.batch_size = batch_size
        self.pair_batch = pair_batch
        self.tokenizer = load_tokenizer(model)
        self.model = load_causal_lm(model, device, dtype)
        self._embedding = self.model.get_input_embeddings().weight.detach()
        self._before_text, rest = template.split(TEXT_SLOT)
        self._before_label, after = rest.split(LABEL_SLOT)
        self._suffix = torch.tensor(self._ids(after), dtype=torch.long, device=self._embedding.device)
        self._answers = [self._answer_id(a) for a in answers]

    @staticmethod
    def check_template(template: str) -> None:
        if (
            template.count(TEXT_SLOT) != 1
            or template.count(LABEL_SLOT) != 1
            or (template.index(TEXT_SLOT) > template.index(LABEL_SLOT))
        ):
            raise ValueError(f"causal-LM template {template!r} must hold {TEXT_SLOT} once, then {LABEL_SLOT} once")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _answer_id(self, word: str) -> int:
        # The answer follows "Answer:", so its spaced form is what the model would write.
        for form in (f" {word}", word):
            ids = self._ids(form)
            if len(ids) == 1:
                return ids[0]
        raise ValueError(f"answer word {word!r} is not a single token of {self.name}'s tokenizer")

    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self._embedding

    @staticmethod
    def prompt_positions(tokenizer, template: str, k: int, max_length: int) -> int:
        before_text, rest = template.split(TEXT_SLOT)
        before_label, after = rest.split(LABEL_SLOT)
        words = len(tokenizer(before_text + before_label + after, add_special_tokens=False)["input_ids"])
        return 1 + max_length + words + k  # BOS, the text, the template's words, the label

    def prefix_ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [N, width] of each text's prompt up to the label slot, left-padded:
        every prefix ends at the same position, so one suffix batch continues them all."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        rows = [
            bos + self._ids(self._before_text) + self._ids(t)[: self.max_length] + self._ids(self._before_label)
            for t in texts
        ]
        width = max(len(r) for r in rows)
        device = self._embedding.device
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        return ids, mask

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> PrefixCache:
        ids, mask = self.prefix_ids(texts)
        layers, next_token = [], []
        for i in range(0, len(ids), self.batch_size):
            m = mask[i : i + self.batch_size]
            out = self.model(
                input_ids=ids[i : i + self.batch_size],
                attention_mask=m,
                position_ids=(m.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
            layers.append([(layer.keys, layer.values) for layer in out.past_key_values.layers])
            next_token.append(torch.log_softmax(out.logits[:, -1].float(), -1))
        merged = [
            (torch.cat([b[j][0] for b in layers]), torch.cat([b[j][1] for b in layers])) for j in range(len(layers[0]))
        ]
        return PrefixCache(merged, mask, torch.cat(next_token))

    def logits(self, label_embeds: torch.Tensor, texts: PrefixCache, index: torch.Tensor) -> torch.Tensor:
        n_feat, n = index.shape
        flat = index.reshape(-1)
        suffix = self._embedding[self._suffix].expand(n_feat * n, -1, -1)
        labels = label_embeds.to(suffix.dtype).repeat_interleave(n, dim=0)
        inputs = torch.cat([labels, suffix], 1)
        prefix_mask = texts.mask[flat]
        ones = torch.ones(len(flat), inputs.shape[1], dtype=prefix_mask.dtype, device=prefix_mask.device)
        mask = torch.cat([prefix_mask, ones], 1)
        positions = prefix_mask.sum(-1, keepdim=True) + torch.arange(inputs.shape[1], device=prefix_mask.device)
        cache = DynamicCache([(k[flat], v[flat]) for k, v in texts.layers])
        # Only the last position's next-token logits are read, so the LM head runs on that position alone
        # (kept by index, which copies it contiguously: a strided slice makes the head's matmul and its
        # backward run per row on CPU).
        last_only = torch.tensor([inputs.shape[1] - 1], device=inputs.device)
        out = self.model(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            logits_to_keep=last_only,
        )
        last = torch.log_softmax(out.logits[:, -1].float(), -1)
        return (last[:, self._answers[0]] - last[:, self._answers[1]]).view(n_feat, n)

    def label_prior(
        self, vocab: torch.Tensor, texts: PrefixCache, index: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        log_q = torch.log_softmax(texts.next_token[:, vocab], -1)  # [N, V']
        w = weight / weight.sum(-1, keepdim=True).clamp(min=1e-12)
        dense = torch.zeros(len(index), len(log_q), device=log_q.device).scatter_add_(1, index, w)
        return dense @ log_q


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


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
