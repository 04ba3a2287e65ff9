"""The subject model whose activations an SAE reads, with SAELens-style hook points."""

import re

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from workers.models import load_encoder, load_tokenizer, resolve_model

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_mlp_out|attn\.hook_z)$")
_HOOK_FORMS = (
    "blocks.{L}.hook_resid_pre, blocks.{L}.hook_resid_post, blocks.{L}.hook_mlp_out, blocks.{L}.attn.hook_z, "
    "or a dotted module path inside the model (e.g. encoder.layer.3.output)"
)
# Names of the feed-forward submodule inside a transformer layer, across families.
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
# Where the per-head attention output z (heads concatenated, before the output projection) lives, per family:
# (module path inside a layer, whether z is that module's input rather than its output).
_Z_MODULES = (
    ("attn.c_proj", True),  # GPT-2
    ("self_attn.o_proj", True),  # Llama, Mistral, Gemma, Qwen
    ("self_attn.out_proj", True),  # OPT, BART-style decoders
    ("attention.self", False),  # BERT: BertSelfAttention returns the merged heads
)


class _StopForward(Exception):
    """Raised from the hook to skip the layers after the hooked one."""


def _first(output):
    """Return the hidden-state tensor from a module output that may be a tuple."""
    return output[0] if isinstance(output, (tuple, list)) else output


def hook_width(config, hook: str) -> int | None:
    """Width of the activations at `hook` from the model config alone; None for module paths (not knowable)."""
    match = _BLOCK_HOOK.match(hook)
    if not match:
        return None
    if match.group(2) == "attn.hook_z":
        # hook_z is [n_heads, d_head] per token in TransformerLens; SAEs read it flattened.
        heads = config.num_attention_heads
        return heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)
    return config.hidden_size


def check_hook(name: str, hook: str, d_in: int) -> None:
    """Refuse, from the model's config alone, a blocks.L hook out of range or of another width than the SAE's."""
    config = AutoConfig.from_pretrained(resolve_model(name))
    match = _BLOCK_HOOK.match(hook)
    n_layers = getattr(config, "num_hidden_layers", None)
    if match and n_layers is not None and int(match.group(1)) >= n_layers:
        raise ValueError(
            f"hook {hook!r} on model {name!r}: layer {match.group(1)} out of range; "
            f"expected {_HOOK_FORMS} with L in 0..{n_layers - 1} ({n_layers} layers)"
        )
    width = hook_width(config, hook)
    if width is not None and width != d_in:
        raise ValueError(f"SAE d_in={d_in} does not match the width {width} of {name!r} at hook {hook!r}")
    if not match:
        # A model on the meta device has every module and no weights: module paths are checked for free.
        with torch.device("meta"):
            skeleton = AutoModel.from_config(config)
        try:
            skeleton.get_submodule(hook)
        except AttributeError:
            raise ValueError(
                f"hook {hook!r} on model {name!r} ({type(skeleton).__name__}): no such module path; "
                f"expected {_HOOK_FORMS}"
            ) from None


def find_layers(model: nn.Module) -> nn.ModuleList:
    """Return the model's list of transformer layers (the ModuleList with num_hidden_layers entries)."""
    n_layers = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(
        f"{type(model).__name__}: no nn.ModuleList of {n_layers} layers "
        f"(config.num_hidden_layers) found to map blocks.L hooks onto"
    )


