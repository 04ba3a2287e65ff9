"""Sparse autoencoders behind a registry of architectures, loaded from and saved to SAELens folders."""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
# Legacy SAELens checkpoints may carry these; an all-ones tensor is a no-op and can be dropped.
_LEGACY_SCALES = ("scaling_factor", "finetuning_scaling_factor")


@dataclass
class SAEConfig:
    """What an SAE reads and how it encodes; mirrors the SAELens cfg.json fields we use."""

    architecture: str
    d_in: int
    d_sae: int
    model_name: str = ""
    hook_name: str = ""
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    k: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SAE(nn.Module):
    """Base SAE: subclasses set `architecture`, extend `param_shapes` and implement `encode`."""

    architecture: ClassVar[str]

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations={cfg.normalize_activations!r} is not supported; "
                f"expected one of {', '.join(NORMALIZATIONS)}"
            )
        self.cfg = cfg
        for name, shape in self.param_shapes(cfg).items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Return the SAELens tensor names and shapes this architecture needs."""
        return {
            "W_enc": (cfg.d_in, cfg.d_sae),
            "b_enc": (cfg.d_sae,),
            "W_dec": (cfg.d_sae, cfg.d_in),
            "b_dec": (cfg.d_in,),
        }

    def _normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, Any, Any]:
        """Apply the run-time input normalisation; return x and the (scale, shift) that undo it."""
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            scale = x.norm(dim=-1, keepdim=True) / math.sqrt(x.shape[-1])
            return x / scale, scale, 0.0
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True) + 1e-5
            return (x - mu) / std, std, mu
        # "expected_average_only_in" is a training-time scale that SAELens folds into the weights.
        return x, 1.0, 0.0

    def sae_in(self, x: torch.Tensor) -> torch.Tensor:
        """Return the encoder input: normalised x, minus b_dec when apply_b_dec_to_input."""
        x = self._normalize(x.to(self.W_dec.dtype))[0]
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return latent activations [..., d_sae] for activations [..., d_in]."""
        raise NotImplementedError(f"{type(self).__name__} does not implement encode")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction, in normalised space, of latents z."""
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction of x in the original (un-normalised) space."""
        _, scale, shift = self._normalize(x.to(self.W_dec.dtype))
        return self.decode(self.encode(x)) * scale + shift


ARCHITECTURES: dict[str, type[SAE]] = {}


def register(name: str) -> Callable[[type[SAE]], type[SAE]]:
    """Class decorator that registers an SAE architecture under its SAELens name."""

    def add(cls: type[SAE]) -> type[SAE]:
        cls.architecture = name
        ARCHITECTURES[name] = cls
        return cls

    return add


@register("standard")
class StandardSAE(SAE):
    """ReLU SAE: relu(x' W_enc + b_enc)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return ReLU latents."""
        return torch.relu(self.sae_in(x) @ self.W_enc + self.b_enc)


