import pytest

from pipeline.config import DEMO_CONFIG, RunConfig, parse_features
from pipeline.plan import chunks, plan_shards


def test_demo_config_loads_and_resolves_paths():
    cfg = RunConfig.from_yaml(DEMO_CONFIG, out="elsewhere")
    assert cfg.out == "elsewhere"
    assert cfg.sae.endswith("data/sae/minilm-L3-topk-1536")
    assert len(cfg.hash()) == 16


def test_hash_ignores_output_location_but_not_settings():
    a = RunConfig(out="a", steps=10)
    assert a.hash() == RunConfig(out="b", steps=10).hash()
    assert a.hash() != RunConfig(out="a", steps=11).hash()


def test_unknown_and_bad_keys_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out: x\nstepz: 3\n")
    with pytest.raises(ValueError, match="stepz"):
        RunConfig.from_yaml(path)
    with pytest.raises(ValueError, match="label_tokens"):
        RunConfig(out="x", label_tokens=9)
    with pytest.raises(ValueError, match="missing required key"):
        RunConfig.from_dict({})


def test_parse_features_forms():
    assert parse_features("all", 4) == [0, 1, 2, 3]
    assert parse_features("2-4", 10) == [2, 3, 4]
    assert parse_features([5, 1, 5], 10) == [1, 5]
    assert parse_features("1,3", 10) == [1, 3]
    with pytest.raises(ValueError, match="0..9"):
        parse_features("5-12", 10)
    with pytest.raises(ValueError, match="expected 'all'"):
        parse_features("some", 10)


def test_shards_are_aligned_blocks():
    shards = plan_shards([1, 2, 70, 300], 64)
    assert [(s.first, s.last, s.feature_ids) for s in shards] == [(0, 63, (1, 2)), (64, 127, (70,)), (256, 319, (300,))]
    assert shards[0].name == "features-00000000-00000063.parquet"
    assert chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
