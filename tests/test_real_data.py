"""Real dataset layouts end to end (issue 13): what a researcher does first with LM-listener's or
Learning2Listen's data must work through the CLI, with each missing piece named once."""
import json
import re

import numpy as np
import pytest
from l2l_fixture import write_l2l

from minilisten.__main__ import main
from minilisten.data import load_dataset
from minilisten.data.coverage import Coverage, available_modalities, fit_window, resolve_n_sa, with_val_split
from minilisten.data.formats import save_lm_listener
from minilisten.data.synthetic import CORPORA, named_corpus, synthetic_corpus
from minilisten.lm import LMConfig, Vocab

TINY_VQ = ["--width", "16", "--code-dim", "16", "--codebook-size", "32", "--batch-size", "8", "--crop", "48",
           "--no-progress"]
TINY_LM = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--batch-size", "4", "--no-progress",
           "--val-windows", "4", "--eval-every", "0"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A words-only corpus of 3 listeners with distinct betas, in LM-listener's exact layout."""
    d = tmp_path_factory.mktemp("lm_listener")
    save_lm_listener(named_corpus("words-only", n_identities=3, n_segments=18, seconds=20.0), d)
    return d


def test_lm_listener_words_only_fixture_reads_back(lm_dir):
    c = load_dataset(lm_dir)
    assert c.source == "lm-listener" and c.n_sa is None
    assert all(s.sa_tokens is None and s.emotion is None and s.valence is None for s in c.train + c.val + c.test)
    cov = Coverage.of(c.splits)
    assert cov.modalities == ("W",) and cov.has_beta and not cov.has_valence
    assert cov.n_identities == 3          # told apart by beta, although the layout names one listener
    assert len({s.listener_id for s in c.train}) == 1
    assert resolve_n_sa(c, c.train) == 0


def test_words_only_pipeline_through_the_cli(lm_dir, tmp_path, capsys):
    """train-vq -> train-lm --modalities W -> evaluate on LM-listener's layout (was: Vocab.n_sa traceback)."""
    vq, lm = tmp_path / "vq", tmp_path / "lm"
    assert main(["train-vq", "--data", str(lm_dir), "--steps", "6", "--out", str(vq), *TINY_VQ]) == 0
    assert main(["train-lm", "--stage", "2", "--data", str(lm_dir), "--modalities", "W", "--codes", f"vqvae:{vq}",
                 "--steps", "3", "--out", str(lm), *TINY_LM]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["modalities"] == "W" and np.isfinite(last["val_loss"])
    assert main(["evaluate", "--data", str(lm_dir), "--vq", str(vq), "--lm", str(lm), "--max-clips", "4",
                 "--out", str(tmp_path / "eval.json")]) == 0
    text = capsys.readouterr().out
    assert "L2 Affect: left out, the data has no valence" in text and "L2 Affect ×1e2" not in text
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert np.isfinite(rows["model"]["l2"]) and "l2_affect" not in rows["model"]
    assert main(["evaluate", "--data", str(lm_dir), "--vq", str(vq), "--lm", str(lm), "--max-clips", "4",
                 "--samples", "2", "--temperature", "1.0", "--out", str(tmp_path / "react.json")]) == 0
    assert "one listener per clip (appropriate = identity)" in capsys.readouterr().out
    react = json.loads((tmp_path / "react.json").read_text())["react"]
    assert react["GT"]["frcorr"] == pytest.approx(2.0, abs=1e-3) and react["GT"]["frdist"] < 1e-5
    assert np.isfinite(react["Ours sampled (T=1, top-p=1)"]["frdist"])


def test_train_lm_defaults_to_the_modalities_the_data_has(lm_dir, tmp_path, capsys):
    assert main(["train-lm", "--stage", "1", "--data", str(lm_dir), "--steps", "2", "--out", str(tmp_path / "s1"),
                 *TINY_LM]) == 0
    out = capsys.readouterr().out
    assert "training on the speaker modalities it has, W" in out
    assert json.loads(out.strip().splitlines()[-1])["modalities"] == "W"


def test_train_lm_refuses_modalities_the_data_lacks(lm_dir, tmp_path, capsys):
    assert main(["train-lm", "--stage", "1", "--data", str(lm_dir), "--modalities", "W+SA", "--steps", "1",
                 "--out", str(tmp_path / "x"), *TINY_LM]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"--modalities W\+SA: .* has no sa_tokens .* expected a subset of its "
                                       r"modalities W", err[0]), err


def test_demo_on_an_lm_listener_directory(lm_dir, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--data", str(lm_dir), "--out", str(out), "--no-progress", "--vq-steps", "8",
                 "--stage1-steps", "2", "--stage2-steps", "2", "--arig-steps", "2", "--max-test-clips", "4"]) == 0
    rep = json.loads((out / "results.json").read_text())
    assert list(rep["table4"]) == ["Naive", "MM only", "ID only", "Full"]
    assert rep["table4"]["MM only"]["l2"] == rep["table4"]["Naive"]["l2"]   # words only: the same model
    assert all("l2_affect" not in r for r in rep["table1"].values())
    text = (out / "tables.md").read_text()
    for piece in ("no SA tokens", "no speaker emotion", "no valence"):
        assert text.count(piece) == 1, piece                               # each missing piece named once
    assert "L2 Affect" not in text.split("Table 1")[1]                     # the column is left out


