import pytest

from pipeline.config import DEMO_CONFIG, RunConfig, parse_features
from pipeline.plan import chunks, plan_actors, plan_shards


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


def test_hash_ignores_batch_sizes_and_parallelism_so_a_run_resumes_after_lowering_one():
    base = RunConfig(out="a")
    for key, value in [("features_per_batch", 8), ("pair_batch", 64), ("harvest_batch", 4), ("actors", 3)]:
        assert RunConfig(out="a", **{key: value}).hash() == base.hash(), key
    changed = [("dtype", "bfloat16"), ("answers", ["true", "false"]), ("chat", False), ("shard_size", 8)]
    changed += [("namer", "none"), ("namer_patterns", ["{members} and other"])]
    for key, value in changed:
        assert RunConfig(out="a", **{key: value}).hash() != base.hash(), key


def test_command_line_values_that_are_not_yaml_are_text():
    from pipeline.cli import parser

    args = parser().parse_args(
        ["demo", "--template", "{label}", "--discriminator", "yes", "--features", "[1, 5]", "--steps", "3"]
    )
    assert args.template == "{label}" and args.discriminator == "yes"
    assert args.features == [1, 5] and args.steps == 3
    args = parser().parse_args(["demo", "--features", "0-31", "--answers", "[yes, no]", "--chat", "false"])
    assert args.features == "0-31" and args.chat is False
    # YAML reads unquoted yes and no as booleans; as answers they are the words.
    assert RunConfig(out="x", answers=args.answers).answers == ["yes", "no"]
    args = parser().parse_args(["demo", "--features", "{x}"])
    with pytest.raises(ValueError, match="features '{x}'"):
        parse_features(args.features, 10)


def test_bad_new_keys_are_named():
    with pytest.raises(ValueError, match="'dtype' = 'float64'; expected one of"):
        RunConfig(out="x", dtype="float64")
    with pytest.raises(ValueError, match="'answers' = \\['yes'\\]; expected a list of two words"):
        RunConfig(out="x", answers=["yes"])
    with pytest.raises(ValueError, match="'gpus_per_actor' = -1"):
        RunConfig(out="x", gpus_per_actor=-1)


def test_actors_ask_for_gpus_as_configured():
    cpus_only, four_gpus = {"CPU": 8}, {"CPU": 32, "GPU": 4}
    assert plan_actors(None, None, cpus_only, 8) == (4, 2.0, 0.0)
    assert plan_actors(None, None, four_gpus, 16) == (4, 1.0, 1.0)
    assert plan_actors(None, 0.5, four_gpus, 16) == (8, 1.0, 0.5)  # two actors share each GPU
    # An autoscaling cluster with no GPU node up yet: the requests start the GPU nodes.
    assert plan_actors(3, 1, cpus_only, 8) == (3, 1.0, 1)
    assert plan_actors(None, 1, cpus_only, 8) == (1, 1.0, 1)
    assert plan_actors(None, 0, four_gpus, 16) == (16, 2.0, 0.0)  # CPU actors on a GPU cluster
