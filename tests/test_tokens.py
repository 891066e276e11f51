"""minilisten.tokens: the vocabulary, Eq. 1's time -> step rules (W, SA, emo), step assembly,
the sliding context policy and sequence packing, on hand-built cases and hypothesis-generated
edge values checked against the definitions."""
import math

import numpy as np
import pytest
import torch
from conftest import emotion_probs as _probs
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minilisten.data.segment import Segment, Word, as_word, check_emotion_probs
from minilisten.tokens import (
    IGNORE,
    Vocab,
    check_modalities,
    context_ids,
    context_plan,
    emotion_tokens,
    history_ids,
    length_batches,
    pack_sequences,
    prefix_ids,
    sa_bounds,
    sa_steps,
    speaker_tokens,
    step_ids,
    word_step,
    word_steps,
)

FPS, R = 30.0, 8


# ----------------------------------------------------------------------------- modalities
@pytest.mark.parametrize("spec, want", [
    ("W", ("W",)), ("W+SA+emo", ("W", "SA", "emo")), ("emo+W", ("W", "emo")), (["SA", "W"], ("W", "SA")),
])
def test_check_modalities(spec, want):
    assert check_modalities(spec) == want


@pytest.mark.parametrize("spec", ["W+audio", "", ["W", "iSC"]])
def test_check_modalities_errors(spec):
    with pytest.raises(ValueError, match="modalit"):
        check_modalities(spec)


# ----------------------------------------------------------------------------- words
@pytest.mark.parametrize("end, step", [
    (0.0, 0), (0.1, 0),
    (8 / FPS, 0),            # exactly at the end of step 0's span: spoken completely during step 0
    (8 / FPS + 1e-3, 1),     # just after: step 1
    (15.5 / FPS, 1), (16 / FPS, 1), (16.01 / FPS, 2),
])
def test_word_step_boundaries(end, step):
    assert word_step(end, FPS, R) == step


def test_word_steps_eq1_vs_lm_listener():
    words = [Word("a", 0.0, 0.1),            # frame 3        -> eq1 step 0, LM-listener token 1
             Word("b", 0.2, 8 / FPS),        # frame 8 exact  -> eq1 step 0, LM-listener token 2 (ceil rule)
             Word("c", 0.3, 9.5 / FPS),      # frame 9.5 -> 10 -> eq1 step 1, LM-listener token 2
             Word("d", 0.5, 31 / FPS)]       # last step (3)  -> eq1 step 3, LM-listener: dropped (token 4)
    eq1 = word_steps(words, 4, FPS, R, "eq1")
    assert [[w.text for w in s] for s in eq1] == [["a", "b"], ["c"], [], ["d"]]
    lml = word_steps(words, 4, FPS, R, "lm_listener")
    assert [[w.text for w in s] for s in lml] == [[], ["a"], ["b", "c"], []]
    # n_steps smaller than the clip: words after the last step have no LR token to precede
    assert [[w.text for w in s] for s in word_steps(words, 2, FPS, R)] == [["a", "b"], ["c"]]
    with pytest.raises(ValueError, match="word_placement"):
        word_steps(words, 4, FPS, R, "late")


def test_word_steps_orders_by_end_time():
    words = [Word("late", 0.05, 0.2), Word("early", 0.0, 0.1)]
    assert [w.text for w in word_steps(words, 1, FPS)[0]] == ["early", "late"]


# ----------------------------------------------------------------------------- SA
def test_sa_steps_partition_by_end_time():
    b = sa_bounds(np.arange(31), FPS, R, 50.0)
    assert b[0] == 0 and b[-1] == 400
    sizes = np.diff(b)
    assert set(sizes.tolist()) <= {13, 14} and sizes.sum() == 400
    for i in range(30):                       # every token ends inside its step's span (a, b]
        for k in range(b[i], b[i + 1]):
            assert i * R / FPS < (k + 1) / 50 <= (i + 1) * R / FPS + 1e-9
    parts = sa_steps(np.arange(400) % 7, 30, FPS)
    assert np.array_equal(np.concatenate(parts), np.arange(400) % 7)