@register("topk")
class TopKSAE(SAE):
    """TopK SAE: keep the k largest pre-activations, ReLU'd, zero the rest (as SAELens)."""

    def __init__(self, cfg: SAEConfig):
        if not cfg.k or cfg.k < 1 or cfg.k > cfg.d_sae:
            raise ValueError(f"topk SAE needs 1 <= k <= d_sae={cfg.d_sae}, got k={cfg.k!r}")
        super().__init__(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return TopK latents."""
        pre = self.sae_in(x) @ self.W_enc + self.b_enc
        top = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))


@register("jumprelu")
class JumpReLUSAE(SAE):
    """JumpReLU SAE: relu(pre) where pre > threshold per latent, else 0."""

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Standard tensors plus a per-latent threshold."""
        return {**super().param_shapes(cfg), "threshold": (cfg.d_sae,)}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return JumpReLU latents."""
        pre = self.sae_in(x) @ self.W_enc + self.b_enc
        return torch.relu(pre) * (pre > self.threshold)


@register("gated")
class GatedSAE(SAE):
    """Gated SAE: gate on x' W_enc + b_gate, magnitude relu(x' (W_enc * exp(r_mag)) + b_mag)."""

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Gated tensors; there is no b_enc."""
        return {
            "W_enc": (cfg.d_in, cfg.d_sae),
            "b_gate": (cfg.d_sae,),
            "r_mag": (cfg.d_sae,),
            "b_mag": (cfg.d_sae,),
            "W_dec": (cfg.d_sae, cfg.d_in),
            "b_dec": (cfg.d_in,),
        }

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return gated latents."""
        sae_in = self.sae_in(x)
        gate = (sae_in @ self.W_enc + self.b_gate) > 0
        magnitude = torch.relu(sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
        return gate * magnitude


def _take(raw: dict, key: str, source: Path) -> Any:
    """Pop and return raw[key] or raise naming the key and file."""
    if key not in raw:
        raise KeyError(f"{source}: missing key {key!r}")
    return raw.pop(key)


def config_from_saelens(raw: dict, source: Path) -> SAEConfig:
    """Build an SAEConfig from a SAELens cfg.json dict, v6 (with `metadata`) or the older flat layout."""
    flat = {**raw, **(raw.get("metadata") or {})}
    flat.pop("metadata", None)
    # SAELens before v6 expressed TopK as activation_fn_str="topk" with k in activation_fn_kwargs.
    architecture = flat.pop("architecture", "standard")
    kwargs = flat.pop("activation_fn_kwargs", None) or {}
    if flat.pop("activation_fn_str", None) == "topk":
        architecture = "topk"
    k = flat.pop("k", kwargs.get("k"))
    hook_name = flat.pop("hook_name", None) or flat.pop("hook_point", None)
    if hook_name is None:
        raise KeyError(f"{source}: missing key 'hook_name' (top level or in 'metadata')")
    return SAEConfig(
        architecture=architecture,
        d_in=int(_take(flat, "d_in", source)),
        d_sae=int(_take(flat, "d_sae", source)),
        model_name=_take(flat, "model_name", source),
        hook_name=hook_name,
        apply_b_dec_to_input=bool(flat.pop("apply_b_dec_to_input", True)),
        normalize_activations=flat.pop("normalize_activations", None) or "none",
        k=int(k) if k is not None else None,
        # dtype and device describe the saved file, not the SAE; we always load float32.
        extra={key: value for key, value in flat.items() if key not in ("dtype", "device")},
    )


def build_sae(cfg: SAEConfig) -> SAE:
    """Instantiate the registered architecture for cfg (weights zero)."""
    if cfg.architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown SAE architecture {cfg.architecture!r}; registered: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[cfg.architecture](cfg)


def _read_weights(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Read and check the tensors named in `shapes` from a safetensors file, as float32."""
    with safe_open(str(path), framework="pt") as handle:
        found = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        for name, shape in shapes.items():
            if name not in found:
                raise KeyError(f"{path}: missing tensor {name!r} (has {', '.join(sorted(found))})")
            if found[name] != shape:
                raise ValueError(f"{path}: tensor {name!r} has shape {list(found[name])}, expected {list(shape)}")
        tensors = {name: handle.get_tensor(name).float() for name in found}
    for name in _LEGACY_SCALES:
        scale = tensors.pop(name, None)
        if scale is not None and not torch.all(scale == 1):
            raise ValueError(f"{path}: tensor {name!r} is not all ones; legacy fine-tuning scales are not supported")
    unexpected = set(tensors) - set(shapes)
    if unexpected:
        raise ValueError(f"{path}: unexpected tensors {sorted(unexpected)} for this architecture")
    return tensors


def load_sae(path: str | Path, device: str = "cpu") -> SAE:
    """Load an SAE from a SAELens folder holding cfg.json and sae_weights.safetensors."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE folder not found: {folder}")
    cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    for needed in (cfg_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"SAE folder {folder} lacks {needed.name}")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{cfg_path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, found {type(raw).__name__}")
    cfg = config_from_saelens(raw, cfg_path)
    sae = build_sae(cfg)
    sae.load_state_dict(_read_weights(weights_path, sae.param_shapes(cfg)))
    return sae.to(device).eval().requires_grad_(False)


def save_saelens(sae: SAE, folder: str | Path) -> None:
    """Write sae as a SAELens v6 folder: cfg.json (with metadata) and sae_weights.safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    raw: dict[str, Any] = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "metadata": {**cfg.extra, "model_name": cfg.model_name, "hook_name": cfg.hook_name},
    }
    if cfg.k is not None:
        raw["k"] = cfg.k
    (folder / CFG_FILE).write_text(json.dumps(raw, indent=2) + "\n")
    tensors = {name: param.detach().float().cpu().contiguous() for name, param in sae.named_parameters()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
