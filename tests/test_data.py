"""Segment validation (every "Bad input" case of issue 3), immutability, windows, statistics."""
import copy
import dataclasses
import pickle
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilisten.data.segment import D_MOTION, N_SHAPE, Segment, Word, repair_words
from minilisten.data.windows import lm_listener_eval_clips, motion_stats
from minilisten.errors import UserError

FPS = 30.0


def make_segment(T=90, seed=0, **kw):
    rng = np.random.default_rng(seed)
    args = dict(speaker_motion=rng.standard_normal((T, D_MOTION)).astype(np.float32),
                listener_motion=rng.standard_normal((T, D_MOTION)).astype(np.float32),
                fps=FPS, listener_beta=rng.standard_normal(N_SHAPE).astype(np.float32))
    args.update(kw)
    return Segment(**args)


def emotion_probs(T, seed=0):
    e = np.random.default_rng(seed).random((T, 8)).astype(np.float32) + 0.01
    return e / e.sum(1, keepdims=True)


def raises(match_parts, fn, exc=UserError):
    """``fn`` raises ``exc`` whose message contains every string in ``match_parts``."""
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for part in match_parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------- Segment: valid input
def test_valid_segment_fields_and_views():
    T = 60
    s = make_segment(T, words=[Word("hello", 0.1, 0.4), {"text": "you", "start": 0.5, "end": 2.0}],
                     history_words=[("so", -1.0, -0.2)], emotion=emotion_probs(T), valence=np.zeros(T),
                     sa_tokens=np.arange(100), speaker_beta=np.ones(N_SHAPE))
    assert s.T == T and s.duration == pytest.approx(2.0)
    assert s.speaker_motion.dtype == np.float32 and s.sa_tokens.dtype == np.int64
    assert s.words[1] == Word("you", 0.5, 2.0) and s.history_words[0] == Word("so", -1.0, -0.2)
    # float64 / int input and torch tensors are accepted and converted (not truncated)
    s2 = Segment(torch.zeros(5, D_MOTION, dtype=torch.float64), np.zeros((5, D_MOTION), np.int32), 25)
    assert s2.listener_motion.dtype == np.float32 and s2.fps == 25.0


def test_segment_window_rebases_words_and_history():
    s = make_segment(90, words=[Word("a", 0.1, 0.2), Word("b", 0.9, 1.1), Word("c", 2.5, 2.9)],
                     history_words=[Word("h", -0.5, -0.1)], sa_tokens=np.arange(150))
    w = s.window(30, 30)  # seconds [1, 2)
    assert w.T == 30 and np.array_equal(w.listener_motion, s.listener_motion[30:60])
    assert [x.text for x in w.words] == ["b"] and w.words[0] == Word("b", 0.0, pytest.approx(0.1))
    assert [x.text for x in w.history_words] == ["h", "a"]
    assert w.history_words[1].end == pytest.approx(-0.8)
    assert np.array_equal(w.sa_tokens, np.arange(50, 100))
    raises(["window", "start=80", "length=30"], lambda: s.window(80, 30))


# ------------------------------------------------------------------------ Segment: immutability
ARRAYS = ("speaker_motion", "listener_motion", "listener_beta", "speaker_beta", "sa_tokens", "emotion", "valence",
          "mel")


def full_segment(T=60):
    return make_segment(T, words=[Word("hi", 0.1, 0.4)], history_words=[Word("so", -1.0, -0.2)],
                        emotion=emotion_probs(T), valence=np.zeros(T), sa_tokens=np.arange(100),
                        speaker_beta=np.ones(N_SHAPE), mel=np.arange(4 * T * 3, dtype=np.float32).reshape(4 * T, 3))


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Segment)])
def test_segment_fields_cannot_be_assigned(name):
    s = full_segment()
    before = getattr(s, name)
    with pytest.raises(dataclasses.FrozenInstanceError, match=name):
        setattr(s, name, before)
    with pytest.raises(dataclasses.FrozenInstanceError):
        del s.fps
    assert getattr(s, name) is before


