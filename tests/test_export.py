"""Exports: Neuronpedia explanation JSONL and delphi's explanations/ folder."""

from __future__ import annotations

import json

import pytest
from synthetic_run import write_run

from pipeline.cli import main
from pipeline.export import default_source


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    return write_run(str(tmp_path_factory.mktemp("run") / "run"), n_features=30).uri


def test_neuronpedia_jsonl(run, tmp_path):
    out = tmp_path / "explanations.jsonl"
    assert main(["export", "neuronpedia", run, "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 28  # dead and failed features have no label to export
    first = records[0]
    assert first["modelId"] == "minilm" and first["layer"] == "3-res" and first["index"] == "0"
    assert first["description"] == "the0" and first["explanationModelName"] == "minilm"
    assert 0.5 <= first["score"] <= 1 and "alt0" in first["notes"]
    assert {r["index"] for r in records}.isdisjoint({"3", "5"})


def test_neuronpedia_overrides_to_stdout(run, capsys):
    assert main(["export", "neuronpedia", run, "--model-id", "gpt2-small", "--source", "6-res-jb"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (first["modelId"], first["layer"]) == ("gpt2-small", "6-res-jb")


def test_neuronpedia_needs_model_when_run_does_not_name_it(tmp_path, capsys):
    store = write_run(str(tmp_path / "run"), n_features=10, manifest=False)
    store.write_text("config.yaml", "out: x\n")
    assert main(["export", "neuronpedia", store.uri]) == 2
    assert "--model-id" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("hook", "source"),
    [("blocks.3.hook_resid_post", "3-res"), ("blocks.10.hook_mlp_out", "10-mlp"), ("layers.6", "6-res")],
)
def test_default_source(hook, source):
    assert default_source(hook) == source


def test_delphi_layout(run, tmp_path):
    assert main(["export", "delphi", run, "-o", str(tmp_path / "delphi")]) == 0
    files = sorted((tmp_path / "delphi" / "explanations").iterdir())
    assert len(files) == 28
    by_name = {f.name: json.loads(f.read_text()) for f in files}
    assert by_name["blocks.3.hook_resid_post_latent7.txt"] == "rate7"
    assert main(["export", "delphi", run, "-o", str(tmp_path / "d2"), "--module", "layers.3"]) == 0
    assert (tmp_path / "d2" / "explanations" / "layers.3_latent0.txt").read_text() == '"the0"'


def test_export_missing_run(tmp_path, capsys):
    assert main(["export", "delphi", str(tmp_path / "none"), "-o", str(tmp_path / "d")]) == 2
    assert "holds no run" in capsys.readouterr().err