class SubjectModel:
    """A frozen HF encoder or causal LM with one hook point whose activations are captured."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, hook: str, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.hook = hook
        self.name = name
        self.device = next(model.parameters()).device
        # Right padding keeps real tokens at the same positions as unpadded runs for causal LMs too.
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._module, self._pre = self._resolve_hook(hook)

    @classmethod
    def load(cls, name: str, hook: str, device: str = "cpu", dtype: torch.dtype | None = None) -> "SubjectModel":
        """Load model and tokenizer for `name` (alias, folder or hub id) hooked at `hook`, on `device` in `dtype`."""
        model = load_encoder(name).to(device=device, dtype=dtype)
        return cls(model, load_tokenizer(name), hook, name)

    @property
    def d_model(self) -> int:
        """Width of the activations at the hook (a module path is measured with one tiny forward pass)."""
        width = hook_width(self.model.config, self.hook)
        if width is None:
            width = self.activations(["a"], max_length=4)[0].shape[-1]
        return width

    def _resolve_hook(self, hook: str) -> tuple[nn.Module, bool]:
        """Return the module to hook and whether to capture its input (pre-hook) instead of its output."""
        layers = find_layers(self.model)
        match = _BLOCK_HOOK.match(hook)
        if match:
            index, kind = int(match.group(1)), match.group(2)
            if index >= len(layers):
                raise self._hook_error(hook, f"layer {index} out of range", len(layers))
            layer = layers[index]
            if kind == "hook_resid_pre":
                return layer, True
            if kind == "hook_resid_post":
                return layer, False
            if kind == "attn.hook_z":
                return self._attn_z(layer, hook)
            return self._mlp(layer, hook), False
        try:
            return self.model.get_submodule(hook), False
        except AttributeError:
            raise self._hook_error(hook, "no such module path", len(layers)) from None

    def _mlp(self, layer: nn.Module, hook: str) -> nn.Module:
        """Return the layer's feed-forward submodule for hook_mlp_out."""
        for mlp_name in _MLP_NAMES:
            if hasattr(layer, mlp_name):
                return getattr(layer, mlp_name)
        raise NotImplementedError(
            f"hook {hook!r} on {self.name} ({type(layer).__name__}): no separate MLP module "
            f"(looked for {', '.join(_MLP_NAMES)}); in BERT-style layers the FFN output is fused with "
            "the residual add and LayerNorm, so use hook_resid_post or a module path instead"
        )

    def _attn_z(self, layer: nn.Module, hook: str) -> tuple[nn.Module, bool]:
        """Return the module around the attention heads' output z and whether z is its input."""
        for path, is_input in _Z_MODULES:
            try:
                return layer.get_submodule(path), is_input
            except AttributeError:
                continue
        raise ValueError(
            f"hook {hook!r} on {self.name} ({type(layer).__name__}): no attention output projection found "
            f"(looked for {', '.join(p for p, _ in _Z_MODULES)}); use a module path instead"
        )

    def _hook_error(self, hook: str, why: str, n_layers: int) -> ValueError:
        """Build the error for a hook that does not resolve."""
        return ValueError(
            f"hook {hook!r} on model {self.name!r} ({type(self.model).__name__}): {why}; "
            f"expected {_HOOK_FORMS} with L in 0..{n_layers - 1} ({n_layers} layers)"
        )

    @torch.no_grad()
    def activations(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
        """Return activations [n, seq, d] float32, mask [n, seq] of real non-special tokens, their strings."""
        enc = self.tokenizer(
            texts,
            max_length=max_length,
            truncation=True,
            padding=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        # CLS/BOS positions have outsized norms and would dominate SAE latents, so they are masked out.
        mask = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
        captured: list[torch.Tensor] = []

        def capture(tensor: torch.Tensor) -> None:
            captured.append(tensor)
            raise _StopForward

        if self._pre:
            handle = self._module.register_forward_pre_hook(
                lambda _m, args, kwargs: capture(args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True,
            )
        else:
            handle = self._module.register_forward_hook(lambda _m, _i, out: capture(_first(out)))
        try:
            self.model(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device),
            )
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"hook {self.hook!r} on {self.name!r} never ran during the forward pass")
        acts = captured[0].float().cpu()
        ids = enc["input_ids"]
        tokens = [self.tokenizer.convert_ids_to_tokens(ids[i][mask[i]].tolist()) for i in range(len(texts))]
        return acts, mask, tokens
