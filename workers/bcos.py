"""B-cos language models (Wang, Rao, Lee, Jobanputra, Demberg, arXiv 2502.12992): a BERT encoder converted to a
B-cos network, whose token contributions add up exactly to the logit, and the post-hoc explanations it is
compared with.

One architecture, two flavours. `BertClassifier(config, classes)` is the conventional BERT classifier (the
architecture of Hugging Face's BertForSequenceClassification: tanh pooler over [CLS], dropout, linear head);
`BertClassifier(config, classes, b=1.5)` is its B-cos conversion:

- every dense layer after the embeddings (attention output, feed-forward, pooler, head) is a `BcosLinear`:
  unit-norm weight rows, no bias, output scaled by |cos(x, w)|^(B-1);
- Q/K/V are linear without bias; the attention probabilities act as dynamic weights;
- LayerNorm keeps its mean subtraction and scale, drops its bias, and treats 1/std as a dynamic weight;
- GELU is x * Phi(x) with Phi(x) as a dynamic weight; the pooler's tanh is gone;
- the embeddings (word + position + type, LayerNorm, dropout) are BERT's own, unchanged.

Every layer after the embeddings is then y = W(x) x with no additive term. In explanation mode
(`explaining(model)`) the dynamic weights are detached, so the gradient of a logit with respect to the
embedding output x0 is W(x0) itself, and input x gradient, summed over hidden dims, splits the logit exactly
into one contribution per token. Pretrained weights are copied by name from any BertModel checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers.models.bert.modeling_bert import BertEmbeddings

from workers.models import load_tokenizer, resolve_model

DEFAULT_B = 1.5
COS_EPS = 1e-6  # keeps |cos|^(B-1) differentiable where a row is orthogonal to the input
# The paper's perturbation levels: the top 10%, 20%, ..., 90% of a text's tokens.
LEVELS = tuple(range(10, 100, 10))


class BcosLinear(nn.Module):
    """out_j = |cos(x, w_j)|^(B-1) * (w_j / |w_j|) . x: unit-norm weight rows, no bias; B = 1 is a plain bias-free
    linear layer. The |cos| factor is a dynamic weight: detached in explanation mode."""

    def __init__(self, n_in: int, n_out: int, b: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        nn.init.normal_(self.weight, std=0.02)
        self.b = b
        self.explain = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, F.normalize(self.weight, dim=1))
        if self.b == 1:
            return out
        cos = out / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scale = (cos.abs() + COS_EPS).pow(self.b - 1)
        return out * (scale.detach() if self.explain else scale)


class BcosLayerNorm(nn.Module):
    """LayerNorm without bias: (x - mean(x)) / std(x) * weight, with 1/std a dynamic weight."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.explain = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        std = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        return centred / (std.detach() if self.explain else std) * self.weight


def _phi(x: torch.Tensor) -> torch.Tensor:
    """The standard normal CDF: GELU(x) = x * Phi(x)."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


# The B-cos form of BERT's activations, x * gate(x) with the gate a dynamic weight. The GELU approximations
# (tanh, sigmoid) become exact GELU, which they approximate.
GATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": _phi,
    "gelu_new": _phi,
    "gelu_pytorch_tanh": _phi,
    "gelu_fast": _phi,
    "quick_gelu": _phi,
    "relu": lambda x: (x > 0).to(x.dtype),
}
CONVENTIONAL_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
}


class GatedActivation(nn.Module):
    """x * gate(x), the gate detached in explanation mode."""

    def __init__(self, gate: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.gate = gate
        self.explain = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate(x)
        return x * (g.detach() if self.explain else g)


class Activation(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _dense(n_in: int, n_out: int, b: float | None) -> nn.Module:
    return nn.Linear(n_in, n_out) if b is None else BcosLinear(n_in, n_out, b)


def _norm(config: BertConfig, b: float | None) -> nn.Module:
    eps = config.layer_norm_eps
    return nn.LayerNorm(config.hidden_size, eps=eps) if b is None else BcosLayerNorm(config.hidden_size, eps)


class _Namespace(nn.Module):
    """A module that only groups children, so that parameter names follow BertModel's."""


