"""ARIG-style continuous listener (minilisten.arig, minilisten.train_arig): tiny models, seconds."""
import math

import numpy as np
import pytest
import torch

from minilisten.arig import (
    ARIG,
    STATES,
    ARIGConfig,
    arig_generate,
    collate,
    euler_sample,
    flow_loss,
    frame_inputs,
    state_labels,
    word_id,
)
from minilisten.data.segment import Segment, Word
from minilisten.streaming import StreamingARIG
from minilisten.train_arig import TEMPERATURES, ARIGTrainConfig, evaluate_arig_loss, train_arig
from minilisten.training import windows as _windows

TINY = dict(d_model=16, n_head=2, d_ff=32, depth=2, window=6, diff_width=16, word_buckets=64, sample_steps=2,
            diff_mul=2)
VOCAB = ["yes", "no", "so", "what", "joke", "really"]
_MIX = np.random.default_rng(99).normal(0, 0.5, (4, 56)).astype(np.float32)


def _segment(T: int, seed: int, fps: float = 30.0, name: str = "s") -> Segment:
    """Random speaker input with words / SA / emotion; the listener follows the speaker's first
    coefficients with a lag of 3 frames (something a model can learn)."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0, 0.3, (T, 56))
    spk = np.zeros((T, 56), np.float32)
    for t in range(T):   # stationary AR(1), std ~0.7
        spk[t] = (0.9 * spk[t - 1] if t else 0) + e[t]
    lis = np.zeros((T, 56), np.float32)
    lis[3:] = spk[:-3, :4] @ _MIX                       # rank 4: a 16-d model can carry it
    lis += rng.normal(0, 0.01, lis.shape).astype(np.float32)
    words, t = [], 0.1
    while t + 0.3 < T / fps:
        d = rng.uniform(0.1, 0.3)
        words.append(Word(str(rng.choice(VOCAB)), t, t + d))
        t += d + rng.uniform(0.0, 0.6)
    emo = rng.dirichlet(np.ones(8), T).astype(np.float32)
    sa = rng.integers(1, 20, int(math.ceil(T / fps * 50))).astype(np.int64)
    k = np.arange(sa.size) / 50
    sa[~np.any([(k >= w.start) & (k < w.end) for w in words], 0)] = 0   # 0 = silence, as the synthetic corpus
    return Segment(spk, lis, fps, listener_beta=rng.normal(size=100).astype(np.float32), words=words,
                   history_words=[Word("so", -0.6, -0.3)], sa_tokens=sa, emotion=emo, name=f"{name}{seed}")


def _model(seed: int = 0, **kw) -> ARIG:
    torch.manual_seed(seed)
    m = ARIG(ARIGConfig(**{**TINY, "n_sa": 32, **kw}))
    with torch.no_grad():   # DiT-style zero inits make many paths identity: perturb all weights
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def _batch(model, segs):
    return collate([frame_inputs(s, model.config) for s in segs])


# ----------------------------------------------------------------------------- inputs and labels
def test_state_labels_hand_built():
    # fps 10: frame centres 0.05, 0.15, ...; history word ends -0.1; a/b 0.1 s apart (one utterance)
    seg = Segment(np.zeros((30, 56)), np.zeros((30, 56)), 10.0, history_words=[Word("h", -0.5, -0.1)],
                  words=[Word("a", 0.2, 0.5), Word("b", 0.6, 0.9), Word("c", 2.0, 2.3)])
    want = [1, 1] + [0] * 7 + [1] * 5 + [2] * 6 + [0] * 3 + [1] * 5 + [2] * 2
    #       0-1 pause (0.15/0.25 s after h)  2-8 speaking  9-13 pause  14-19 silence  20-22 c  23-27  28-29
    assert state_labels(seg).tolist() == want
    assert [STATES[i] for i in state_labels(Segment(np.zeros((3, 56)), np.zeros((3, 56)), 10.0))] == ["silence"] * 3


def test_frame_inputs_hand_built():
    cfg = ARIGConfig(**TINY, n_sa=32, fps=10.0, sa_rate=15.0)   # 1.5 tokens per frame: slots 2,1,2,1,...
    seg = Segment(np.zeros((10, 56)), np.zeros((10, 56)), 10.0, history_words=[Word("h", -0.5, -0.1)],
                  words=[Word("a", 0.2, 0.5), Word("b", 0.6, 0.9)], sa_tokens=np.arange(14), sa_rate=15.0,
                  emotion=np.full((10, 8), 1 / 8), listener_beta=np.ones(100))
    fi = frame_inputs(seg, cfg)
    ia, ib, ih = (word_id(w, 64) for w in "abh")
    # h ends at -0.1 s -> frame -2; a at 0.5 s -> frame 4 (its span [0.4, 0.5] holds the end); b -> frame 8
    assert fi["word"].tolist() == [ih] * 4 + [ia] * 4 + [ib] * 2
    assert fi["since"].tolist() == [2, 3, 4, 5, 0, 1, 2, 3, 0, 1]
    assert fi["sa"][:4].tolist() == [[0, 1], [2, -1], [3, 4], [5, -1]]   # tokens starting in each frame
    assert fi["sa"][9].tolist() == [13, -1]                                # 14 tokens: frame 9 gets token 13
    with pytest.raises(ValueError, match=r"sa_tokens: expected token ids in \[0, 32\) \(the SA codebook\), got 40"):
        frame_inputs(Segment(np.zeros((10, 56)), np.zeros((10, 56)), 10.0, sa_tokens=np.array([40]), sa_rate=15.0,
                             emotion=np.full((10, 8), 1 / 8), listener_beta=np.ones(100)), cfg)
    with pytest.raises(ValueError, match="listener_beta"):
        frame_inputs(Segment(np.zeros((10, 56)), np.zeros((10, 56)), 10.0, sa_tokens=np.arange(14), sa_rate=15.0,
                             emotion=np.full((10, 8), 1 / 8)), cfg)
    with pytest.raises(ValueError, match="fps: expected 30"):
        frame_inputs(seg, ARIGConfig(**TINY))


def test_config_errors():
    with pytest.raises(ValueError, match="window: expected >= coarse_frames"):
        ARIGConfig(**{**TINY, "window": 4})
    with pytest.raises(ValueError, match="head: expected one of"):
        ARIGConfig(head="softmax")
    p = ARIGConfig.paper()
    assert (p.d_model, p.d_ff, p.depth, p.coarse_frames, p.temporal_frames, p.diff_blocks) == (512, 2048, 2, 3, 5, 3)


# ----------------------------------------------------------------------------- model
@pytest.mark.parametrize("kw", [{}, {"head": "regression"}, {"ibu": "linear"}])
def test_shapes_and_step_equals_teacher_forced(kw):
    m = _model(**kw)
    segs = [_segment(20, i) for i in range(2)]
    b = _batch(m, segs)
    with torch.no_grad():
        z, logits = m.features(b)
        assert z.shape == (2, 20, 16) and logits.shape == (2, 20, len(STATES))
        # the cached one-frame path with the ground-truth history computes the same conditions
        frame = lambda t: {k: (v if k == "beta" else v[:, t]) for k, v in b.items() if k not in ("lis", "state")}
        st = m.init_state(frame(0))
        zs = []
        for t in range(20):
            zt, lt = m.step(st, frame(t))
            zs.append(zt)
            m.commit(st, m._norm_lis(b["lis"][:, t]))
    torch.testing.assert_close(torch.stack(zs, 1), z, atol=1e-5, rtol=1e-5)
    out = arig_generate(m, segs)
    assert [o.shape for o in out] == [(20, 56), (20, 56)] and all(o.dtype == np.float32 for o in out)


def test_causality_whole_model():
    """Changing speaker input (motion, SA, emotion, words) after frame t leaves frames <= t unchanged."""
    m = _model()
    a = _segment(24, 1)
    t = 11
    rng = np.random.default_rng(5)
    spk = a.speaker_motion.copy()
    spk[t + 1:] += rng.normal(0, 1, spk[t + 1:].shape)
    emo = a.emotion.copy()
    emo[t + 1:] = rng.dirichlet(np.ones(8), 24 - t - 1)
    sa = a.sa_tokens.copy()
    first = int(math.ceil((t + 1) * 50 / 30))        # first SA token that starts after frame t
    sa[first:] = rng.integers(0, 20, sa.size - first)
    words = [w for w in a.words if w.end <= (t + 1) / 30] + [Word("really", (t + 1.5) / 30, (t + 3) / 30)]
    b = Segment(spk, a.listener_motion, 30.0, listener_beta=a.listener_beta, words=words,
                history_words=a.history_words, sa_tokens=sa, emotion=emo)
    # arig_generate seeds clip i with seed + i: generate a and b separately with the same seed
    ga, gb = arig_generate(m, [a], seed=3)[0], arig_generate(m, [b], seed=3)[0]
    np.testing.assert_array_equal(ga[:t + 1], gb[:t + 1])
    assert np.abs(ga[t + 1:] - gb[t + 1:]).max() > 1e-3
    # teacher forcing: the listener frames >= t do not change the conditions of frames <= t either
    lis = a.listener_motion.copy()
    lis[t:] += 1.0
    c = Segment(a.speaker_motion, lis, 30.0, listener_beta=a.listener_beta, words=a.words,
                history_words=a.history_words, sa_tokens=a.sa_tokens, emotion=a.emotion)
    with torch.no_grad():
        za, zc = m.features(_batch(m, [a]))[0], m.features(_batch(m, [c]))[0]
    torch.testing.assert_close(za[:, :t + 1], zc[:, :t + 1], atol=1e-6, rtol=0)
    assert (za[:, t + 1:] - zc[:, t + 1:]).abs().max() > 1e-3


def test_flow_loss_hand_computed():
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    eps = torch.tensor([[0.0, 1.0], [-1.0, 2.0]])
    s = torch.tensor([0.25, 0.5])
    cond = torch.tensor([[1.0], [3.0]])
    net = lambda x, s, c: x + c                          # a known "denoiser"
    # by hand: x_s = (1-s) x0 + s eps = [[0.75, -1.25], [-0.25, 1.0]]; v = eps - x0 = [[-1, 3], [-1.5, 2]]
    # net = x_s + c = [[1.75, -0.25], [2.75, 4.0]]; errors net - v = [[2.75, -3.25], [4.25, 2.0]]
    want = (2.75 ** 2 + 3.25 ** 2 + 4.25 ** 2 + 2.0 ** 2) / 4
    assert flow_loss(net, x0, cond, s, eps).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 5, 16])
def test_euler_sampler_recovers_a_delta(steps):
    """The exact velocity of data concentrated at x*: v(x, s) = (x - x*) / s; any step count lands on x*."""
    x_star = torch.tensor([[0.3, -1.2, 2.0], [5.0, 0.0, -0.5]])
    velocity = lambda x, s: (x - x_star) / s[:, None]
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(euler_sample(velocity, noise, steps), x_star, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="steps: expected an int >= 1"):
        euler_sample(velocity, noise, 0)


def test_seeded_sampling_is_deterministic():
    m = _model()
    segs = [_segment(16, i) for i in range(3)]
    a, b = arig_generate(m, segs, seed=7), arig_generate(m, segs, seed=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = arig_generate(m, segs, seed=8)
    assert np.abs(a[0] - c[0]).max() > 1e-3
    # a clip's samples do not depend on the batch it is generated in (own generator per clip)
    np.testing.assert_allclose(arig_generate(m, segs[1:2], seed=8)[0], a[1], rtol=1e-4, atol=1e-4)


def test_save_load_round_trip(tmp_path):
    m = _model()
    m.set_motion_stats(np.full(56, 0.1), np.full(56, 2.0), np.zeros(56), np.ones(56))
    m.save_pretrained(tmp_path / "ck")
    m2 = ARIG.from_pretrained(tmp_path / "ck")
    assert m2.config == m.config
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    seg = [_segment(12, 0)]
    np.testing.assert_array_equal(arig_generate(m, seg)[0], arig_generate(m2, seg)[0])
    (tmp_path / "ck" / "config.json").write_text('{"format": "minilisten.VQVAE"}')
    with pytest.raises(ValueError, match="expected format 'minilisten.ARIG'"):
        ARIG.from_pretrained(tmp_path / "ck")


# ----------------------------------------------------------------------------- training
def _data(n=6, T=90):
    return [_segment(T, i, name="tr") for i in range(n)], [_segment(T, 100 + i, name="va") for i in range(2)]


TC = dict(batch_size=4, crop=24, learning_rate=3e-3, warmup=2, eval_every=0, progress=False)


def test_resume_is_exact(tmp_path):
    train, val = _data()
    a = train_arig(train, val, TINY, ARIGTrainConfig(steps=4, **TC), out_dir=tmp_path / "a", log=None)
    train_arig(train, val, TINY, ARIGTrainConfig(steps=2, **TC), out_dir=tmp_path / "b", log=None)
    b = train_arig(train, val, None, ARIGTrainConfig(steps=4, **TC), out_dir=tmp_path / "b", resume=True, log=None)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    with pytest.raises(ValueError, match="--steps"):
        train_arig(train, val, None, ARIGTrainConfig(steps=1, **TC), out_dir=tmp_path / "b", resume=True, log=None)


def test_training_reduces_the_loss():
    train, val = _data()
    m0 = train_arig(train, val, TINY, ARIGTrainConfig(steps=1, **{**TC, "learning_rate": 0.0, "warmup": 0}), log=None)
    items = _windows(val, 24, 24)
    inputs = [frame_inputs(s, m0.config) for s in val]
    before = evaluate_arig_loss(m0, inputs, items, 24)
    m = train_arig(train, val, TINY, ARIGTrainConfig(steps=60, **TC), log=None)
    after = evaluate_arig_loss(m, inputs, items, 24)
    assert after["motion"] < 0.7 * before["motion"], (before, after)
    assert after["state"] < before["state"]


def test_sampling_temperature_is_chosen_on_the_validation_split(tmp_path):
    """train-arig sets ``config.temperature`` to the grid value whose free-running validation rollouts have the
    Variation closest to the data's in ratio (oracle: numpy's variance over time here); it is saved with the model
    and is the default of arig_generate and StreamingARIG; --no-calibrate and the regression head keep 1.0."""
    from minilisten.data.windows import test_clips
    train, val = _data()
    m = train_arig(train, val, TINY, ARIGTrainConfig(steps=20, **TC), out_dir=tmp_path / "a", log=None)
    clips = test_clips(val, 12)
    gt = np.mean([c.listener_motion.var(0).mean() for c in clips])
    ratio = {t: np.mean([p.var(0).mean() for p in arig_generate(m, clips, temperature=t)]) / gt for t in TEMPERATURES}
    T = m.config.temperature
    assert T == min(ratio, key=lambda t: abs(math.log(ratio[t]))) and T != 1, ratio   # 20 steps: samples too wide
    assert m.train_log[-1]["temperature"] == T and ARIG.from_pretrained(tmp_path / "a").config.temperature == T
    np.testing.assert_array_equal(arig_generate(m, val)[0], arig_generate(m, val, temperature=T)[0])
    assert not np.array_equal(arig_generate(m, val)[0], arig_generate(m, val, temperature=1.0)[0])
    beta = val[0].listener_beta
    assert StreamingARIG(m, beta).temperature == T and StreamingARIG(m, beta, temperature=2).temperature == 2
    off = train_arig(train, val, TINY, ARIGTrainConfig(steps=4, calibrate=False, **TC), log=None)
    reg = train_arig(train, val, {**TINY, "head": "regression"}, ARIGTrainConfig(steps=4, **TC), log=None)
    assert off.config.temperature == reg.config.temperature == 1.0
    for bad in (-1, math.nan, True, "1"):
        with pytest.raises(ValueError, match="temperature: expected a finite number >= 0, got"):
            arig_generate(m, val, temperature=bad)


def test_data_without_words_sa_emotion_beta():
    """Learning2Listen-like data (motion only): those inputs are off, the state loss is off."""
    from dataclasses import replace
    train, val = _data(4, 60)
    bare = lambda ss: [replace(s, words=[], history_words=[], sa_tokens=None, emotion=None, listener_beta=None)
                       for s in ss]
    m = train_arig(bare(train), bare(val), TINY, ARIGTrainConfig(steps=2, **TC), log=None)
    c = m.config
    assert (c.n_sa, c.use_emotion, c.use_words, c.use_beta) == (0, False, False, False)
    assert math.isnan(m.train_log[-1]["state_acc"])
    out = arig_generate(m, bare(val))
    assert out[0].shape == (60, 56) and np.isfinite(out[0]).all()
    sl = StreamingARIG(m)
    np.testing.assert_allclose(sl.push(motion=val[0].speaker_motion), out[0], atol=1e-5)
    with pytest.raises(ValueError, match="emotion: expected \\(60, 8\\) probabilities"):   # a model that needs emotion
        frame_inputs(bare(val)[0], ARIGConfig(**TINY, n_sa=0))


def test_cli_trains_and_resumes(tmp_path, capsys):
    from minilisten.__main__ import main
    common = ["--out", str(tmp_path / "run"), "--identities", "2", "--segments", "20", "--seconds", "4",
              "--crop", "24", "--batch-size", "2", "--eval-every", "0", "--no-progress"]
    model = ["--d-model", "16", "--n-head", "2", "--d-ff", "32", "--window", "6", "--diff-width", "16"]
    assert main(["train-arig", "--steps", "2", *common, *model]) == 0
    m = ARIG.from_pretrained(tmp_path / "run")
    assert m.config.d_model == 16 and m.config.n_sa == 1024 and m.config.use_words
    assert main(["train-arig", "--steps", "3", "--resume", *common]) == 0
    assert main(["train-arig", "--steps", "3", "--resume", *common, "--d-model", "32"]) == 2
    assert "--resume continues the saved model" in capsys.readouterr().err


# ----------------------------------------------------------------------------- streaming
def _chunks(seg: Segment, sizes):
    """Split a segment into pushes of ``sizes`` frames with the words / SA tokens / emotion they complete."""
    t, out, wi = 0, [], 0
    for n in sizes:
        t1 = min(t + n, seg.T)
        ws = []
        while wi < len(seg.words) and math.ceil(seg.words[wi].end * seg.fps - 1e-6) - 1 < t1:
            ws.append(seg.words[wi])
            wi += 1
        a, b = (int(math.ceil(x * 50 / seg.fps - 1e-9)) for x in (t, t1))
        out.append(dict(motion=seg.speaker_motion[t:t1], words=ws, sa_tokens=seg.sa_tokens[a:b],
                        emotion=seg.emotion[t:t1]))
        t = t1
        if t >= seg.T:
            break
    return out


def test_streaming_equals_offline_and_stays_bounded():
    m = _model()
    seg = _segment(60, 4)             # 10 x the history window
    want = arig_generate(m, [seg], seed=11)[0]
    sl = StreamingARIG(m, seg.listener_beta, seed=11, history_words=seg.history_words)
    got, sizes = [], []
    for i, ch in enumerate(_chunks(seg, [1, 3, 7, 1, 2, 16, 5, 25])):
        got.append(sl.push(**ch))
        assert len(got[-1]) == len(ch["motion"])       # one listener frame per speaker frame
        sizes.append(sl.state_sizes())
        if i == 2:   # bad input raises, names the field, and leaves the stream as it was
            with pytest.raises(ValueError, match=r"emotion \(stream 0\): expected 2 frames, as motion gives, got 3"):
                sl.push(motion=seg.speaker_motion[:2], emotion=np.ones((3, 8)) / 8)
            with pytest.raises(ValueError, match="words\\[0\\]"):
                sl.push(motion=seg.speaker_motion[:1], words=[Word("late", 0.0, 0.01)], emotion=np.ones((1, 8)) / 8)
    got.append(sl.flush())
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-5)
    assert sizes[3]["kv_floats"] == sizes[-1]["kv_floats"] and sizes[-1]["pending_words"] <= 2
    # SA tokens arriving late: the frames wait for them (not guessed), then equal offline
    sl.reset()
    ch = _chunks(seg, [10, 50])
    first = sl.push(**{**ch[0], "sa_tokens": ch[0]["sa_tokens"][:5]})
    assert len(first) == 3        # 5 tokens complete frames 0-2 (frame t needs ceil(5 (t + 1) / 3))
    rest = sl.push(**{**ch[1], "sa_tokens": np.concatenate([ch[0]["sa_tokens"][5:], ch[1]["sa_tokens"]])})
    np.testing.assert_allclose(np.concatenate([first, rest]), want, atol=1e-5)
    with pytest.raises(ValueError, match=r"beta: expected numbers of shape \(100,\), got shape \(5,\)"):
        sl.set_beta(np.ones(5))


def test_state_head_beats_the_majority_class_on_the_synthetic_corpus():
    from minilisten.data.synthetic import named_corpus
    ds = named_corpus("default", seed=0, n_identities=2, n_segments=20, seconds=8.0)
    m = train_arig(ds.train, ds.val, TINY, ARIGTrainConfig(steps=60, **{**TC, "crop": 48}), log=None)
    last = m.train_log[-1]      # validation: teacher-forced, all validation windows
    assert last["state_acc"] > last["state_majority"] + 0.08, last


def test_fast_paths_equal_their_references():
    """DiffusionMLP.sample == Euler steps of the net's full forward written out here; the last-position
    temporal layer == the whole nn.TransformerEncoderLayer's last row (train mode: no fused fast path)."""
    m = _model(3)
    g = torch.Generator().manual_seed(0)
    z, noise = torch.randn(5, m.config.d_model, generator=g), torch.randn(5, 56, generator=g)
    for steps in (1, 3, 8):
        x = noise
        for k in range(steps, 0, -1):   # dx/ds = v(x, s, z) from s = 1 to 0, every row's s given
            x = x - m.diffusion(x, torch.full((5,), k / steps), z) / steps
        torch.testing.assert_close(m.diffusion.sample(z, noise, steps), x, atol=1e-5, rtol=1e-5)
    seq = torch.randn(7, m.config.temporal_frames + 1, m.config.d_model, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(m._temporal_last(seq), m.temporal.train()(seq)[:, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m._temporal_last(seq), m.temporal.eval()(seq)[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.compile
def test_compiled_stream_equals_eager():
    """StreamingARIG(compile=True) (decode_frame under torch.compile) gives the eager stream's frames."""
    m = _model(5)
    seg = _segment(24, 6)
    out = {}
    for compile in (False, True):
        sl = StreamingARIG(m, seg.listener_beta, seed=3, history_words=seg.history_words, compile=compile)
        out[compile] = np.concatenate([sl.push(**ch) for ch in _chunks(seg, [4, 1, 9, 10])] + [sl.flush()])
    assert out[True].shape == (24, 56)
    scale = np.abs(out[False]).max()   # ~17 with these perturbed weights
    # float rounding (fused kernels sum in another order): ~2e-6 relative on frame 0, growing
    # slowly through the autoregressive history; a wrong graph would be off by O(scale)
    np.testing.assert_allclose(out[True][0], out[False][0], atol=1e-5 * scale)
    np.testing.assert_allclose(out[True], out[False], atol=1e-4 * scale)


def test_sixty_second_rollout_stays_in_the_data_range(tmp_path):
    """A free-running 60-s rollout on a corpus variant stays within the training data's per-dimension range
    widened by ``bound`` x the range (the oracle: the data's own min/max); unbounded, the same model leaves it."""
    from minilisten.checkpoint import load_checkpoint, save_checkpoint
    from minilisten.data.synthetic import named_corpus
    ds = named_corpus("rhythm", seed=3, n_identities=2, n_segments=8, seconds=60.0, split=(0.5, 0.25, 0.25))
    m = train_arig(ds.train, ds.val, TINY, ARIGTrainConfig(steps=2, **TC), log=None)
    with torch.no_grad():   # a badly trained model: its free-running rollouts leave the data
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    lis = np.concatenate([s.listener_motion for s in ds.train])
    lo, hi = lis.min(0), lis.max(0)
    margin = m.config.bound * (hi - lo)
    clip = ds.test[0]
    assert clip.T == 1800
    out = arig_generate(m, [clip], seed=1)[0]
    tol = 1e-4 * (1 + np.abs(lis).max())
    assert (out >= lo - margin - tol).all() and (out <= hi + margin + tol).all()
    assert ((out < lo) | (out > hi)).any()        # it uses the margin: the bound binds
    m.save_pretrained(tmp_path / "ck")             # saved with the model; a checkpoint without it loads unbounded
    cfg, state = load_checkpoint(tmp_path / "ck")
    assert torch.equal(ARIG.from_pretrained(tmp_path / "ck").lis_hi, m.lis_hi)
    save_checkpoint(tmp_path / "old", cfg, {k: v for k, v in state.items() if k not in ("lis_lo", "lis_hi")})
    free = arig_generate(ARIG.from_pretrained(tmp_path / "old"), [clip.window(0, 600)], seed=1)[0]
    assert ((free < lo - margin) | (free > hi + margin)).any()


@pytest.mark.parametrize("self_hist", [0.0, 1.0])
def test_training_history_holds_the_models_own_one_step_predictions(monkeypatch, self_hist):
    """Parallel scheduled sampling: with ``self_hist=1`` the history the loss trains on is the model's teacher-forced
    one-step prediction of every frame (regression head, no history noise); with 0 it is the true motion."""
    m = _model(head="regression", hist_noise=0.0, self_hist=self_hist, bound=0.0)
    segs = [_segment(20, i) for i in range(2)]
    lis = np.concatenate([s.listener_motion for s in segs])
    m.set_motion_stats(lis.mean(0), lis.std(0), np.zeros(56), np.ones(56), lis.min(0), lis.max(0))
    b = _batch(m, segs)
    with torch.no_grad():   # the oracle: a teacher-forced forward, clamped to the data's own range (bound 0)
        want = m.regressor(m.features(b)[0]) * m.lis_std + m.lis_mean
        want = torch.minimum(torch.maximum(want, torch.as_tensor(lis.min(0))), torch.as_tensor(lis.max(0)))
    seen = []
    features = ARIG.features
    monkeypatch.setattr(ARIG, "features", lambda self, *a: seen.append(a[4:]) or features(self, *a))
    m.train().loss(b, generator=torch.Generator().manual_seed(0))
    hist = seen[-1][0]
    if not self_hist:
        assert len(seen) == 1 and hist is None
        return
    torch.testing.assert_close(hist * m.lis_std + m.lis_mean, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(want, b["lis"], atol=1e-2)
