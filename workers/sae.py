"""Sparse autoencoders: a registry of architectures and a registry of file formats (SAELens, sparsify, Gemma Scope)."""

import json
import math
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from workers.sae_hub import resolve_sae

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSIFY_FILE = "sae.safetensors"
GEMMA_SCOPE_FILE = "params.npz"
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
        raise ValueError(f"{source}: missing key {key!r}")
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
        raise ValueError(f"{source}: missing key 'hook_name' (top level or in 'metadata')")
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


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse missing, misshapen or unexpected tensors, naming the file and tensor."""
    for name, shape in shapes.items():
        if name not in tensors:
            raise ValueError(f"{path}: missing tensor {name!r} (has {', '.join(sorted(tensors))})")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, expected {list(shape)}")
    unexpected = set(tensors) - set(shapes)
    if unexpected:
        raise ValueError(f"{path}: unexpected tensors {sorted(unexpected)} for this architecture")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file as float32; a damaged file is a ValueError naming it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name).float() for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    """All arrays of an .npz file (never unpickled) as float32 tensors; a damaged file is a ValueError."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: torch.from_numpy(np.asarray(archive[name], dtype=np.float32)) for name in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None


def _read_json(path: Path) -> dict:
    """A JSON object from `path`, or a ValueError naming the file."""
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


def _load_saelens(folder: Path, model_name: str | None, hook_name: str | None) -> tuple[SAEConfig, dict]:
    """SAELens: cfg.json (v6 or flat) + sae_weights.safetensors in SAELens tensor layout."""
    cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    cfg = config_from_saelens(_read_json(cfg_path), cfg_path)
    tensors = _read_safetensors(weights_path)
    for name in _LEGACY_SCALES:
        scale = tensors.pop(name, None)
        if scale is not None and not torch.all(scale == 1):
            raise ValueError(
                f"{weights_path}: tensor {name!r} is not all ones; legacy fine-tuning scales are not supported"
            )
    return cfg, tensors


def _load_gemma_scope(path: Path, model_name: str | None, hook_name: str | None) -> tuple[SAEConfig, dict]:
    """Gemma Scope: params.npz with W_enc, W_dec, b_enc, b_dec, threshold; JumpReLU, encoder reads raw x."""
    npz = path if path.is_file() else path / GEMMA_SCOPE_FILE
    if not model_name or not hook_name:
        raise ValueError(f"{npz}: Gemma Scope files do not name their model and hook; set 'model' and 'hook'")
    tensors = _read_npz(npz)
    if "W_enc" not in tensors or tensors["W_enc"].ndim != 2:
        raise ValueError(f"{npz}: missing 2-D tensor 'W_enc' (has {', '.join(sorted(tensors))})")
    d_in, d_sae = tensors["W_enc"].shape
    # Gemma Scope's encoder is x @ W_enc + b_enc: b_dec is not subtracted first.
    cfg = SAEConfig("jumprelu", d_in, d_sae, model_name, hook_name, apply_b_dec_to_input=False)
    return cfg, tensors


def sparsify_hook(layer_folder: str) -> str:
    """The hook for a sparsify layer folder: layers.N -> resid_post, layers.N.mlp -> mlp_out, else as is."""
    match = re.fullmatch(r"(?:model\.)?layers\.(\d+)(\.mlp)?", layer_folder)
    if not match:
        return layer_folder
    return f"blocks.{match.group(1)}.{'hook_mlp_out' if match.group(2) else 'hook_resid_post'}"