class SelfAttention(nn.Module):
    """Multi-head self-attention; Q/K/V without bias in the B-cos flavour, the probabilities a dynamic weight."""

    def __init__(self, config: BertConfig, b: float | None):
        super().__init__()
        d, self.heads = config.hidden_size, config.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(d, d, bias=b is None) for _ in range(3))
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.explain = False

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, d = x.shape

        def heads(h: torch.Tensor) -> torch.Tensor:
            return h.view(n, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + mask_bias, dim=-1)
        weights = self.dropout(probs.detach() if self.explain else probs)
        return (weights @ v).transpose(1, 2).reshape(n, t, d), probs


class Layer(nn.Module):
    """One BERT block: attention, add & norm, feed-forward, add & norm (post-norm, as BERT)."""

    def __init__(self, config: BertConfig, b: float | None):
        super().__init__()
        d, hidden = config.hidden_size, config.intermediate_size
        self.attention = _Namespace()
        self.attention.self = SelfAttention(config, b)
        self.attention.output = _Namespace()
        self.attention.output.dense = _dense(d, d, b)
        self.attention.output.LayerNorm = _norm(config, b)
        self.intermediate = _Namespace()
        self.intermediate.dense = _dense(d, hidden, b)
        act = config.hidden_act
        self.intermediate.act = (
            GatedActivation(GATES[act]) if b is not None else Activation(CONVENTIONAL_ACTIVATIONS[act])
        )
        self.output = _Namespace()
        self.output.dense = _dense(hidden, d, b)
        self.output.LayerNorm = _norm(config, b)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context, probs = self.attention.self(x, mask_bias)
        out = self.attention.output
        h = out.LayerNorm(self.dropout(out.dense(context)) + x)
        f = self.output.dense(self.intermediate.act(self.intermediate.dense(h)))
        return self.output.LayerNorm(self.dropout(f) + h), probs


class BertClassifier(nn.Module):
    """A BERT encoder with a sequence-classification head over [CLS]; B-cos when `b` is given (see the module)."""

    def __init__(self, config: BertConfig, classes: list[str], b: float | None = None):
        super().__init__()
        self.config, self.classes, self.b = config, list(classes), b
        self.embeddings = BertEmbeddings(config)
        self.encoder = _Namespace()
        self.encoder.layer = nn.ModuleList(Layer(config, b) for _ in range(config.num_hidden_layers))
        self.pooler = _Namespace()
        self.pooler.dense = _dense(config.hidden_size, config.hidden_size, b)
        self.pooler.act = Activation(torch.tanh if b is None else (lambda x: x))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = _dense(config.hidden_size, len(classes), b)

    @property
    def bcos(self) -> bool:
        return self.b is not None

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The embedding output x0 [texts, tokens, hidden]: where contributions are read."""
        return self.embeddings(input_ids=input_ids)

    def from_embeddings(
        self, x0: torch.Tensor, attention_mask: torch.Tensor, attentions: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [texts, classes] from the embedding output (and each layer's attention probabilities)."""
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x0.dtype)) * torch.finfo(x0.dtype).min
        h, probs = x0, []
        for layer in self.encoder.layer:
            h, p = layer(h, mask_bias)
            probs.append(p)
        pooled = self.pooler.act(self.pooler.dense(h[:, 0]))
        logits = self.classifier(self.dropout(pooled))
        return (logits, probs) if attentions else logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.from_embeddings(self.embed(input_ids), attention_mask)


@contextmanager
def explaining(model: nn.Module) -> Iterator[nn.Module]:
    """Explanation mode: the dynamic weights of every B-cos part are detached (eval mode, no dropout)."""
    parts = [m for m in model.modules() if hasattr(m, "explain")]
    training = model.training
    model.eval()
    for m in parts:
        m.explain = True
    try:
        yield model
    finally:
        for m in parts:
            m.explain = False
        model.train(training)


# Loading a checkpoint and converting it.


def check_b(b: float) -> None:
    if not (isinstance(b, int | float) and math.isfinite(b) and b >= 1):
        raise ValueError(
            f"B = {b!r}: expected a number >= 1 (B = 1 is a plain bias-free linear layer; the paper uses 1.5, "
            "larger B aligns weights more strongly with their inputs)"
        )


