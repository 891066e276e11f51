"""Many appropriate reactions (issue 25): the synthetic worlds' appropriate listener reactions, the
appropriateness matrix and the REACT table through ``evaluate --samples``."""
import json

import numpy as np
import pytest

from minilisten.__main__ import main
from minilisten.data.formats import Corpus
from minilisten.data.synthetic import listener_alternatives, synthetic_corpus
from minilisten.reactions import appropriate_set, react_scores


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(seed=3, n_identities=3, n_segments=30, seconds=12.0)


def test_alternatives_are_every_identity_answering_the_same_speaker(corpus):
    seg = corpus.test[0]
    alts = listener_alternatives(corpus, seg)
    assert len(alts) == 3
    own = int(seg.listener_id[2:])
    np.testing.assert_array_equal(alts[own], seg.listener_motion)     # the segment's own listener is one of them
    for k in range(3):
        assert alts[k].shape == seg.listener_motion.shape
        if k != own:
            assert np.abs(alts[k] - seg.listener_motion).mean() > 1e-3   # another identity answers differently


def test_appropriateness_matrix_blocks_per_clip(corpus):
    clips, gt, ok, what = appropriate_set(corpus, corpus.test)
    N = len(clips)
    assert ok.shape == (N, 3 * N) and gt.shape == (3 * N, clips[0].T, 56)
    assert (ok.sum(1) == 3).all() and (ok.sum(0) == 1).all()
    for k, c in enumerate(clips):   # each clip's own listener is among its appropriate reactions
        assert any(np.array_equal(gt[j], c.listener_motion) for j in np.flatnonzero(ok[k]))
    plain = Corpus(train=corpus.train, val=corpus.val, test=corpus.test, fps=corpus.fps)   # no world: not synthetic
    clips1, gt1, ok1, what1 = appropriate_set(plain, plain.test)
    assert [c.name for c in clips1] == [c.name for c in clips]
    np.testing.assert_array_equal(ok1, np.eye(N))
    assert "appropriate = identity" in what1 and "appropriate = identity" not in what


def test_ground_truth_scores_perfect_appropriateness(corpus):
    clips, gt, ok, _ = appropriate_set(corpus, corpus.test)
    own = np.stack([c.listener_motion for c in clips])
    spk = np.stack([c.speaker_motion for c in clips])
    s = react_scores(own[:, None], gt, ok, spk, corpus.fps)
    assert s["frcorr"] == pytest.approx(1.0, abs=1e-4) and s["frdist"] == pytest.approx(0.0, abs=1e-6)
    assert s["frdiv"] == 0.0                      # one sample: no diversity
    shuffled = react_scores(np.roll(own, 1, 0)[:, None], gt, ok, spk, corpus.fps)
    assert shuffled["frcorr"] < 0.9 and shuffled["frdist"] > 0


def test_evaluate_samples_writes_the_react_table(tmp_path, capsys):
    """train-vq -> train-lm -> evaluate --samples 3 on a synthetic corpus: the REACT table beside Table 1."""
    data = ["--corpus", "default", "--identities", "2", "--segments", "20", "--seconds", "12"]
    vq, lm = tmp_path / "vq", tmp_path / "lm"
    assert main(["train-vq", *data, "--steps", "6", "--out", str(vq), "--width", "16", "--code-dim", "16",
                 "--codebook-size", "32", "--batch-size", "8", "--crop", "48", "--no-progress"]) == 0
    assert main(["train-lm", "--stage", "2", *data, "--codes", f"vqvae:{vq}", "--steps", "3", "--out", str(lm),
                 "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--batch-size", "4", "--no-progress",
                 "--val-windows", "4", "--eval-every", "0"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["evaluate", *data, "--vq", str(vq), "--lm", str(lm), "--samples", "3", "--temperature", "0.7,1.3",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "FRCorr" in text and "chosen on the validation split" in text
    react = json.loads(out.read_text())["react"]
    assert {"Ours greedy", "Random", "NN facial motion", "GT"} <= set(react)
    sampled = next(k for k in react if k.startswith("Ours sampled"))
    assert react[sampled]["frdiv"] > 0 and react["Ours greedy"]["frdiv"] == 0
    assert react["GT"]["frcorr"] == pytest.approx(3.0, abs=1e-3)   # REACT sums over the 3 samples (GT's repeated)
    assert react["GT"]["frdist"] == pytest.approx(0.0, abs=1e-5) and react["GT"]["frcorr"] > react["Random"]["frcorr"]


@pytest.mark.parametrize("flags", [["--temperature", "-1"], ["--temperature", "0"], ["--temperature", "a,1"],
                                   ["--top-p", "0"]])
def test_evaluate_sampling_flags_refused_before_any_work(flags, capsys):
    assert main(["evaluate", "--arig", "no/such/dir", "--samples", "2", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ("--temperature" in err or "--top-p" in err) and "no/such/dir" not in err