def test_demo_on_a_learning2listen_directory_without_words_or_beta(tmp_path):
    """No words, no beta, no val split, short segments: the demo runs what the data supports."""
    pairs = [(v, f) for v in "abcdef" for f in (0, 64)]                   # 2 contiguous rows per video: 128 frames
    write_l2l(tmp_path / "l2l", {"trevor": {"train": pairs[:8], "test": pairs[8:]}})
    c = load_dataset(tmp_path / "l2l")
    assert available_modalities(c.train) == ()      # no speaker modality the LM can read
    # our format with a per-frame speaker emotion added, so that the LM has an input
    from minilisten.data.formats import save_corpus
    c.train, c.test = ([s.replace(emotion=np.full((s.T, 8), 1 / 8, np.float32)) for s in segs]
                       for segs in (c.train, c.test))
    save_corpus(c, tmp_path / "ours", progress=False)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--data", str(tmp_path / "ours"), "--out", str(out), "--no-progress",
                 "--vq-steps", "4", "--stage1-steps", "1", "--stage2-steps", "1", "--arig-steps", "2",
                 "--max-test-clips", "3"]) == 0
    rep = json.loads((out / "results.json").read_text())
    assert list(rep["table4"]) == ["MM only"] and list(rep["table5"]) == ["(∅, ∅) naive"]
    text = (out / "tables.md").read_text()
    for piece in ("no words", "no listener shape beta", "no val split", "128-frame windows"):
        assert piece in text, piece
    assert "NN speech content" not in text.split("Table 1")[1].split("Table 4")[0]


def test_demo_refuses_data_without_any_speaker_modality(tmp_path, capsys):
    """Learning2Listen without its mel files: nothing the LM can read of the speaker."""
    write_l2l(tmp_path / "l2l")
    for f in (tmp_path / "l2l").rglob("*_speak_audio_*.npy"):
        f.unlink()
    out = str(tmp_path / "d")
    assert main(["demo", "--quick", "--data", str(tmp_path / "l2l"), "--out", out, "--no-progress"]) == 2
    assert "expected at least one speaker modality" in capsys.readouterr().err


# ----------------------------------------------------------------------------- coverage rules
def test_available_modalities_and_coverage_notes():
    c = synthetic_corpus(n_identities=2, n_segments=20, seconds=8.0)
    assert available_modalities(c.train) == ("W", "SA", "emo")
    segs = c.train[:3]
    segs[1] = segs[1].replace(sa_tokens=None)                 # SA in some segments only: not trainable
    assert available_modalities(segs) == ("W", "emo")
    segs[0] = segs[0].replace(emotion=None)
    cov = Coverage.of({"train": segs})
    assert cov.modalities == ("W",) and sum("no SA" in m for m in cov.missing) == 1


def test_vocab_without_sa_or_emo_blocks():
    v = Vocab(100, n_lr=16, n_sa=0, n_emo=0)
    assert v.sa_offset == v.emo_offset == v.size == 100 + 6 + 16
    with pytest.raises(ValueError, match=r"Vocab.n_sa: expected an integer >= 0, got -1"):
        Vocab(100, n_sa=-1)
    with pytest.raises(ValueError, match=r"Vocab.n_lr: expected an integer >= 1, got 0"):
        Vocab(100, n_lr=0)
    with pytest.raises(ValueError, match=r"LMConfig.n_sa: modality 'SA' needs a vocabulary of >= 1 token, got 0"):
        LMConfig(modalities="W+SA", n_sa=0)
    LMConfig(modalities="W", n_sa=0, n_emo=0)


def test_fit_window_and_held_out_validation(caplog):
    c = synthetic_corpus(n_identities=2, n_segments=20, seconds=4.0)   # 120 frames
    with caplog.at_level("INFO", logger="minilisten.data"):
        assert fit_window(c.train, 240, what="VQ crop") == 120 and fit_window(c.train, 96) == 96
    assert caplog.text.count("VQ crop: 120 frames") == 1 and "(not 240)" in caplog.text
    assert fit_window([c.train[0].window(0, 61)], 240) == 56                  # the longest multiple of 8
    with pytest.raises(ValueError, match="at least one segment of >= 8 frames, got the longest with 7"):
        fit_window([c.train[0].window(0, 7)], 240)
    c.val = []
    train, val, note = with_val_split(c)
    assert len(val) >= 1 and len(train) + len(val) == 16 and "held out" in note
    assert {s.name for s in train}.isdisjoint(s.name for s in val)


