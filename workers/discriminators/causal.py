"""The causal-LM discriminator: any Hugging Face causal LM, prompted with the text first and the label after it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from workers.discriminators.base import LABEL_SLOT, Discriminator
from workers.models import load_causal_lm, load_tokenizer

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
