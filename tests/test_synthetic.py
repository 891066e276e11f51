"""The synthetic corpus: determinism and the causal structure its docstring promises."""
import numpy as np
import pytest

from minilisten.data import EMOTIONS, identity_style, synthetic_corpus
from minilisten.data.synthetic import PHRASES, RESPONSE_RULE
from minilisten.errors import UserError


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(seed=3, n_identities=4, n_segments=32, seconds=40.0)


def _all(c):
    return c.train + c.val + c.test


def test_same_seed_same_arrays_other_seed_differs(corpus):
    again = synthetic_corpus(seed=3, n_identities=4, n_segments=32, seconds=40.0)
    for a, b in zip(_all(corpus), _all(again)):
        for f in ("speaker_motion", "listener_motion", "emotion", "valence", "sa_tokens", "listener_beta"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert a.words == b.words and a.history_words == b.history_words
    other = synthetic_corpus(seed=4, n_identities=4, n_segments=32, seconds=40.0)
    assert not np.allclose(_all(corpus)[0].listener_motion, _all(other)[0].listener_motion)


def test_shapes_splits_and_fields(corpus):
    assert len(corpus.train) + len(corpus.val) + len(corpus.test) == 32
    for split in (corpus.train, corpus.val, corpus.test):
        assert {s.listener_id for s in split} == {f"id{k}" for k in range(4)}
    s = corpus.train[0]
    assert s.T == 1200 and s.listener_motion.shape == (1200, 56) and s.emotion.shape == (1200, 8)
    assert s.sa_tokens.shape == (2000,) and s.sa_tokens.max() < corpus.n_sa
    assert s.words and all(0 <= w.start <= w.end <= s.duration for w in s.words)
    assert all(w.end <= 0 for w in s.history_words)


def _after(seg, t0, t1):
    a, b = int(t0 * seg.fps), int(t1 * seg.fps)
    return slice(max(a, 0), min(b, seg.T))


def _segments_with_events(c):
    idx = c.info["split_index"]
    order = sorted(idx["train"] + idx["val"] + idx["test"])
    by_index = dict(zip(idx["train"] + idx["val"] + idx["test"], c.train + c.val + c.test))
    return [(by_index[i], c.info["events"][i]) for i in order]


def test_same_words_other_emotion_other_response(corpus):
    """Sarcasm: a joke said happily raises listener valence; said with contempt/anger it lowers it."""
    happy, sarcastic = [], []
    for seg, ev in _segments_with_events(corpus):
        for phrase, emo, a, b in ev["utterances"]:
            if phrase != "joke" or b + 2.0 > seg.duration or b < 0:
                continue
            v = seg.valence[_after(seg, b + 0.7, b + 1.4)].mean() - seg.valence[_after(seg, b - 0.3, b)].mean()
            (happy if emo == "happy" else sarcastic if emo in ("contempt", "anger") else []).append(v)
    assert len(happy) >= 5 and len(sarcastic) >= 3
    assert np.mean(happy) > 0.3 and np.mean(sarcastic) < -0.2
    # and the rule really maps one phrase to several responses
    assert len({RESPONSE_RULE[("joke", e)] for e in EMOTIONS}) >= 3
    assert all(len(set(RESPONSE_RULE[(p, e)] for e in EMOTIONS)) >= 2 for p in PHRASES)


def test_response_follows_speaker_causally(corpus):
    """Listener responses start after the utterance ends (lag 0.25-0.6 s), never before."""
    for seg, ev in _segments_with_events(corpus):
        ends = sorted(b for _, _, _, b in ev["utterances"])
        for name, t_on, _ in ev["responses"]:
            prev = [b for b in ends if b <= t_on]
            assert prev and 0.2 <= t_on - prev[-1] <= 0.6 + 1e-9


def test_identity_changes_how_a_response_looks(corpus):
    """Per-identity mean face differs (offset) and matches the style predicted from beta."""
    world = corpus.info["world"]
    means = {}
    for s in _all(corpus):
        means.setdefault(s.listener_id, []).append(s.listener_motion[:, :50].mean(0))
    for k, beta in enumerate(world["betas"]):
        m = np.mean(means[f"id{k}"], 0)
        offset = identity_style(world, beta.astype(np.float64))["exp_offset"]
        assert np.corrcoef(m, offset)[0, 1] > 0.9
    spread_between = np.std([np.mean(v, 0) for v in means.values()], 0).mean()
    spread_within = np.mean([np.std(v, 0).mean() for v in means.values()])
    assert spread_between > 3 * spread_within


def test_emotion_probabilities_track_the_speakers_emotion(corpus):
    hits, n = 0, 0
    for seg, ev in _segments_with_events(corpus):
        for _, emo, a, b in ev["utterances"]:
            if emo == "neutral" or a < 0 or b > seg.duration:
                continue
            p = seg.emotion[_after(seg, a + 0.3, b)].mean(0)
            hits += int(np.argmax(p) == EMOTIONS.index(emo))
            n += 1
    assert n > 50 and hits / n > 0.6   # chance is 1/8


def test_bad_parameters():
    with pytest.raises(ValueError, match="n_identities"):
        synthetic_corpus(n_identities=0)
    with pytest.raises(ValueError, match="split"):
        synthetic_corpus(n_segments=4, split=(0.5, 0.5, 0.5))
    with pytest.raises(UserError, match=r"n_segments: expected enough segments per identity .* got 2 .*val/test"):
        synthetic_corpus(n_identities=2, n_segments=4, seconds=4)   # 2 per identity: no val/test segment
    c = synthetic_corpus(n_identities=2, n_segments=4, seconds=4, split=(0.5, 0.5, 0.0))
    assert len(c.train) == len(c.val) == 2 and c.test == []
