"""Segment validation (every "Bad input" case of issue 3), windows, statistics, WindowDataset."""
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilisten.data.segment import D_MOTION, N_SHAPE, Segment, Word
from minilisten.data.windows import (WindowDataset, collate_windows, lm_listener_eval_clips, motion_stats,
                                     training_windows)

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


def raises(match_parts, fn, exc=ValueError):
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
    (Word("nan", float("nan"), 0.5), ["words[0] ('nan')", "finite", "start=nan"]),
    (Word("inf", 0.1, float("inf")), ["words[0] ('inf')", "finite", "end=inf"]),
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
    s.listener_motion[:, 3] = 2.5
    with caplog.at_level("WARNING", logger="minilisten.data"):
        mean, std = motion_stats([s])
    assert mean[3] == pytest.approx(2.5) and std[3] == 1.0 and (std > 0).all()
    assert "[3]" in caplog.text
    raises(["segments", "at least one", "got 0"], lambda: motion_stats([]))
    raises(["which", "'listener'", "'face'"], lambda: motion_stats([s], "face"))


def test_motion_stats_large_offset_is_accurate():
    # float32 data with a large mean: naive E[x^2] - E[x]^2 in float32 would lose the variance
    s = make_segment(500)
    s.listener_motion[:] = 1000.0 + np.random.default_rng(1).standard_normal((500, D_MOTION)).astype(np.float32) * 1e-2
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


def test_training_windows():
    segs = [make_segment(100, seed=0, words=[Word("x", 1.0, 1.2)]), make_segment(30, seed=1), make_segment(64, seed=2)]
    w = training_windows(segs, length=32, stride=16, progress=False)
    # 100 -> starts 0,16,...,64 (5); 30 -> none; 64 -> 0,16,32 (3)
    assert len(w) == 8 and all(x.T == 32 for x in w)
    assert np.array_equal(w[2].listener_motion, segs[0].listener_motion[32:64])
    assert w[1].words == [Word("x", pytest.approx(1.0 - 16 / FPS), pytest.approx(1.2 - 16 / FPS))]
    assert len(training_windows(segs, length=32, progress=False)) == 3 + 2  # default stride = length
    raises(["at least start + length = 240", "got at most 100"], lambda: training_windows(segs, 240, progress=False))
    raises(["length >= 1"], lambda: training_windows(segs, 0))


# -------------------------------------------------------------------------------- WindowDataset
def test_window_dataset_items_and_collate():
    T = 100
    segs = [make_segment(T, seed=i, emotion=emotion_probs(T, i), valence=np.linspace(-1, 1, T),
                         listener_id=f"id{i % 2}") for i in range(3)]
    segs.append(make_segment(20, seed=9, emotion=emotion_probs(20), valence=np.zeros(20), listener_id="id0"))  # too short: skipped
    ds = WindowDataset(segs, length=40, stride=30)
    assert len(ds) == 3 * 3  # starts 0, 30, 60
    assert ds.fields == ["listener_beta", "emotion", "valence"] and ds.listener_ids == ["id0", "id1"]
    item = ds[4]  # segment 1, start 30
    assert item["segment"].item() == 1 and item["start"].item() == 30 and item["index"].item() == 4
    assert item["listener"].item() == 1
    assert torch.equal(item["listener_motion"], torch.from_numpy(segs[1].listener_motion[30:70]))
    assert torch.equal(item["speaker_motion"], torch.from_numpy(segs[1].speaker_motion[30:70]))
    assert torch.equal(item["listener_beta"], torch.from_numpy(segs[1].listener_beta))
    assert item["emotion"].shape == (40, 8) and item["valence"].shape == (40,)
    batch = collate_windows([ds[i] for i in range(5)])
    assert batch["listener_motion"].shape == (5, 40, D_MOTION) and batch["listener_motion"].dtype == torch.float32
    assert batch["listener_beta"].shape == (5, N_SHAPE) and batch["index"].tolist() == [0, 1, 2, 3, 4]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate_windows)
    b = next(iter(loader))
    assert b["speaker_motion"].shape == (4, 40, D_MOTION) and b["emotion"].shape == (4, 40, 8)


def test_window_dataset_random_crop_covers_all_starts_and_is_seeded():
    s = make_segment(50)
    ds = WindowDataset([s], length=20, stride=10, random_crop=True)
    assert len(ds) == 4  # cells [0..9], [10..19], [20..29], [30..30]
    torch.manual_seed(0)
    starts = {int(ds[i]["start"]) for _ in range(60) for i in range(len(ds))}
    assert starts == set(range(0, 31))
    torch.manual_seed(1)
    a = [int(ds[i]["start"]) for i in range(4)]
    torch.manual_seed(1)
    assert a == [int(ds[i]["start"]) for i in range(4)]
    item = ds[0]
    st0 = int(item["start"])
    assert torch.equal(item["listener_motion"], torch.from_numpy(s.listener_motion[st0:st0 + 20]))


def test_window_dataset_normalization_and_errors():
    segs = [make_segment(64, seed=i) for i in range(2)]
    mean, std = motion_stats(segs)
    ds = WindowDataset(segs, length=64, mean=mean, std=std)
    x = torch.cat([ds[i]["listener_motion"] for i in range(2)])
    torch.testing.assert_close(x.mean(0), torch.zeros(D_MOTION), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(D_MOTION), atol=1e-5, rtol=0)
    raises(["mean/std", "both"], lambda: WindowDataset(segs, 64, mean=mean))
    raises(["std", "(56,)", "(55,)"], lambda: WindowDataset(segs, 64, mean=mean, std=std[:55]))
    raises(["std", "> 0"], lambda: WindowDataset(segs, 64, mean=mean, std=np.zeros(56)))
    # a field that only some segments have is an error, not zero-filled
    mixed = [make_segment(64, valence=np.zeros(64)), make_segment(64)]
    raises(["segments[1].valence", "got None"], lambda: WindowDataset(mixed, 32))
    no_beta = WindowDataset([make_segment(64, listener_beta=None)], 32)
    assert "listener_beta" not in no_beta[0] and no_beta.fields == []
    raises(["length=80", "at most 64"], lambda: WindowDataset(segs, 80))
    raises(["keys"], lambda: collate_windows([ds[0], no_beta[0]]))
    raises(["empty"], lambda: collate_windows([]))
