"""SAEs by name, where the network allows: a SAELens release and SAE id, or a Hugging Face repo and a path in
it, downloaded once to the local Hugging Face cache and read from there like a local folder.

    sae: saelens:gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical
    sae: hf:google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import yaml

SAELENS = "saelens:"
HUB = "hf:"
SAELENS_DIRECTORY = "pretrained_saes.yaml"  # the release directory shipped inside the sae-lens package


def is_named(spec: str) -> bool:
    return str(spec).startswith((SAELENS, HUB))


def saelens_location(release: str, sae_id: str, directory: Path | None = None) -> tuple[str, str]:
    """(Hugging Face repo, path in it) of SAE `sae_id` of SAELens release `release`, from the package's release
    directory (or `directory`), read as data: the package itself is not imported."""
    if directory is None:
        spec = importlib.util.find_spec("sae_lens")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                f"sae {SAELENS}{release}:{sae_id} needs the SAELens release directory: pip install 'toklabel[saelens]'"
            )
        directory = Path(spec.submodule_search_locations[0]) / SAELENS_DIRECTORY
    releases = yaml.safe_load(Path(directory).read_text())
    releases = releases.get("SAE_LOOKUP", releases)
    if release not in releases:
        raise ValueError(f"SAELens has no release {release!r}; releases include {sorted(releases)[:8]}")
    saes = {s["id"]: s for s in releases[release].get("saes", [])}
    if sae_id not in saes:
        raise ValueError(f"SAELens release {release!r} has no SAE {sae_id!r}; its ids include {sorted(saes)[:8]}")
    return releases[release]["repo_id"], saes[sae_id]["path"]


def parse(spec: str) -> tuple[str, str]:
    """(repo, path in it) named by an `saelens:` or `hf:` SAE spec."""
    if spec.startswith(SAELENS):
        release, _, sae_id = spec[len(SAELENS) :].partition(":")
        if not release or not sae_id:
            raise ValueError(f"sae {spec!r}: expected {SAELENS}RELEASE:SAE_ID")
        return saelens_location(release, sae_id)
    parts = spec[len(HUB) :].strip("/").split("/", 2)
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"sae {spec!r}: expected {HUB}OWNER/REPO[/PATH]")
    return "/".join(parts[:2]), parts[2] if len(parts) == 3 else ""


def resolve_sae(spec: str) -> str:
    """A local path for SAE `spec`: itself, or the folder or file an `saelens:`/`hf:` spec names, downloaded to
    the local Hugging Face cache (offline, only what the cache already holds)."""
    spec = str(spec)
    if not is_named(spec):
        return spec
    repo, path = parse(spec)
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    patterns = [path, f"{path}/*"] if path else None
    try:
        root = snapshot_download(repo, allow_patterns=patterns, local_files_only=offline)
    except Exception as err:  # the hub's errors (offline, not found, no access) all mean the SAE is not here
        why = "the hub is offline (HF_HUB_OFFLINE=1) and the local cache does not hold it" if offline else str(err)
        raise ValueError(
            f"sae {spec!r} (repo {repo}, path {path or '/'}) cannot be downloaded: {why.splitlines()[0]}; download it "
            "where the network allows, or give a local path"
        ) from err
    local = Path(root) / path
    if not local.exists():
        raise ValueError(f"sae {spec!r}: repo {repo} has no {path!r}")
    return str(local)