@pytest.mark.parametrize("name", ARRAYS)
def test_segment_arrays_are_read_only(name):
    s = full_segment()
    a = getattr(s, name)
    before = a.copy()
    assert not a.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        a += 1
    with pytest.raises(ValueError, match="read-only"):
        a.sort()
    with pytest.raises(ValueError, match="read-only"):
        np.copyto(a, 0)
    assert np.array_equal(a, before)
    w = s.window(15, 30)                      # windows share their segment's memory, read-only too
    v = getattr(w, name)
    assert not v.flags.writeable and np.shares_memory(v, a)
    with pytest.raises(ValueError, match="read-only"):
        v[0] = 1


def test_segment_word_lists_are_tuples():
    s = make_segment(30, words=[Word("a", 0.0, 0.1), ("b", 0.2, 0.3)],
                     history_words=[{"text": "h", "start": -1, "end": -0.5}])
    assert s.words == (Word("a", 0.0, 0.1), Word("b", 0.2, 0.3)) and s.history_words == (Word("h", -1.0, -0.5),)
    assert make_segment(30).words == () and make_segment(30).history_words == ()
    with pytest.raises(AttributeError):
        s.words.append(Word("c", 0.5, 0.6))
    with pytest.raises(TypeError):
        s.words[0] = Word("c", 0.5, 0.6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.words[0].end = 5.0                  # Word is frozen too


def test_segment_owns_its_arrays():
    """The caller's arrays are not frozen under them, and their later writes do not reach the Segment;
    new arrays made by the coercion and already read-only arrays are not copied."""
    T = 20
    lis = np.random.default_rng(0).standard_normal((T, D_MOTION)).astype(np.float32)   # float32: no coercion
    spk64 = np.random.default_rng(1).standard_normal((T, D_MOTION))                     # float64: converted
    beta = torch.ones(N_SHAPE)                                                          # torch: shares storage
    sa = np.arange(50)
    s = Segment(spk64, lis, FPS, listener_beta=beta, sa_tokens=sa[10:])
    assert lis.flags.writeable and spk64.flags.writeable and sa.flags.writeable
    lis[0, 0] = 99.0
    spk64[0, 0] = 99.0
    beta[0] = 99.0
    sa[10] = 99
    assert s.listener_motion[0, 0] != 99.0 and s.speaker_motion[0, 0] != 99.0
    assert s.listener_beta[0] == 1.0 and s.sa_tokens[0] == 10
    assert not any(np.shares_memory(getattr(s, k), x) for k, x in (("listener_motion", lis), ("speaker_motion", spk64),
                                                                    ("listener_beta", beta.numpy()), ("sa_tokens", sa)))
    frozen = np.zeros((T, D_MOTION), np.float32)
    frozen.flags.writeable = False
    assert Segment(frozen, frozen, FPS).listener_motion is frozen                     # read-only: shared
    view = lis.view()
    view.flags.writeable = False                                                      # a read-only view of a writeable
    assert not np.shares_memory(Segment(view, view, FPS).listener_motion, lis)        # copied


def test_segment_replace_revalidates():
    s = full_segment()
    r = s.replace(fps=15, words=[("late", 1.0, 3.9)])
    assert r.fps == 15.0 and isinstance(r.fps, float) and r.words == (Word("late", 1.0, 3.9),)
    assert r.listener_motion is s.listener_motion and s.fps == FPS and s.words[0].text == "hi"  # s unchanged, shared
    raises(["fps", "positive number", "-1"], lambda: s.replace(fps=-1))
    raises(["words[0] ('late')", "end <= 2.000 s", "end=2.500"], lambda: s.replace(words=[Word("late", 1.0, 2.5)]))
    raises(["listener_motion", "expected 60 frames", "got 59"],
           lambda: s.replace(listener_motion=np.zeros((59, D_MOTION))))
    raises(["emotion", "summing to 1", "frame 0"], lambda: s.replace(emotion=np.full((60, 8), 0.5)))
    raises(["sa_tokens", "non-negative", "-3"], lambda: dataclasses.replace(s, sa_tokens=np.array([-3])))
    raises(["replace", "expected Segment fields", "listener_motion", "got motion"], lambda: s.replace(motion=None))
    # a change of T re-checks the fields that depend on it
    raises(["emotion", "(30, 8)", "(60, 8)"],
           lambda: s.replace(speaker_motion=np.zeros((30, D_MOTION)), listener_motion=np.zeros((30, D_MOTION))))


def test_segment_equality_is_identity_and_hash_works():
    """eq=False on purpose: element-wise array equality has no single truth value, so == is
    identity and hash is id-based (Segments work in sets / as dict keys)."""
    s = full_segment()
    twin = s.replace()
    assert s == s and s != twin and not (s == twin)
    assert hash(s) == hash(s) and len({s, twin, s}) == 2 and {s: 1}[s] == 1
    assert all(np.array_equal(getattr(s, k), getattr(twin, k)) for k in ARRAYS)


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy"])
def test_segment_copies_are_validated_and_frozen(how):
    s = full_segment()
    c = {"pickle": lambda x: pickle.loads(pickle.dumps(x)), "deepcopy": copy.deepcopy, "copy": copy.copy}[how](s)
    assert type(c) is Segment and c is not s
    for k in ARRAYS:
        assert np.array_equal(getattr(c, k), getattr(s, k)) and not getattr(c, k).flags.writeable
        assert getattr(c, k).dtype == getattr(s, k).dtype
        assert np.shares_memory(getattr(c, k), getattr(s, k)) == (how == "copy")
    assert c.words == s.words and c.history_words == s.history_words and c.name == s.name and c.fps == s.fps
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.fps = 1.0
    # copies go through the constructor: invalid fields (here set by bypassing it on purpose) are refused
    object.__setattr__(s, "fps", -1.0)
    raises(["fps", "positive number", "-1.0"], lambda: {"pickle": lambda x: pickle.loads(pickle.dumps(x)),
                                                       "deepcopy": copy.deepcopy, "copy": copy.copy}[how](s))


# --------------------------------------------------------------------- Segment: the bad input list
@pytest.mark.parametrize("field", ["speaker_motion", "listener_motion"])
@pytest.mark.parametrize("shape", [(10, 55), (10, 57), (10,), (2, 10, 56)])
def test_motion_wrong_shape(field, shape):
    raises([field, "(T, 56)", str(shape)], lambda: make_segment(10, **{field: np.zeros(shape, np.float32)}))


@pytest.mark.parametrize("field", ["speaker_motion", "listener_motion"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_motion_nan_inf(field, bad):
    x = np.zeros((10, D_MOTION), np.float32)
    x[3, 7] = bad
    raises([field, "finite", "(3, 7)", str(np.float32(bad))], lambda: make_segment(10, **{field: x}))


def test_motion_non_float_and_empty():
    raises(["speaker_motion", "float", "bool"],
           lambda: make_segment(4, speaker_motion=np.zeros((4, D_MOTION), bool)))
    raises(["speaker_motion", "at least 1 frame", "0"],
           lambda: make_segment(0, speaker_motion=np.zeros((0, D_MOTION)), listener_motion=np.zeros((0, D_MOTION))))
    raises(["speaker_motion", "got None"], lambda: make_segment(4, speaker_motion=None))


def test_speaker_listener_different_lengths():
    raises(["listener_motion", "expected 10 frames", "got 9"],
           lambda: make_segment(10, listener_motion=np.zeros((9, D_MOTION))))


@pytest.mark.parametrize("field", ["listener_beta", "speaker_beta"])
@pytest.mark.parametrize("shape", [(99,), (101,), (1, 100), ()])
def test_beta_wrong_size(field, shape):
    raises([field, "(100,)", str(shape)], lambda: make_segment(10, **{field: np.zeros(shape)}))


@pytest.mark.parametrize("field", ["listener_beta", "speaker_beta"])
def test_beta_nan(field):
    b = np.zeros(N_SHAPE)
    b[42] = np.nan
    raises([field, "finite", "(42,)"], lambda: make_segment(10, **{field: b}))


@pytest.mark.parametrize("word,parts", [
    (Word("neg", -0.2, 0.1), ["words[0] ('neg')", "start >= 0", "start=-0.200", "history_words"]),
    (Word("rev", 0.5, 0.3), ["words[0] ('rev')", "start <= end", "start=0.500 > end=0.300"]),
    (Word("late", 0.9, 1.2), ["words[0] ('late')", "end <= 1.000 s", "end=1.200"]),
    (Word("nan", float("nan"), 0.5), ["words[0] ('nan'): start", "finite", "nan"]),
    (Word("inf", 0.1, float("inf")), ["words[0] ('inf'): end", "finite", "inf"]),
    (("huge", 0.1, 10 ** 400), ["words[0] ('huge'): end", "finite", "1000000"]),        # no OverflowError
    (("str", "0.1", 0.2), ["words[0]", "(str, number, number)", "(str, str, float)"]),
])
def test_word_timings_bad(word, parts):
    raises(parts, lambda: make_segment(30, words=[Word("ok", 0.0, 0.1), word][1:]))


def test_word_timings_bad_index_and_history():
    raises(["words[1] ('b')", "start <= end"],
           lambda: make_segment(30, words=[Word("a", 0.0, 0.1), Word("b", 0.4, 0.2)]))
    raises(["history_words[0] ('h')", "end <= 0 s", "end=0.300"],
           lambda: make_segment(30, history_words=[Word("h", 0.1, 0.3)]))
    raises(["history_words[0] ('h')", "start <= end"],
           lambda: make_segment(30, history_words=[Word("h", -0.1, -0.3)]))
    # boundaries are allowed: a word may end exactly at the clip end, history exactly at 0
    s = make_segment(30, words=[Word("a", 0.0, 1.0)], history_words=[Word("h", -0.5, 0.0)])
    assert len(s.words) == 1 and len(s.history_words) == 1


def test_optional_arrays_bad():
    T = 12
    raises(["emotion", f"({T}, 8)", f"({T}, 7)"], lambda: make_segment(T, emotion=np.full((T, 7), 1 / 7)))
    e = emotion_probs(T)
    e[2] *= 2
    raises(["emotion", "summing to 1", "frame 2"], lambda: make_segment(T, emotion=e))
    e = emotion_probs(T)
    e[0, 0] = np.nan
    raises(["emotion", "finite"], lambda: make_segment(T, emotion=e))
    raises(["valence", f"({T},)", f"({T - 1},)"], lambda: make_segment(T, valence=np.zeros(T - 1)))
    v = np.zeros(T)
    v[5] = np.inf
    raises(["valence", "finite", "(5,)"], lambda: make_segment(T, valence=v))
    raises(["sa_tokens", "integer", "float"], lambda: make_segment(T, sa_tokens=np.zeros(4)))
    raises(["sa_tokens", "non-negative", "-1"], lambda: make_segment(T, sa_tokens=np.array([0, -1])))
    raises(["sa_rate", "positive", "0"], lambda: make_segment(T, sa_tokens=np.array([0]), sa_rate=0))
    raises(["mel", f"({4 * T}, n)", f"({4 * T - 1}, 128)"], lambda: make_segment(T, mel=np.zeros((4 * T - 1, 128))))
    raises(["mel", "at least 1 mel band", "0"], lambda: make_segment(T, mel=np.zeros((4 * T, 0))))
    m = np.zeros((4 * T, 2))
    m[7, 1] = np.nan
    raises(["mel", "finite", "(7, 1)"], lambda: make_segment(T, mel=m))


def test_mel_follows_windows():
    """mel holds 4 rows per frame: a window of frames [a, b) holds mel rows [4a, 4b)."""
    s = full_segment(60)
    w = s.window(15, 30)
    assert np.array_equal(w.mel, np.arange(4 * 60 * 3).reshape(240, 3)[60:180])
    assert all(x.mel.shape == (40, 3) for x in s.windows(10))


def test_repair_words_by_hand():
    """ASR-style input: overlap, zero length, out of order, start after end, missing start (estimated)."""
    items = [("a", 0.0, 0.5), ("b", 0.4, 0.9), ("z", 0.9, 0.9), ("d", 1.5, 1.7), ("c", 1.0, 1.2),
             ("e", None, 2.0), ("f", 2.5, 2.1)]
    words, n = repair_words(items, word_seconds=0.3)
    assert [(w.text, w.start, w.end) for w in words] == [
        ("a", 0.0, 0.5), ("b", 0.5, 0.9), ("z", 0.9, 0.9), ("c", 1.0, 1.2), ("d", 1.5, 1.7), ("e", 1.7, 2.0),
        ("f", 2.1, 2.1)]
    assert n == 3                                      # b clamped, c out of order, f start after end
    assert repair_words([("x", None, 1.0)]) == ([Word("x", 0.7, 1.0)], 0)
    assert repair_words([]) == ([], 0)


@pytest.mark.parametrize("fps", [0, -30, float("nan"), float("inf"), "30"])
def test_fps_bad(fps):
    raises(["fps", "positive number"], lambda: make_segment(5, fps=fps))


# ---------------------------------------------------------------------------------- motion_stats
def test_motion_stats_matches_numpy():
    segs = [make_segment(T, seed=i) for i, T in enumerate((20, 35, 7))]
    for which, key in (("listener", ["listener_motion"]), ("speaker", ["speaker_motion"]),
                       ("both", ["listener_motion", "speaker_motion"])):
        allx = np.concatenate([getattr(s, k) for s in segs for k in key]).astype(np.float64)
        mean, std = motion_stats(segs, which)
        assert mean.shape == std.shape == (D_MOTION,) and mean.dtype == np.float32
        np.testing.assert_allclose(mean, allx.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(std, allx.std(0), rtol=1e-6)


def test_motion_stats_constant_dim_and_errors(caplog):
    s = make_segment(20)
    m = s.listener_motion.copy()
    m[:, 3] = 2.5
    s = s.replace(listener_motion=m)
    with caplog.at_level("WARNING", logger="minilisten.data"):
        mean, std = motion_stats([s])
    assert mean[3] == pytest.approx(2.5) and std[3] == 1.0 and (std > 0).all()
    assert "[3]" in caplog.text
    raises(["segments", "at least one", "got 0"], lambda: motion_stats([]), ValueError)
    raises(["which", "'listener'", "'face'"], lambda: motion_stats([s], "face"), ValueError)


def test_motion_stats_large_offset_is_accurate():
    # float32 data with a large mean: naive E[x^2] - E[x]^2 in float32 would lose the variance
    s = make_segment(500)
    noise = np.random.default_rng(1).standard_normal((500, D_MOTION)).astype(np.float32)
    s = s.replace(listener_motion=1000.0 + noise * 1e-2)
    _, std = motion_stats([s])
    np.testing.assert_allclose(std, s.listener_motion.astype(np.float64).std(0), rtol=1e-4)


# -------------------------------------------------------------------------------- windows / clips
@pytest.mark.parametrize("T,expected", [
    (1000, [(96, 240), (336, 240), (576, 240), (816, 184)]),  # tail 184 is a multiple of 8
    (96 + 240 + 30, [(96, 240), (336, 24)]),                   # tail 30 -> 24
    (96 + 240 + 23, [(96, 240)]),                              # tail 23 < 24: dropped
    (96 + 24, [(96, 24)]),
    (96 + 23, []),
    (50, []),
    (96 + 100, [(96, 96)]),                                    # 100 -> 96
])
def test_lm_listener_eval_clips(T, expected):
    s = make_segment(T, words=[Word("w", 3.3, 3.5)] if T > 120 else [])
    clips = lm_listener_eval_clips(s)
    assert [(int(re.search(r"\[(\d+):", c.name).group(1)), c.T) for c in clips] == expected
    for c, (a, n) in zip(clips, expected):
        assert np.array_equal(c.listener_motion, s.listener_motion[a:a + n])
        assert np.array_equal(c.speaker_motion, s.speaker_motion[a:a + n])
    if T > 120:  # the word at 3.5 s (frame 105) is inside the first clip, re-based to its start
        assert clips[0].words[0].end == pytest.approx(3.5 - 96 / FPS)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 1500))
def test_lm_listener_eval_clips_properties(T):
    s = make_segment(T)
    clips = lm_listener_eval_clips(s)
    for c in clips:
        assert 24 <= c.T <= 240 and c.T % 8 == 0
    # every frame from 96 on that can be in a clip is covered once (clips don't overlap)
    assert sum(c.T for c in clips) <= max(0, T - 96)
    assert len(clips) == sum(1 for a in range(96, T, 240) if min(T - a, 240) >= 24)


def test_motion_stats_normalise_to_zero_mean_unit_std():
    segs = [make_segment(64, seed=i) for i in range(2)]
    mean, std = motion_stats(segs)
    x = (np.concatenate([s.listener_motion for s in segs]).astype(np.float64) - mean) / std
    np.testing.assert_allclose(x.mean(0), np.zeros(D_MOTION), atol=1e-5)
    np.testing.assert_allclose(x.std(0), np.ones(D_MOTION), atol=1e-5)
