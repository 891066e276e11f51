"""The pipeline's pieces apart from training: data config, the model plan, evaluation clips, the tables' Markdown."""
import numpy as np
import pytest

from minilisten.data.cli import DataConfig, load_data
from minilisten.data.coverage import Coverage
from minilisten.data.segment import Segment
from minilisten.data.synthetic import named_corpus
from minilisten.data.windows import test_clips as eval_clips
from minilisten.pipeline import DemoConfig, plan_models
from minilisten.report import markdown_table, metric_columns


def test_load_data_is_the_named_corpus_with_its_overrides():
    ds, what = load_data(DataConfig(corpus="small", corpus_seed=3, n_identities=2, n_segments=20, seconds=8.0))
    ref = named_corpus("small", seed=3, n_identities=2, n_segments=20, seconds=8.0)
    assert what == "synthetic corpus 'small' (seed 3, n_identities=2, n_segments=20, seconds=8.0)"
    assert len(ds.train) == len(ref.train)
    for a, b in zip(ds.train + ds.test, ref.train + ref.test):
        np.testing.assert_array_equal(a.listener_motion, b.listener_motion)
    assert DataConfig(data="/x/y").describe() == "dataset /x/y"
    with pytest.raises(TypeError, match="n_speakers"):
        DataConfig(n_speakers=3)


def test_quick_config_sizes_a_synthetic_corpus_only():
    q = DemoConfig.quick(seed=2, data=DataConfig(corpus="gain", corpus_seed=2, n_segments=9))
    assert q.data == DataConfig(corpus="gain", corpus_seed=2, n_identities=4, n_segments=9, seconds=32.0)
    assert (q.vq_steps, q.max_test_clips, q.seed) == (150, 12, 2)
    assert DemoConfig.quick(data=DataConfig(data="/d")).data == DataConfig(data="/d")
    assert DemoConfig().data == DataConfig() and hash(DemoConfig().data) == hash(DataConfig())


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
    rows, _, notes = plan_models(_cov(("SA",), beta=False), table3=True)  # no words, no beta (L2L with mel units)
    assert rows == {"MM only": ("SA", "naive")}
    assert sum("no words" in n for n in notes) == 2 and sum("no listener beta" in n for n in notes) == 1
    assert any(n.startswith("Table 3: left out") for n in notes)
    rows, models, notes = plan_models(_cov((), beta=False))              # no speaker modality at all
    assert rows == {} and models == {} and len(notes) == 1 and "every LM row" in notes[0]


def _seg(T):
    x = np.arange(T, dtype=np.float32)[:, None] * np.ones(56, np.float32)
    return Segment(x, x + 1, 30.0, name=f"s{T}")


def test_evaluation_clips_by_hand():
    # LM-listener's clips: starts 96, 336, ...; 240 frames, the last one cut to a multiple of 8 when >= 24 frames
    clips = eval_clips([_seg(400), _seg(100), _seg(600)])
    assert [(c.T, float(c.speaker_motion[0, 0])) for c in clips] == \
        [(240, 96), (64, 336), (240, 96), (240, 336), (24, 576)]
    picked = eval_clips([_seg(400), _seg(100), _seg(600)], limit=3)   # evenly spaced: indices 0, 2, 4
    assert [(c.T, float(c.speaker_motion[0, 0])) for c in picked] == [(240, 96), (240, 96), (24, 576)]
    # no segment long enough (Learning2Listen's 64-frame rows): whole segments of >= 16 frames, a multiple of 8
    assert [c.T for c in eval_clips([_seg(64), _seg(15), _seg(30)])] == [64, 24]


def test_markdown_table_formats_scales_and_blanks():
    cols = [("l2", "L2", 1.0), ("l2_affect", "Aff ×1e2", 100.0)]
    text = markdown_table({"a": {"l2": 0.123456, "l2_affect": 0.5}, "b": {"l2": float("nan")}}, cols, "T")
    assert text.splitlines() == ["**T**", "", "| method | L2 | Aff ×1e2 |", "|---|---|---|",
                                 "| a | 0.1235 | 50.0000 |", "| b |  |  |"]
    assert [c[0] for c in metric_columns(False)] == ["l2", "fd", "variation", "diversity", "pfd"]
    assert metric_columns(True)[-1][0] == "l2_affect"