def base_config(name: str) -> BertConfig:
    """The BERT config of checkpoint `name` (alias, folder or hub name); only its config is read, and anything
    that is not a BertModel-compatible encoder is refused, before any weights load."""
    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        cause = str(err).strip().splitlines()[0]
        raise FileNotFoundError(f"checkpoint {name!r}: its config cannot be read ({cause})") from None
    kind = getattr(config, "model_type", None)
    if not isinstance(config, BertConfig):
        architectures = ", ".join(getattr(config, "architectures", None) or []) or "no architectures listed"
        raise ValueError(
            f"checkpoint {name!r} is a {kind!r} model ({architectures}); B-cos conversion takes a BERT-family "
            "encoder whose weights load as a BertModel (model_type 'bert'), such as the bundled 'minilm'"
        )
    problems = []
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type {config.position_embedding_type!r} (only 'absolute')")
    if config.hidden_act not in GATES:
        problems.append(f"hidden_act {config.hidden_act!r} (one of {sorted(GATES)})")
    if config.is_decoder or getattr(config, "add_cross_attention", False):
        problems.append("a decoder with cross-attention (an encoder only)")
    if problems:
        raise ValueError(f"checkpoint {name!r}: a BERT config, but with " + "; ".join(problems))
    return config


@dataclass
class Conversion:
    """What copying a checkpoint's weights into a classifier did."""

    copied: list[str]
    dropped: list[str]  # in the checkpoint, not in the model: biases removed by the conversion, and the like
    new: list[str]  # in the model, not in the checkpoint: the classification head (and a missing pooler)


def copy_weights(model: BertClassifier, source: dict[str, torch.Tensor]) -> Conversion:
    """Copy every checkpoint tensor whose name (and shape) the model has; B-cos rows are normalised at use."""
    target = model.state_dict()
    copied, dropped = [], []
    for name, tensor in source.items():
        if name in target and target[name].shape == tensor.shape:
            target[name].copy_(tensor)
            copied.append(name)
        elif name in target:
            raise ValueError(
                f"checkpoint tensor {name}: shape {tuple(tensor.shape)}, the model expects {tuple(target[name].shape)}"
            )
        else:
            dropped.append(name)
    new = [n for n in target if n not in source and not n.endswith(("position_ids", "token_type_ids"))]
    return Conversion(copied, dropped, new)


def build(name: str, classes: list[str], b: float | None, seed: int = 0) -> tuple[BertClassifier, Conversion]:
    """A classifier over checkpoint `name` with its pretrained weights, the head seeded by `seed`."""
    if b is not None:
        check_b(b)
    config = base_config(name)
    source = BertModel.from_pretrained(resolve_model(name)).state_dict()
    torch.manual_seed(seed)
    model = BertClassifier(config, classes, b)
    return model, copy_weights(model, source)


# Text to model inputs.


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask), each text cut to max_length tokens with its [CLS] and [SEP]; padded to the
    longest."""
    batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Masking and special-token handling need [CLS], [SEP], [PAD] and [MASK]."""
    missing = [t for t in ("cls", "sep", "pad", "mask") if getattr(tokenizer, f"{t}_token_id", None) is None]
    if missing:
        raise ValueError(f"checkpoint {name!r}: its tokenizer has no {', '.join(missing)} token(s)")


def special_mask(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """True at the tokens of the text itself: not [CLS], [SEP], padding."""
    specials = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id])
    return mask.bool() & ~torch.isin(ids, specials)