def _load_sparsify(folder: Path, model_name: str | None, hook_name: str | None) -> tuple[SAEConfig, dict]:
    """EleutherAI sparsify: cfg.json + sae.safetensors (encoder.weight [d_sae, d_in], encoder.bias, W_dec, b_dec)."""
    cfg_path, weights_path = folder / CFG_FILE, folder / SPARSIFY_FILE
    raw = _read_json(cfg_path)
    tensors = _read_safetensors(weights_path)
    if "encoder.weight" not in tensors:
        raise ValueError(f"{weights_path}: missing tensor 'encoder.weight' (has {', '.join(sorted(tensors))})")
    d_sae_file, d_in_file = tensors["encoder.weight"].shape
    d_in = int(raw.get("d_in", d_in_file))
    d_sae = int(raw.get("num_latents") or d_in * int(raw.get("expansion_factor", 0)) or d_sae_file)
    if raw.get("activation", "topk") != "topk":
        raise ValueError(f"{cfg_path}: activation {raw['activation']!r} is not supported; expected 'topk'")
    if raw.get("transcode") or raw.get("skip_connection"):
        raise ValueError(f"{cfg_path}: transcoders and skip connections are not SAEs; not supported")
    k = int(_take(dict(raw), "k", cfg_path))
    cfg = SAEConfig(
        "topk",
        d_in,
        d_sae,
        model_name=model_name or "",
        hook_name=hook_name or sparsify_hook(folder.name),
        # sparsify subtracts b_dec before the encoder, as SAELens does.
        apply_b_dec_to_input=True,
        k=k,
        extra={key: value for key, value in raw.items() if key not in ("d_in", "k", "num_latents")},
    )
    # sparsify stores the encoder as nn.Linear [d_sae, d_in]; SAELens layout is W_enc [d_in, d_sae].
    tensors["W_enc"] = tensors.pop("encoder.weight").T.contiguous()
    tensors["b_enc"] = tensors.pop("encoder.bias", torch.zeros(d_sae))
    return cfg, tensors


@dataclass(frozen=True)
class SAEFormat:
    """A file format: the files that identify it and the loader that reads them."""

    description: str
    files: tuple[str, ...]
    load: Callable[[Path, str | None, str | None], tuple[SAEConfig, dict]]

    def matches(self, path: Path) -> bool:
        """Whether `path` (a folder, or a single file) holds this format."""
        if path.is_file():
            return len(self.files) == 1 and path.suffix == Path(self.files[0]).suffix
        return all((path / name).is_file() for name in self.files)


FORMATS: dict[str, SAEFormat] = {
    "saelens": SAEFormat("SAELens", (CFG_FILE, WEIGHTS_FILE), _load_saelens),
    "sparsify": SAEFormat("EleutherAI sparsify", (CFG_FILE, SPARSIFY_FILE), _load_sparsify),
    "gemma-scope": SAEFormat("Gemma Scope", (GEMMA_SCOPE_FILE,), _load_gemma_scope),
}


def detect_format(path: Path) -> str:
    """The name of the format held at `path`, or FileNotFoundError saying what each format needs."""
    found = [name for name, fmt in FORMATS.items() if fmt.matches(path)]
    if found:
        return found[0]
    expected = "; ".join(f"{fmt.description}: {' + '.join(fmt.files)}" for fmt in FORMATS.values())
    if path.is_dir():
        layers = sorted(p.name for p in path.iterdir() if p.is_dir() and any(f.matches(p) for f in FORMATS.values()))
        hint = f"; it has SAE subfolders, pick one: {', '.join(layers)}" if layers else ""
        present = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(f"SAE folder {path} holds no supported format ({expected}); found {present}{hint}")
    raise FileNotFoundError(f"SAE not found: {path} (expected a folder or file with {expected})")


def load_sae(path: str | Path, device: str = "cpu", model_name: str | None = None, hook_name: str | None = None) -> SAE:
    """Load an SAE from any supported format, local or named (`saelens:`/`hf:`, see workers.sae_hub);
    `model_name`/`hook_name` fill in what the file does not say."""
    path = Path(resolve_sae(path))
    if not path.exists():
        raise FileNotFoundError(f"SAE folder not found: {path}")
    fmt = FORMATS[detect_format(path)]
    cfg, tensors = fmt.load(path, model_name, hook_name)
    sae = build_sae(cfg)
    _check_tensors(path / fmt.files[-1] if path.is_dir() else path, tensors, sae.param_shapes(cfg))
    sae.load_state_dict(tensors)
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
