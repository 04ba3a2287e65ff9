"""Labels out to other tools: Neuronpedia explanation JSONL and delphi's explanations/ folder."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

from pipeline.query import open_run
from pipeline.storage import CONFIG, MANIFEST, RunStore

TYPE_NAME = "toklabel"
# Hook names to the kind part of a Neuronpedia source id ("6-res-jb": layer 6, residual stream).
HOOK_KINDS = {"resid": "res", "mlp": "mlp", "attn": "att", "attention": "att"}


def run_meta(uri: str) -> dict:
    """The subject model and hook of a run: from the manifest, else from its config."""
    store = RunStore(uri)
    meta = {}
    for rel, read in ((CONFIG, lambda r: yaml.safe_load(store.read_text(r))), (MANIFEST, store.read_json)):
        if store.exists(rel):
            meta.update({k: v for k, v in (read(rel) or {}).items() if k in ("model", "hook") and v})
    return meta


def default_source(hook: str) -> str:
    """A Neuronpedia source id from a hook name: blocks.3.hook_resid_post -> 3-res."""
    layer = re.search(r"(?:blocks|layers|layer|h)\.(\d+)", hook)
    kind = next((v for k, v in HOOK_KINDS.items() if k in hook), "res")
    if not layer:
        raise ValueError(f"cannot tell the layer from hook {hook!r}; give the Neuronpedia source with --source")
    return f"{layer[1]}-{kind}"


def labeled(uri: str) -> list[dict]:
    """The run's labeled features (status ok), by feature id."""
    rel = open_run(uri).execute(
        "SELECT feature_id, label, score, alternatives, discriminator FROM labels "
        "WHERE status = 'ok' ORDER BY feature_id"
    )
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r)) for r in rel.fetchall()]


def neuronpedia_records(uri: str, model_id: str | None = None, source: str | None = None) -> list[dict]:
    """One Neuronpedia explanation per labeled feature (fields of Neuronpedia's Explanation table)."""
    rows = labeled(uri)
    meta = run_meta(uri)
    model_id = model_id or (Path(meta["model"]).name.lower() if meta.get("model") else None)
    if not model_id:
        raise ValueError(f"{uri} does not name its subject model; give the Neuronpedia model id with --model-id")
    if not source:
        if not meta.get("hook"):
            raise ValueError(f"{uri} does not name its hook; give the Neuronpedia source id with --source")
        source = default_source(meta["hook"])
    return [
        {
            "modelId": model_id,
            "layer": source,
            "index": str(row["feature_id"]),
            "description": row["label"],
            "typeName": TYPE_NAME,
            "explanationModelName": row["discriminator"],
            "score": row["score"],
            "notes": "held-out ROC AUC; alternatives: "
            + ", ".join(
                f"{a['label']} ({a['score']:.3f})" for a in row["alternatives"] or [] if a["score"] is not None
            ),
        }
        for row in rows
    ]


def write_neuronpedia(uri: str, out: str | None, model_id: str | None = None, source: str | None = None) -> int:
    """Write Neuronpedia explanation JSONL to `out` (stdout when None); the number of records."""
    records = neuronpedia_records(uri, model_id, source)
    stream = open(out, "w") if out else sys.stdout
    try:
        for rec in records:
            stream.write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        if out:
            stream.close()
    return len(records)


def write_delphi(uri: str, out_dir: str, module: str | None = None) -> int:
    """delphi's layout: OUT/explanations/{module}_latent{i}.txt, each holding its label as a JSON string."""
    rows = labeled(uri)
    module = module or run_meta(uri).get("hook")
    if not module:
        raise ValueError(f"{uri} does not name its hook; give delphi's module name with --module")
    folder = Path(out_dir) / "explanations"
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (folder / f"{module}_latent{row['feature_id']}.txt").write_text(
            json.dumps(row["label"], ensure_ascii=False), "utf-8"
        )
    return len(rows)
