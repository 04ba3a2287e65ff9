"""The embedding discriminator: a sentence encoder (sentence-transformers style, default MiniLM)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.utils import cached_file

from workers.discriminators.base import LABEL_SLOT, Discriminator, check_fits
from workers.models import MINILM, load_encoder, load_tokenizer, resolve_model

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


READOUTS = ("sentence", "word", "sentence+word")
# How a sentence encoder pools its token states into the sentence embedding it was trained to give, by the
# sentence-transformers Pooling module's flag.
POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
POOLING_MODULE = "sentence_transformers.models.Pooling"


def sentence_pooling(name: str) -> str | None:
    """ "mean" or "cls": how model `name` pools a sentence embedding, from its sentence-transformers files
    (modules.json and the Pooling module's config); None when it has no such files (not a sentence encoder)."""
    folder = resolve_model(name)
    try:
        modules = json.loads(Path(cached_file(folder, "modules.json")).read_text())
        [pooling] = [m for m in modules if m.get("type") == POOLING_MODULE]
        config = json.loads(Path(cached_file(folder, f"{pooling['path']}/config.json")).read_text())
    except (OSError, ValueError, KeyError):
        return None
    on = [flag for flag, value in config.items() if flag.startswith("pooling_mode_") and value]
    if len(on) != 1 or on[0] not in POOLINGS:
        raise ValueError(f"its sentence pooling {on} is not supported; expected one of {sorted(POOLINGS)}")
    return POOLINGS[on[0]]


def save_sentence_encoder_files(folder: str | Path, pooling: str = "mean") -> None:
    """Write the sentence-transformers files that declare the model in `folder` a sentence encoder pooling by
    `pooling` ("mean" or "cls"), as sentence-transformers saves them."""
    folder = Path(folder)
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING_MODULE},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    flags = {flag: mode == pooling for flag, mode in POOLINGS.items()}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(flags, indent=2))


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

    def __init__(
        self,
        model: str = MINILM,
        template: str = LABEL_SLOT,
        readout: str = "sentence+word",
        max_length: int = 128,
        batch_size: int = 64,
        pair_batch: int = 1 << 30,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ):
        self.tokenizer = load_tokenizer(model)
        self.pair_batch = pair_batch
        self.pooling = self._check(model, self.tokenizer, template, readout)
        self.name = model
        self.template = template
        self.readout = readout
        self.max_length = max_length
        self.batch_size = batch_size
        self.model = load_encoder(model).to(device=device, dtype=dtype)
        self._prefix, self._suffix = (
            torch.tensor(ids, dtype=torch.long, device=self.device) for ids in template_ids(self.tokenizer, template)
        )
        self._text_cache: dict[str, torch.Tensor] = {}
        self._phrase_cache: dict[tuple[int, ...], torch.Tensor] = {}

    @staticmethod
    def _check(name: str, tokenizer, template: str, readout: str) -> str:
        """The model's pooling, once template, readout and the model's sentence-encoder files pass their checks."""
        if template.count(LABEL_SLOT) != 1:
            raise ValueError(f"template {template!r} must contain {LABEL_SLOT} exactly once")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; expected one of {list(READOUTS)}")
        pooling = sentence_pooling(name)
        if pooling is None:
            raise ValueError(
                "it is an encoder without a sentence-embedding pooling: expected a sentence-transformers model "
                "(modules.json with a Pooling module of mean or CLS pooling) or a causal LM"
            )
        return pooling

    @classmethod
    def preflight(
        cls,
        name: str,
        config,
        tokenizer,
        label_tokens: int = 1,
        template: str = LABEL_SLOT,
        readout: str = "sentence+word",
        **options,
    ) -> None:
        cls._check(name, tokenizer, template, readout)
        prefix, suffix = template_ids(tokenizer, template)
        check_fits(name, config, len(prefix) + label_tokens + len(suffix), label_tokens, template)

    def check_label_tokens(self, k: int) -> None:
        check_fits(self.name, self.model.config, len(self._prefix) + k + len(self._suffix), k, self.template)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return POOL[self.pooling](hidden, mask).float()

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
        device = self.device
        for i in range(0, len(order), batch):
            part = order[i : i + batch]
            lengths = torch.tensor([len(rows[j]) for j in part], device=device)
            width = int(lengths.max())
            ids = torch.tensor([rows[j] + [pad] * (width - len(rows[j])) for j in part], device=device)
            mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            cache.update(zip((todo[j] for j in part), F.normalize(self._pool(hidden, mask), dim=-1)))
        if not keys:
            return torch.zeros(0, self.model.config.hidden_size, device=device)
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
        return EncodedTexts(sentences, words.to(self.device), self.embed_phrases(list(distinct)))

    def encode_labels(self, label_embeds: torch.Tensor) -> torch.Tensor:
        """Unit sentence embeddings [F, d] of labels [F, K, d] placed in the template."""
        n = label_embeds.shape[0]
        prefix = self.embed_tokens(self._prefix).expand(n, -1, -1)
        suffix = self.embed_tokens(self._suffix).expand(n, -1, -1)
        inputs = torch.cat([prefix, label_embeds.to(prefix.dtype), suffix], dim=1)
        mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        hidden = self.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        return F.normalize(self._pool(hidden, mask), dim=-1)

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

    def logits(
        self, label_embeds: torch.Tensor, texts: EncodedTexts, index: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # Every (label, text) pair costs one cosine here, so the mask saves nothing and is not read.
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


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


POOL = {"mean": _mean_pool, "cls": lambda hidden, mask: hidden[:, 0]}
