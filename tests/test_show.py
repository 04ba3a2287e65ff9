"""`toklabel show`: one feature in the terminal."""

from __future__ import annotations

import pytest
from synthetic_run import write_run

from pipeline.cli import main
from pipeline.show import highlight, load_feature, readable_pieces, render


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    return write_run(str(tmp_path_factory.mktemp("run") / "run"), n_features=30).uri


@pytest.mark.parametrize(
    ("tokens", "text"),
    [
        (
            ["[CLS]", "the", "river", "##bank", "##s", ",", "don", "'", "t", "(", "go", ")", ".", "[SEP]"],
            "the riverbanks, don't (go).",
        ),
        (["Ġthe", "Ġriver", "bank", ".", "Ġyes"], "the riverbank. yes"),
        (["▁the", "▁river", "bank"], "the riverbank"),
        (["[UNK]", "中", "文", "，", "好", "。", "ok"], "\ufffd中文，好。ok"),
    ],
)
def test_readable_pieces_join_subwords(tokens, text):
    pieces = readable_pieces(tokens)
    assert len(pieces) == len(tokens) and "".join(pieces) == text


def test_show_feature(run, capsys):
    assert main(["show", run, "7"]) == 0  # stdout is not a tty here: plain markers
    out = capsys.readouterr().out
    assert "label         rate7" in out and "alternatives  rate7 " in out and "alt7 " in out
    assert "label from    the search" in out and "proposals     kind7 " in out and "zebra 0.500   (" in out
    assert "density       0.017 (17 contexts active)" in out
    assert out.count("[[rate") == 4 and "[[rates]]" in out and "\033[" not in out
    assert "a quiet context number 0 for feature 7" in out


def test_show_colour_shades_active_tokens(run):
    feature = load_feature(run, 7)
    line = highlight(feature.top[0], color=True)
    assert "\033[1;38;5;16;48;5;208mrate\033[0m" in line  # the peak token gets the strongest shade
    assert "\033[1m" in render(feature, color=True)


def test_show_dead_and_failed(run, capsys):
    assert main(["show", run, "3"]) == 0
    assert "status dead" in capsys.readouterr().out
    assert main(["show", run, "5"]) == 0
    assert "error         RuntimeError: out of memory" in capsys.readouterr().out


def test_show_unknown_feature(run, capsys):
    assert main(["show", run, "999"]) == 2
    err = capsys.readouterr().err
    assert "feature 999 is not in the run" in err and "ids 0..29" in err


def test_show_missing_run(tmp_path, capsys):
    assert main(["show", str(tmp_path), "1"]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_show_unfinished_run_warns(tmp_path, capsys):
    uri = write_run(str(tmp_path / "partial"), n_features=12, manifest=False).uri
    assert main(["show", uri, "7"]) == 0
    captured = capsys.readouterr()
    assert "rate7" in captured.out and "unfinished" in captured.err