def test_corpus_family_documented_and_distinct():
    assert all(isinstance(kw, dict) and doc for kw, doc in CORPORA.values())
    assert "default" in CORPORA and len(CORPORA) >= 4
    base = named_corpus("default", n_identities=2, n_segments=20, seconds=8.0)
    ref = synthetic_corpus(n_identities=2, n_segments=20, seconds=8.0)
    assert np.array_equal(base.train[0].listener_motion, ref.train[0].listener_motion)   # default = the old corpus
    for name in CORPORA:
        over = dict(n_identities=2, n_segments=20, seconds=8.0)
        c = named_corpus(name, **over)
        if name in ("default", "small"):
            continue
        diff = (c.train[0].fps != base.train[0].fps or c.train[0].sa_tokens is None
                or not np.array_equal(c.train[0].listener_motion, base.train[0].listener_motion)
                or not np.array_equal(c.train[0].listener_beta, base.train[0].listener_beta))
        assert diff, name
    wo = named_corpus("words-only", n_identities=2, n_segments=20, seconds=8.0)
    assert all(s.sa_tokens is None and s.emotion is None and s.valence is None for s in wo.train)
    assert named_corpus("realtalk25", n_identities=2, n_segments=20, seconds=8.0).train[0].T == 200
    with pytest.raises(ValueError, match="corpus: expected one of"):
        named_corpus("bogus")


def test_data_cli_writes_lm_listener_layout(tmp_path, capsys):
    assert main(["data", "--corpus", "words-only", "--identities", "2", "--segments", "20", "--seconds", "8",
                 "--out", str(tmp_path / "lm"), "--layout", "lm-listener"]) == 0
    c = load_dataset(tmp_path / "lm")
    assert c.source == "lm-listener" and len(c.train) == 16
    assert "synthetic corpus 'words-only'" in capsys.readouterr().out


def test_identity_groups_tolerate_per_segment_beta_noise():
    from minilisten.data.coverage import identity_groups
    rng = np.random.default_rng(0)
    people = rng.normal(size=(3, 100))
    rows = np.concatenate([people[[0, 1, 2, 1, 0]], people[[2]]]) + rng.normal(0, 1e-3, (6, 100))
    assert identity_groups(rows).tolist() == [0, 1, 2, 1, 0, 2]
    assert identity_groups(people[[0, 0]] + [[0.0] * 99 + [0.2], [0.0] * 100]).tolist() == [0, 1]


def test_arig_on_an_lm_listener_directory_and_evaluate(lm_dir, tmp_path, capsys):
    """train-arig --data DIR (words only, no SA/emotion/valence) -> evaluate --arig; --vq without --lm refused."""
    run = tmp_path / "arig"
    assert main(["train-arig", "--data", str(lm_dir), "--out", str(run), "--steps", "2", "--crop", "24",
                 "--batch-size", "2", "--eval-every", "0", "--no-progress", "--d-model", "16", "--n-head", "2",
                 "--d-ff", "32", "--window", "6", "--diff-width", "16"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--data", str(lm_dir), "--arig", str(run), "--max-clips", "3",
                 "--out", str(tmp_path / "eval.json")]) == 0
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert list(rows) == ["GT", "Random", "NN facial motion", "ARIG-style (continuous)"]
    assert np.isfinite(rows["ARIG-style (continuous)"]["l2"]) and "l2_affect" not in rows["Random"]
    assert main(["evaluate", "--data", str(lm_dir), "--vq", str(run)]) == 2
    assert "expected --vq DIR --lm DIR, --arig DIR or all three, got --vq" in capsys.readouterr().err


def test_train_lm_records_the_data_frame_rate(tmp_path):
    """A model trained on 25-fps data says so (LMConfig.fps), and its stream runs at that rate."""
    from minilisten.lm import ListenerLM
    out = tmp_path / "lm25"
    assert main(["train-lm", "--stage", "1", "--corpus", "realtalk25", "--identities", "2", "--segments", "20",
                 "--seconds", "12", "--steps", "1", "--out", str(out), *TINY_LM]) == 0
    lm = ListenerLM.from_pretrained(out)
    assert lm.config.fps == 25.0


def test_train_vq_defaults_on_learning2listen_rows(tmp_path, capsys):
    """64-frame L2L rows, no val split: train-vq with its default crop and window fits both to the data and holds
    out a validation split (issue 23: was 'expected at least one segment with >= 240 frames')."""
    write_l2l(tmp_path / "l2l")
    out = tmp_path / "vq"
    assert main(["train-vq", "--data", str(tmp_path / "l2l"), "--preset", "naive", "--steps", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no val split" in text and "validation windows of" in text
    assert (out / "model.safetensors").exists()