def test_sa_steps_errors():
    with pytest.raises(ValueError, match=r"sa_tokens: expected at least 400 tokens.*got 399"):
        sa_steps(np.zeros(399, np.int64), 30, FPS)
    with pytest.raises(ValueError, match=r"sa_tokens: expected token ids in \[0, 16\).*got 16"):
        sa_steps(np.full(400, 16), 30, FPS, n_sa=16)
    with pytest.raises(ValueError, match="1-D integer"):
        sa_steps(np.zeros(400, np.float32), 30, FPS)


def test_emotion_tokens_group_mean_argmax():
    p = np.zeros((16, 8), np.float32)
    # group 0: 5 frames weakly "neutral" (0.4) and 3 frames strongly "happy" (0.9): a majority
    # vote of per-frame argmaxes says neutral, the mean of probabilities (Eq. 9) says happy
    p[:5] = 0.6 / 7
    p[:5, 0] = 0.4
    p[5:8] = 0.1 / 7
    p[5:8, 1] = 0.9
    p[8:] = _probs(8, 6)           # group 1: anger
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    assert emotion_tokens(p).tolist() == [1, 6]
    assert emotion_tokens(p[:15]).tolist() == [1]          # a tail of T % r frames forms no group
    assert emotion_tokens(torch.from_numpy(p), r=4).tolist() == [0, 1, 6, 6]


@pytest.mark.parametrize("bad, msg", [
    (np.full((8, 7), 1 / 7), r"shape \(T, 8\).*got \(8, 7\)"),
    (np.full((8, 8), 0.2), "rows summing to 1, got 1.6"),
    (np.full((8, 8), np.nan), "finite"),
])
def test_emotion_tokens_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        emotion_tokens(bad)


