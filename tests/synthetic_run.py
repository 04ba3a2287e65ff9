"""Build a run in code (labels, examples, latents shards and a manifest) so reading tests need no model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.plan import plan_shards
from pipeline.storage import MANIFEST, RunStore
from workers.harvest import EXAMPLES_SCHEMA, LATENTS_SCHEMA
from workers.labeler import LABELS_SCHEMA

WORDS = ["the", "river", "bank", "money", "loan", "##s", "interest", "rate", "flows", "water", "deep", "paid"]


def write_run(
    uri: str,
    n_features: int = 40,
    shard_size: int = 10,
    top: int = 4,
    negatives: int = 2,
    context_tokens: int = 16,
    manifest: bool = True,
    dead: tuple[int, ...] = (3,),
    failed: tuple[int, ...] = (5,),
    vocabulary: list[str] | None = None,
) -> RunStore:
    """A run of `n_features` features: feature f's top contexts peak on token f % len(WORDS).

    With a `vocabulary`, contexts are random draws from it instead (text about as varied as a real run's).
    """
    store = RunStore(uri)
    rng = np.random.default_rng(0)
    shards = plan_shards(list(range(n_features)), shard_size)
    for shard in shards:
        labels, examples, latents = [], [], []
        for fid in shard.feature_ids:
            word = WORDS[fid % len(WORDS)].removeprefix("##")
            status = "dead" if fid in dead else "failed" if fid in failed else "ok"
            row = dict.fromkeys(LABELS_SCHEMA.names)
            row.update(feature_id=fid, status=status, discriminator="minilm", label_tokens=1, alternatives=[])
            if status == "ok":
                score = float(0.5 + 0.5 * rng.random())
                row.update(
                    label=f"{word}{fid}",
                    score=score,
                    alternatives=[{"label": f"{word}{fid}", "score": score}]
                    + [{"label": f"alt{fid}" + "'" * k, "score": score - 0.1 * (k + 1)} for k in range(4)],
                    n_active=top,
                    # Every fourth feature's label is a verified category the namer proposed.
                    label_source="namer" if fid % 4 == 0 else "search",
                    proposals=[
                        {"label": f"kind{fid}", "train_score": score, "namer_score": -1.0, "verified": True},
                        {"label": "zebra", "train_score": 0.5, "namer_score": -2.0, "verified": False},
                    ],
                )
            if status == "failed":
                row["error"] = "RuntimeError: out of memory"
            labels.append(row)
            n_active = 0 if status == "dead" else 10 + fid
            latents.append({"feature_id": fid, "n_active": n_active, "density": n_active / 1000, "max_activation": 2.0})
            if status == "dead":
                continue
            for j in range(top):
                if vocabulary:
                    tokens = [vocabulary[i] for i in rng.integers(len(vocabulary), size=context_tokens)]
                else:
                    tokens = [WORDS[(fid + j + t) % len(WORDS)] for t in range(context_tokens)]
                tokens[7] = WORDS[fid % len(WORDS)]
                acts = [0.0] * context_tokens
                acts[7], acts[8] = 2.0 - 0.1 * j, 0.5
                examples.append(
                    {
                        "feature_id": fid,
                        "text": " ".join(tokens),
                        "activation": max(acts),
                        "kind": "top",
                        "context_id": fid * 100 + j,
                        "tokens": tokens,
                        "token_activations": acts,
                    }
                )
            for j in range(negatives):
                examples.append(
                    {
                        "feature_id": fid,
                        "text": f"a quiet context number {j} for feature {fid}"
                        + "".join(f" {vocabulary[i]}" for i in rng.integers(len(vocabulary), size=context_tokens))
                        if vocabulary
                        else f"a quiet context number {j} for feature {fid}",
                        "activation": 0.0,
                        "kind": "random",
                        "context_id": 10**6 + fid * 10 + j,
                        "tokens": None,
                        "token_activations": None,
                    }
                )
        store.write_table("labels", shard.name, pa.Table.from_pylist(labels, schema=LABELS_SCHEMA))
        store.write_table("examples", shard.name, pa.Table.from_pylist(examples, schema=EXAMPLES_SCHEMA))
        store.write_table("latents", shard.name, pa.Table.from_pylist(latents, schema=LATENTS_SCHEMA))
    store.write_text("config.yaml", "model: minilm\nhook: blocks.3.hook_resid_post\nsae: data/sae/tiny\n")
    if manifest:
        store.write_json(
            MANIFEST,
            {
                "shards": [s.name for s in shards],
                "features": n_features,
                "model": "minilm",
                "hook": "blocks.3.hook_resid_post",
            },
        )
    return store
