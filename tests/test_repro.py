"""The paper's reproduction set (`data/repro`): features of known meaning, labeled by the default engine."""

import json

import pyarrow.parquet as pq

from pipeline.config import REPO
from workers.labeler import Labeler
from workers.optimiser import OptimiserConfig
from workers.vocab import label_vocab

REPRO = REPO / "data" / "repro"


def test_reproduction_features_are_predicted_and_animal_is_named(minilm):
    """With MiniLM every feature is predicted well held out, but only "mentions an animal" gets a label naming
    its concept (README: the others get a member or a neighbour of it)."""
    concepts = {c["concept"]: c for c in json.loads((REPRO / "concepts.json").read_text())}
    table = pq.read_table(REPRO / "features.parquet")
    labeler = Labeler(minilm, label_vocab(minilm.tokenizer), OptimiserConfig())
    rows = {r["feature_id"]: r for r in labeler.label(table, [c["feature_id"] for c in concepts.values()]).to_pylist()}
    animal = rows[concepts["animal"]["feature_id"]]
    assert animal["label"] in concepts["animal"]["accept"], animal["alternatives"]
    floors = {"animal": 0.95, "chinese": 0.95, "number": 0.85, "mammal": 0.8, "mammal-unbalanced": 0.9}
    for name, floor in floors.items():
        row = rows[concepts[name]["feature_id"]]
        assert row["status"] == "ok" and row["score"] >= floor, (name, row["label"], row["score"])
