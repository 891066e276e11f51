"""The library's pipeline steps apart from the report: data sources, the model plan, the tables' Markdown."""
import numpy as np
import pytest

from minilisten.data.coverage import Coverage
from minilisten.data.source import describe_source, open_data
from minilisten.data.synthetic import named_corpus
from minilisten.pipeline import DemoConfig, data_spec, plan_models
from minilisten.report import markdown_table, metric_columns


def test_open_data_is_the_named_corpus_with_its_overrides():
    ds, what = open_data(None, "small", 3, n_identities=2, n_segments=20, seconds=8.0)
    ref = named_corpus("small", seed=3, n_identities=2, n_segments=20, seconds=8.0)
    assert what == "synthetic corpus 'small' (seed 3, n_identities=2, n_segments=20, seconds=8.0)"
    assert len(ds.train) == len(ref.train)
    for a, b in zip(ds.train + ds.test, ref.train + ref.test):
        np.testing.assert_array_equal(a.listener_motion, b.listener_motion)
    assert describe_source("/x/y") == "dataset /x/y"
    with pytest.raises(ValueError, match=r"unknown size override.*n_speakers"):
        open_data(None, "small", 0, n_speakers=3)


def test_data_spec_keeps_only_the_overrides_given():
    assert data_spec(DemoConfig(corpus="gain", seed=2)) == ("synthetic", "gain", 2, ())
    assert data_spec(DemoConfig(seed=1, n_segments=9, seconds=8.0)) == \
        ("synthetic", "default", 1, (("n_segments", 9), ("seconds", 8.0)))
    assert data_spec(DemoConfig(data="/d", corpus="gain")) == ("dir", "/d")


def _cov(modalities, beta=True):
    return Coverage(modalities=modalities, has_beta=beta, has_valence=True, fps=30.0, n_identities=3)


def test_plan_models_follows_what_the_data_has():
    rows, models, notes = plan_models(_cov(("W", "SA", "emo")), table3=True)
    assert rows == {"Naive": ("W", "naive"), "MM only": ("W+SA+emo", "naive"), "ID only": ("W", "disentangled"),
                    "Full": ("W+SA+emo", "disentangled"), "W+SA": ("W+SA", "disentangled"),
                    "W+emo": ("W+emo", "disentangled")}
    assert len(models) == 6 and notes == []
    rows, models, notes = plan_models(_cov(("W",)))                       # LM-listener's release
    assert rows["MM only"] == rows["Naive"] and rows["Full"] == rows["ID only"] and len(models) == 2
    assert any("words only" in n for n in notes)
    rows, _, notes = plan_models(_cov(("SA",), beta=False), table3=True)  # no words, no beta
    assert rows == {"MM only": ("SA", "naive")}
    assert sum("no words" in n for n in notes) == 2 and sum("no listener beta" in n for n in notes) == 1
    assert any(n.startswith("Table 3: left out") for n in notes)


def test_markdown_table_formats_scales_and_blanks():
    cols = [("l2", "L2", 1.0), ("l2_affect", "Aff ×1e2", 100.0)]
    text = markdown_table({"a": {"l2": 0.123456, "l2_affect": 0.5}, "b": {"l2": float("nan")}}, cols, "T")
    assert text.splitlines() == ["**T**", "", "| method | L2 | Aff ×1e2 |", "|---|---|---|",
                                 "| a | 0.1235 | 50.0000 |", "| b |  |  |"]
    assert [c[0] for c in metric_columns(False)] == ["l2", "fd", "variation", "diversity", "pfd"]
    assert metric_columns(True)[-1][0] == "l2_affect"