@torch.no_grad()
def predict(model: BertClassifier, ids: torch.Tensor, mask: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Class probabilities [texts, classes] (eval mode)."""
    training = model.training
    model.eval()
    out = [torch.softmax(model(ids[i : i + batch], mask[i : i + batch]).float(), -1) for i in range(0, len(ids), batch)]
    model.train(training)
    return torch.cat(out) if out else torch.zeros(0, len(model.classes))


# Explanations: per-token attributions [texts, tokens] for one target class per text.


def contributions(model: BertClassifier, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor):
    """B-cos contributions: input x gradient at the embedding output in explanation mode, summed over hidden
    dims; they add up to the target logit. (contributions, target logits)."""
    if not model.bcos:
        raise ValueError("contributions are exact only for a B-cos model; use a post-hoc method for this one")
    with explaining(model):
        x0 = model.embed(ids).detach().requires_grad_(True)
        logits = model.from_embeddings(x0, mask)
        chosen = logits.gather(1, target[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(chosen.sum(), x0)
    return (x0 * grad).sum(-1).detach(), chosen.detach()


def _forward(model: BertClassifier):
    return lambda ids, mask: model(ids, mask)


def bcos_explanation(model: BertClassifier, ids, mask, target, tokenizer, steps: int) -> torch.Tensor:
    """The B-cos model's own explanation: its exact contributions."""
    return contributions(model, ids, mask, target)[0]


def input_x_gradient(model: BertClassifier, ids, mask, target, tokenizer, steps: int) -> torch.Tensor:
    """Input x gradient at the embedding output, summed over hidden dims (Captum)."""
    from captum.attr import LayerGradientXActivation

    method = LayerGradientXActivation(_forward(model), model.embeddings)
    return method.attribute(ids, target=target, additional_forward_args=(mask,)).sum(-1).detach()


def integrated_gradients(model: BertClassifier, ids, mask, target, tokenizer, steps: int) -> torch.Tensor:
    """Integrated Gradients at the embedding output (Captum, `steps` Gauss-Legendre points), summed over hidden
    dims; the baseline is the same text with its own tokens replaced by [PAD], [CLS] and [SEP] kept."""
    from captum.attr import LayerIntegratedGradients

    baseline = torch.where(special_mask(tokenizer, ids, mask), tokenizer.pad_token_id, ids)
    method = LayerIntegratedGradients(_forward(model), model.embeddings)
    attr = method.attribute(ids, baselines=baseline, target=target, additional_forward_args=(mask,), n_steps=steps)
    return attr.sum(-1).detach()


@torch.no_grad()
def attention(model: BertClassifier, ids, mask, target, tokenizer, steps: int) -> torch.Tensor:
    """The last layer's attention from [CLS] to each token, averaged over heads (the same for every class)."""
    _, probs = model.from_embeddings(model.embed(ids), mask, attentions=True)
    return probs[-1][:, :, 0, :].mean(1)


@dataclass(frozen=True)
class Method:
    """An explanation method, f(model, ids, mask, target, tokenizer, steps) -> [texts, tokens], and which of the
    two models it explains."""

    explain: Callable[..., torch.Tensor]
    model: str  # "bcos" | "conventional"


METHODS: dict[str, Method] = {
    "bcos": Method(bcos_explanation, "bcos"),
    "integrated-gradients": Method(integrated_gradients, "conventional"),
    "input-x-gradient": Method(input_x_gradient, "conventional"),
    "attention": Method(attention, "conventional"),
}


def explain(method: str, model: BertClassifier, ids, mask, target, tokenizer, batch: int = 32, steps: int = 20):
    """Attributions [texts, tokens] of `method` for class `target` of each text, in batches (eval mode); zero
    at [CLS], [SEP] and padding."""
    fn, out = METHODS[method].explain, []
    model.eval()
    for i in range(0, len(ids), batch):
        part = slice(i, i + batch)
        out.append(fn(model, ids[part], mask[part], target[part], tokenizer, steps))
    attr = torch.cat(out).float()
    return torch.where(special_mask(tokenizer, ids, mask), attr, torch.zeros(()))


# Faithfulness.


def _counts(n_tokens: torch.Tensor, level: int) -> torch.Tensor:
    """Tokens in the top `level`% of each text: ceil(level% of its tokens), at least one."""
    return torch.clamp((n_tokens * level + 99) // 100, min=1)


def perturbed(ids, mask, attributions, tokenizer, level: int, keep: bool) -> torch.Tensor:
    """`ids` with each text's top-`level`% tokens by attribution replaced by [MASK] (keep=False: comprehensiveness)
    or with all but them replaced (keep=True: sufficiency); [CLS], [SEP] and padding are never masked."""
    text = special_mask(tokenizer, ids, mask)
    scores = attributions.masked_fill(~text, float("-inf"))
    order = scores.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)  # each token's place in its text's order
    top = (rank < _counts(text.sum(1), level)[:, None]) & text
    replace = (text & ~top) if keep else top
    return ids.masked_fill(replace, tokenizer.mask_token_id)


def faithfulness(model, ids, mask, attributions, tokenizer, levels=LEVELS, batch: int = 64) -> dict[str, np.ndarray]:
    """Per text: comprehensiveness and sufficiency averaged over `levels` (the area under each curve), for the
    predicted class. {"comprehensiveness", "sufficiency"}: arrays [texts]; and the per-level means."""
    full = predict(model, ids, mask, batch)
    pred = full.argmax(1)
    p_full = full.gather(1, pred[:, None]).squeeze(1)
    comp, suff = [], []
    for level in levels:
        for keep, out in ((False, comp), (True, suff)):
            p = predict(model, perturbed(ids, mask, attributions, tokenizer, level, keep), mask, batch)
            out.append((p_full - p.gather(1, pred[:, None]).squeeze(1)).numpy())
    comp, suff = np.stack(comp, 1), np.stack(suff, 1)
    return {
        "comprehensiveness": comp.mean(1),
        "sufficiency": suff.mean(1),
        "comprehensiveness_by_level": comp.mean(0),
        "sufficiency_by_level": suff.mean(0),
    }


def pointing_game(attributions: torch.Tensor, segments: torch.Tensor, segment: int) -> torch.Tensor:
    """Per synthetic text: the share of its positive attribution mass that falls inside segment `segment`
    (segments: [texts, tokens] segment index per token, -1 at [CLS], [SEP] and padding)."""
    positive = attributions.clamp(min=0) * (segments >= 0)
    inside = (positive * (segments == segment)).sum(1)
    total = positive.sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros(()))