# ----------------------------------------------------------------------------- per segment
def _segment(T=24, **kw):
    base = dict(speaker_motion=np.zeros((T, 56)), listener_motion=np.zeros((T, 56)), fps=FPS,
                words=[Word("hi", 0.0, 0.1)], sa_tokens=np.arange(T * 50 // 30) % 5,
                emotion=_probs(T, np.arange(T) // 8))
    base.update(kw)
    return Segment(**base)


def test_speaker_tokens_per_segment():
    st = speaker_tokens(_segment(), "W+SA+emo")
    assert st.n_steps == 3 and [w.text for w in st.words[0]] == ["hi"]
    assert [len(s) for s in st.sa] == [13, 13, 14] and st.emo.tolist() == [0, 1, 2]
    st = speaker_tokens(_segment(), "W", n_steps=2)
    assert st.sa is None and st.emo is None and len(st.words) == 2


def test_speaker_tokens_errors():
    with pytest.raises(ValueError, match="modality 'SA' requested but segment .* sa_tokens=None"):
        speaker_tokens(_segment(sa_tokens=None), "W+SA")
    with pytest.raises(ValueError, match="modality 'emo' requested"):
        speaker_tokens(_segment(emotion=None), "emo")
    with pytest.raises(ValueError, match=r"n_steps: expected 0 <= n_steps <= T // r = 24 // 8 = 3, got 4"):
        speaker_tokens(_segment(), "W", n_steps=4)
    with pytest.raises(ValueError, match=r"expected end <= 0.800 s \(clip end\)"):
        _segment(words=[Word("late", 0.5, 1.5)])   # Segment itself rejects it at construction
    with pytest.raises(ValueError, match=r"sa_tokens: expected token ids in \[0, 4\)"):
        speaker_tokens(_segment(), "SA", n_sa=4)
    seg = _segment()
    object.__setattr__(seg, "emotion", np.full((24, 8), 0.5, np.float32))   # bypasses Segment's validation on purpose
    with pytest.raises(ValueError, match="rows summing to 1"):
        speaker_tokens(seg, "emo")


# ----------------------------------------------------------------------------- rules vs definitions
@settings(max_examples=300, deadline=None)
@given(end=st.floats(0, 30), fps=st.sampled_from([25.0, 29.97, 30.0, 60.0]), r=st.integers(1, 16))
def test_word_step_is_the_step_holding_the_end(end, fps, r):
    """Eq. 1: the step i with r i < end fps <= r (i + 1) (step 0 also holds end 0); LM-listener:
    the first token j with r j > ceil(end fps)."""
    e = end * fps                                    # in frames
    assume(abs(e / r - round(e / r)) > 1e-4 and abs(e - round(e)) > 1e-4)   # boundaries: hand cases above
    i = word_step(end, fps, r)
    assert (r * i < e <= r * (i + 1)) or (i == 0 and e <= r)
    f = math.ceil(e)
    assert word_step(end, fps, r, "lm_listener") == next(j for j in range(10 ** 6) if r * j > f)


@settings(max_examples=300, deadline=None)
@given(n_steps=st.integers(0, 40), fps=st.sampled_from([25.0, 29.97, 30.0]), r=st.integers(1, 16),
       sa_rate=st.sampled_from([50.0, 75.0, 12.5]))
def test_sa_bounds_count_the_tokens_ended_by_the_step(n_steps, fps, r, sa_rate):
    """b_i = number of tokens whose end (k + 1) / sa_rate is at or before the step's start r i / fps."""
    b = sa_bounds(np.arange(n_steps + 1), fps, r, sa_rate)
    assert b.shape == (n_steps + 1,) and b[0] == 0 and (np.diff(b) >= 0).all()
    for i in range(n_steps + 1):
        t = r * i / fps
        assert sa_bounds(i, fps, r, sa_rate) == b[i] and isinstance(sa_bounds(i, fps, r, sa_rate), int)
        if abs(t * sa_rate - round(t * sa_rate)) < 1e-6:
            assert b[i] == round(t * sa_rate)      # a token ending exactly at the step start is before it
            continue
        assert b[i] == sum(1 for k in range(int(t * sa_rate) + 2) if (k + 1) / sa_rate <= t)


# ----------------------------------------------------------------------------- token ids (hand-built)
V = Vocab(n_words=10, n_lr=4, n_sa=5, n_emo=8)   # bos 10, pad 11, <sa> 12, </sa> 13, <emo> 14, </emo> 15,
#                                                 LR 16..19, SA 20..24, emo 25..32


def test_step_ids_layout():
    assert step_ids(V, [[1, 2], [3]], np.array([0, 4]), 7) == [1, 2, 3, 12, 20, 24, 13, 14, 32, 15]
    assert step_ids(V, None, None, 3) == [14, 28, 15]
    assert step_ids(V, [[5]], np.zeros(0, np.int64), None) == [5, 12, 13]      # a step without SA tokens
    assert step_ids(V, [], None, None) == []
    with pytest.raises(ValueError, match=r"emo code: expected a value in \[0, 8\), got 8"):
        step_ids(V, None, None, 8)
    with pytest.raises(ValueError, match=r"SA codes: expected values in \[0, 5\), got 5"):
        step_ids(V, None, np.array([5]), None)


def test_history_ids_keeps_recent_whole_words():
    words = [[1], [2, 3], [4]]
    assert history_ids(V, words, 3) == [10, 2, 3, 4]
    assert history_ids(V, words, 2) == [10, 4]          # [2, 3] would not fit whole
    assert history_ids(V, words, 0) == [10] and history_ids(V, [], 5) == [10]


# five steps of 4 tokens: word k + 3, then <sa> SA(0) </sa>; history: <bos> 1 2; 2 history tokens
HIST = [10, 1, 2]
STEPS = [[k + 3, 12, 20, 13] for k in range(5)]


def test_context_plan_by_hand():
    # with LR tokens a step is 5 tokens; contexts: prefix (3) + 5 per step; max_len 16, budget 8.
    # i=2 overflows (18): from j=1 13 > 8, from j=2 8 -> j=2; i=3: 13; i=4: 18 -> j=4 (8)
    assert context_plan(V, HIST, STEPS, 16, 2, 0.5) == [0, 0, 2, 2, 4]
    # S' (stage 1): 4 tokens per step + the next token: i=3 overflows (20) -> j=3 (8)
    assert context_plan(V, HIST, STEPS, 16, 2, 0.5, with_lr=False) == [0, 0, 0, 3, 3]
    assert context_plan(V, HIST, STEPS, 64, 2, 0.5) == [0] * 5
    assert prefix_ids(V, HIST, STEPS, 2, 2) == [10, 3, 4] and prefix_ids(V, HIST, STEPS, 4, 2) == [10, 5, 6]
    assert prefix_ids(V, HIST, STEPS, 4, 3) == [10, 4, 5, 6] and prefix_ids(V, HIST, STEPS, 0, 0) == HIST
    assert context_ids(V, HIST, STEPS, [0, 1, 2, 3], 3, 2, 2) == [10, 3, 4, 5, 12, 20, 13, 18, 6, 12, 20, 13]
    with pytest.raises(ValueError, match=r"step 1: 21 tokens plus the history do not fit the context of 16 tokens"):
        context_plan(V, HIST, [STEPS[0], [3] * 20], 16, 2, 0.5)


def test_pack_sequences_by_hand():
    seqs = pack_sequences(V, HIST, STEPS, [0, 1, 2, 3, 0], [0, 0, 2, 2, 4], 2)
    want = [(0, 1, 3, 2), (2, 3, 3, 2), (4, 4, 3, 2)]
    assert [(q.first_step, q.last_step, q.n_prefix, q.stage) for q in seqs] == want
    assert seqs[0].ids.tolist() == HIST + STEPS[0] + [16] + STEPS[1] + [17]
    assert seqs[1].ids.tolist() == [10, 3, 4] + STEPS[2] + [18] + STEPS[3] + [19]
    assert seqs[2].ids.tolist() == [10, 5, 6] + STEPS[4] + [16]
    for q, codes in zip(seqs, ([0, 1], [2, 3], [0])):   # Eq. 4: the position before each LR token
        want = [IGNORE] * len(q.ids)
        for k, c in zip((6, 11), codes):
            want[k] = c
        assert q.targets.tolist() == want
    s1 = pack_sequences(V, HIST, STEPS, None, [0, 0, 0, 3, 3], 2)      # S': Eq. 3
    assert [(q.first_step, q.last_step, q.stage) for q in s1] == [(0, 2, 1), (3, 4, 1)]
    assert s1[1].ids.tolist() == [10, 4, 5] + STEPS[3] + STEPS[4]
    for q in s1:   # targets: the next token where it is a W / SA / emo token after the prefix
        ids = q.ids.tolist()
        want = [ids[p + 1] if p + 1 < len(ids) and p + 1 >= q.n_prefix and V.kind(ids[p + 1]) in ("W", "SA", "emo")
                else IGNORE for p in range(len(ids))]
        assert q.targets.tolist() == want
    assert s1[0].targets.tolist()[2] == 3 and s1[0].targets.tolist()[3] == IGNORE   # <sa> is no target


@settings(max_examples=300, deadline=None)
@given(lens=st.lists(st.integers(0, 12), min_size=1, max_size=25), n_hist=st.integers(0, 6),
       history_tokens=st.integers(0, 8), max_len=st.integers(8, 60), keep=st.sampled_from([0.3, 0.5, 0.8, 1.0]),
       with_lr=st.booleans())
def test_context_plan_follows_the_policy(lens, n_hist, history_tokens, max_len, keep, with_lr):
    """Generated step lengths: the plan is the policy's definition or a ValueError for a step
    that cannot fit. Non-decreasing; every context fits; j moves only on overflow, to the first
    start whose context fits the budget (or to i)."""
    hist = [V.bos] + [1] * n_hist
    steps = [[2] * n for n in lens]

    def size(i, j):   # S: the context of LR_i plus LR_i; S': steps j..i (no LR tokens) plus the next token
        if with_lr:
            return len(context_ids(V, hist, steps, [0] * len(steps), i, j, history_tokens)) + 1
        return len(prefix_ids(V, hist, steps, j, history_tokens)) + sum(map(len, steps[j:i + 1])) + 1
    try:
        plan = context_plan(V, hist, steps, max_len, history_tokens, keep, with_lr)
    except ValueError as e:
        assert "do not fit the context" in str(e)
        i = int(str(e).split(":")[0].split()[1])
        assert size(i, i) > max_len
        return
    budget = max(1, int(keep * max_len))
    for i, j in enumerate(plan):
        assert 0 <= j <= i and size(i, j) <= max_len
        prev = plan[i - 1] if i else 0
        assert j >= prev
        if j != prev:
            assert size(i, prev) > max_len
            assert all(size(i, k) > budget for k in range(prev + 1, j))
            assert size(i, j) <= budget or j == i


# ----------------------------------------------------------------------------- vocabulary, coercion
@settings(max_examples=300, deadline=None)
@given(n_words=st.integers(1, 50), n_lr=st.integers(1, 20), n_sa=st.integers(0, 20), n_emo=st.integers(0, 8))
def test_vocab_blocks_partition(n_words, n_lr, n_sa, n_emo):
    v = Vocab(n_words, n_lr, n_sa, n_emo)
    kinds = v.kinds(range(v.size))
    assert kinds == ["W"] * n_words + ["<bos>", "<pad>", "<sa>", "</sa>", "<emo>", "</emo>"] + ["LR"] * n_lr \
        + ["SA"] * n_sa + ["emo"] * n_emo
    assert [v.lr(c) for c in range(n_lr)] == [i for i, k in enumerate(kinds) if k == "LR"]
    for bad in (-1, v.size):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            v.kind(bad)


def test_as_word_and_emotion_checks():
    assert as_word(("hi", 0, 1)) == Word("hi", 0.0, 1.0) == as_word({"text": "hi", "start": 0.0, "end": 1})
    for bad, msg in [("hello", r"w\[0\]: expected Word\(text, start, end\).*got str"),
                     (("a", 0.0, "x"), r"of \(str, number, number\)"), (("a", 1.0, 0.5), "start <= end"),
                     (("a", 0.0, math.inf), "finite"), ({"text": "a"}, "expected keys text/start/end")]:
        with pytest.raises(ValueError, match=msg):
            as_word(bad, "w[0]")
    p = check_emotion_probs(_probs(4, 2), "emo", rows=4)
    assert p.dtype == np.float64 and p.shape == (4, 8)
    for bad, rows, msg in [(np.full((4, 7), 1 / 7), "n", r"emo: expected per-frame probabilities of shape \(n, 8\)"),
                           (_probs(4, 2), 5, r"shape \(5, 8\)"),
                           (np.full((2, 8), 0.2), "T", "rows summing to 1, got 1.6 at frame 0"),
                           (np.full((2, 8), np.nan), "T", "finite"), (_probs(2, 0) - np.eye(8)[:2], "T", ">= 0")]:
        with pytest.raises(ValueError, match=msg):
            check_emotion_probs(bad, "emo", rows=rows)


def test_speaker_tokens_at_25_fps():
    """25 fps: a step is 8 / 25 = 0.32 s, holding 16 SA tokens at 50/s."""
    T = 24
    seg = Segment(np.zeros((T, 56)), np.zeros((T, 56)), 25.0, words=[Word("a", 0.0, 0.32), Word("b", 0.32, 0.65)],
                  sa_tokens=np.arange(48) % 5, emotion=_probs(T, np.arange(T) // 8))
    st_ = speaker_tokens(seg, "W+SA+emo")
    assert [[w.text for w in s] for s in st_.words] == [["a"], [], ["b"]]   # 0.65 s > 0.64: step 2
    assert [len(s) for s in st_.sa] == [16, 16, 16] and st_.emo.tolist() == [0, 1, 2]


def test_length_batches_hand_built():
    """Equal lengths share a batch, groups in first-seen order, chunks of at most ``batch``, every index once."""
    assert length_batches([5, 3, 5, 5, 3, 7], 2) == [[0, 2], [3], [1, 4], [5]]
    assert length_batches([4, 4, 4], 5) == [[0, 1, 2]]
    assert length_batches([], 3) == []