def concatenate(tokenizer, texts: list[list[str]], max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic inputs of several texts each: [CLS] text 1 text 2 ... [SEP], each text cut to an equal share of
    max_length. (ids, attention mask, segment index per token: -1 at [CLS], [SEP] and padding)."""
    rows, segs = [], []
    for group in texts:
        share = (max_length - 2) // len(group)
        pieces = [tokenizer(t, add_special_tokens=False, truncation=True, max_length=share)["input_ids"] for t in group]
        rows.append([tokenizer.cls_token_id, *[i for p in pieces for i in p], tokenizer.sep_token_id])
        segs.append([-1, *[s for s, p in enumerate(pieces) for _ in p], -1])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    segments = torch.full((len(rows), width), -1)
    for i, (r, s) in enumerate(zip(rows, segs)):
        ids[i, : len(r)], mask[i, : len(r)], segments[i, : len(s)] = torch.tensor(r), 1, torch.tensor(s)
    return ids, mask, segments


def load_base_tokenizer(name: str) -> PreTrainedTokenizerBase:
    tokenizer = load_tokenizer(name)
    check_tokenizer(tokenizer, name)
    return tokenizer


# Training helpers (the loop itself runs on Ray Train: pipeline/bcos.py).


def batch_plan(lengths: list[int], batch: int, epochs: int, seed: int, pool: int = 50) -> list[list[int]]:
    """Every step's batch of training rows (indices into `lengths`), all epochs in order. Each epoch is a seeded
    shuffle; within pools of `pool` batches rows are grouped by token length (less padding), and the batches of
    an epoch are shuffled again; a pool's short last batch joins the one before it. A function of its arguments
    alone, so a resumed run takes the same batches."""
    plan = []
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(lengths))
        batches = []
        for start in range(0, len(order), batch * pool):
            chunk = sorted(order[start : start + batch * pool], key=lambda i: lengths[i])
            cut = [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
            if len(cut) > 1 and 2 * len(cut[-1]) < batch:  # no tiny batch: each holds at least half a batch
                cut[-2:] = [cut[-2] + cut[-1]]
            batches += cut
        plan += [[int(i) for i in batches[j]] for j in rng.permutation(len(batches))]
    return plan


def warmup_linear(steps: int, warmup: float) -> Callable[[int], float]:
    """Learning-rate factor at each step: linear warm-up over the first `warmup` share of steps, then linear decay
    to 0."""
    ramp = max(1, int(steps * warmup))

    def factor(step: int) -> float:
        return step / ramp if step < ramp else max(0.0, (steps - step) / max(1, steps - ramp))

    return factor


def model_config(model: BertClassifier) -> dict:
    """What rebuilding the model needs besides its weights (JSON-able)."""
    return {"bert": model.config.to_dict(), "classes": model.classes, "b": model.b}


def from_config(config: dict, weights: dict[str, torch.Tensor], bcos: bool = True) -> BertClassifier:
    """The classifier described by `model_config` (its B-cos flavour, or the conventional one), with `weights`
    (a state dict), in eval mode."""
    model = BertClassifier(BertConfig.from_dict(config["bert"]), config["classes"], config["b"] if bcos else None)
    model.load_state_dict(weights)
    return model.eval()
