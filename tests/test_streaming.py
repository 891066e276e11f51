"""The stream core: streaming equals offline, sliding context with constant memory, bad and hostile input."""

import copy
import re

import numpy as np
import pytest
import torch
from conftest import chunks, tiny_lm, tiny_vq

from minilisten.data.segment import Word
from minilisten.data.synthetic import speaker_segment
from minilisten.generate import generate_nocache
from minilisten.streaming import StreamingListener

R = 8  # frames per LR code


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("gpt2")


def new_codes(sl, got: list, stream: int = 0) -> None:
    """Append the codes ``stream`` decoded since ``len(got)`` (public API: ``sl.codes``)."""
    got += sl.codes(stream, since=len(got))


def run_stream(sl, pushes, stream=0):
    """Push everything; returns (frames (N, 56), codes). The codes are read from the stream's state
    after every push (it keeps only the last few for VQ decoding)."""
    frames, codes = [], []
    for p in pushes:
        frames.append(sl.push(stream=stream, **p))
        new_codes(sl, codes, stream)
    frames.append(sl.flush(stream))
    return np.concatenate(frames), codes


@torch.no_grad()
def offline_motion(vq, codes, beta):
    return vq.decode(torch.tensor([codes]), torch.tensor(beta)[None])[0].numpy()


def offline_codes(lm, seg, max_len=None):
    h, s = lm.speaker_steps(seg)
    return generate_nocache(lm, [h], [s], max_len)[0].tolist()


def test_stream_equals_offline(lm):
    """Irregular chunks, SA lagging the frames: same LR codes as the offline reference decoder,
    and with lookahead = R the same frames as offline VQ decoding of all codes."""
    seg = speaker_segment(6.0, seed=1)
    vq = tiny_vq("adaln")
    sl = StreamingListener(lm, vq, seg.listener_beta, history_words=seg.history_words)   # lookahead R: exact
    assert sl.lookahead == vq.receptive_field == 4
    motion, codes = run_stream(sl, chunks(seg, seed=1, sa_lag=0.15))
    ref = offline_codes(lm, seg)
    assert codes == ref and len(set(ref)) > 3
    off = offline_motion(vq, ref, seg.listener_beta)
    assert motion.shape == off.shape == (R * len(ref), 56)
    assert np.abs(motion - off).max() < 1e-5 * max(1.0, np.abs(off).max())


def test_vq_decoding_choices(lm):
    """lookahead < R (lower latency): same codes, frames differ from offline by the missing right
    context; an instance-norm (AdaIN) decoder is never exact. Differences printed with -s (random
    weights: see the streaming module docstring for a trained VQ)."""
    seg = speaker_segment(6.0, seed=2)
    beta = seg.listener_beta
    for dec_norm, look in (("adaln", 0), ("adaln", 2), ("adain", 0), ("adain", 4)):
        vq = tiny_vq(dec_norm)
        sl = StreamingListener(lm, vq, beta, lookahead=look, history_words=seg.history_words)
        motion, codes = run_stream(sl, chunks(seg, seed=2))
        assert codes == offline_codes(lm, seg)
        off = offline_motion(vq, codes, beta)
        rel = np.abs(motion - off).max() / np.abs(off).std()
        print(f"\n{dec_norm} lookahead={look} vq_context={sl.vq_context}: max |streamed - offline| = "
              f"{np.abs(motion - off).max():.3g} ({rel:.3g} x std)")
        assert motion.shape == off.shape and np.isfinite(motion).all()
        if dec_norm == "adaln":
            assert rel > 1e-4    # without full right context the newest frames differ


def test_sliding_window_constant_memory(lm):
    """A stream many times longer than the LM context: same codes as the reference decoder with the
    same context policy; every buffer and the decoder state stay bounded."""
    max_len = 96
    seg = speaker_segment(40.0, seed=3)
    h, s = lm.speaker_steps(seg)
    assert sum(len(x) + 1 for x in s) > 8 * max_len
    vq = tiny_vq("adaln")
    sl = StreamingListener(lm, vq, seg.listener_beta, max_len=max_len, history_words=seg.history_words)
    sizes, codes = [], []
    for p in chunks(seg, seed=3):
        sl.push(**p)
        new_codes(sl, codes)
        sizes.append(sl.state_sizes())
    assert codes == offline_codes(lm, seg, max_len=max_len)
    assert len({z["decoder_state_bytes"] for z in sizes}) == 1
    late = sizes[len(sizes) // 4:]
    for key, bound in (("context_tokens", max_len), ("window_steps", max_len // 15),
                       ("vq_codes", sl.vq_context + sl.lookahead + 3), ("sa_buffer", 40), ("emotion_buffer", 2 * 20),
                       ("pending_words", 10)):
        assert max(z[key] for z in late) <= bound, (key, max(z[key] for z in late))


def test_streams_batched(lm):
    """Three streams, each with its own chunking, pushed together (shared forwards) or alone (stream
    1 every other round, then catching up): each equals its offline codes."""
    segs = [speaker_segment(4.0, seed=10 + k) for k in range(3)]
    segs[1:] = [seg.replace(history_words=segs[0].history_words) for seg in segs[1:]]
    vq = tiny_vq("adaln")
    sl = StreamingListener(lm, vq, np.stack([s.listener_beta for s in segs]), n_streams=3,
                           history_words=segs[0].history_words)
    pushes = [chunks(s, seed=20 + k) for k, s in enumerate(segs)]
    nxt, codes = [0, 0, 0], [[], [], []]

    def collect(b):
        new_codes(sl, codes[b], b)
    for rnd in range(max(map(len, pushes))):
        batch = {}
        for b in range(3):
            if nxt[b] < len(pushes[b]) and (b != 1 or rnd % 2 == 0):
                batch[b] = pushes[b][nxt[b]]
                nxt[b] += 1
        out = sl.push_many(batch)
        assert set(out) == set(batch) and all(o.shape[1] == 56 and o.shape[0] % R == 0 for o in out.values())
        for b in range(3):
            collect(b)
    for b in range(3):
        for p in pushes[b][nxt[b]:]:
            sl.push(stream=b, **p)
            collect(b)
    for b, seg in enumerate(segs):
        assert codes[b] == offline_codes(lm, seg), b


def test_generic_path_streaming():
    """A backbone without a fast path (GPT-NeoX): per-stream HF static-cache decoders, same codes."""
    lm = tiny_lm("neox")
    seg = speaker_segment(4.0, seed=8)
    sl = StreamingListener(lm, tiny_vq("adaln"), seg.listener_beta, max_len=96, history_words=seg.history_words)
    assert sl.decoder is None
    assert run_stream(sl, chunks(seg, seed=8))[1] == offline_codes(lm, seg, max_len=96)


def test_beta_switches_identity(lm):
    seg = speaker_segment(3.0, seed=4)
    vq = tiny_vq("adain")
    b1, b2 = seg.listener_beta, -seg.listener_beta
    pushes = chunks(seg, seed=4, max_frames=8)
    outs = {}
    for name, beta in (("one", b1), ("two", b2)):
        sl = StreamingListener(lm, vq, beta, history_words=seg.history_words)
        outs[name] = [sl.push(**p) for p in pushes]
    sl = StreamingListener(lm, vq, b1, history_words=seg.history_words)
    k = len(pushes) // 2
    mixed = [sl.push(**p) for p in pushes[:k]]
    sl.set_beta(b2)
    mixed += [sl.push(**p) for p in pushes[k:]]
    cat = lambda xs: np.concatenate(xs)  # noqa: E731
    assert np.abs(cat(outs["one"]) - cat(outs["two"])).max() > 1e-3
    np.testing.assert_allclose(cat(mixed[:k]), cat(outs["one"][:k]), atol=1e-6)
    np.testing.assert_allclose(cat(mixed[k:]), cat(outs["two"][k:]), atol=1e-6)


def test_bad_input_keeps_stream_usable(lm):
    seg = speaker_segment(4.0, seed=5)
    vq = tiny_vq("adaln")
    sl = StreamingListener(lm, vq, seg.listener_beta, n_streams=2, history_words=seg.history_words)
    pushes = chunks(seg, seed=5, max_frames=12)
    bad = [
        (dict(), r"empty chunk"),
        (dict(words=[], sa_tokens=[], emotion=np.zeros((0, 8))), r"empty chunk"),
        (dict(emotion=np.full((4, 7), 1 / 7)),
         r"emotion \(stream 0\): expected per-frame probabilities of shape \(n, 8\).*got \(4, 7\)"),
        (dict(emotion=np.full((4, 8), 0.2)), r"rows summing to 1"),
        (dict(frames=4), r"emotion \(stream 0\): the model uses emotion"),
        (dict(emotion=np.full((4, 8), 1 / 8), frames=5), r"frames \(stream 0\): expected 4"),
        (dict(sa_tokens=[3, 5000]), r"sa_tokens \(stream 0\): expected token ids in \[0, 1024\).*got 5000"),
        (dict(sa_tokens=np.zeros((2, 2), int)), r"expected a 1-D integer array"),
        (dict(audio=np.zeros(320), sample_rate=16000), r"audio \(stream 0\): expected sa_tokens, or an sa_tokenizer"),
        (dict(words=[Word("yes", 0.0, 1e6)], emotion=np.full((4, 8), 1 / 8)), r"expected end in \[0, 0.133\] s"),
        (dict(words=[Word("early", -0.5, -1e-9)], emotion=np.full((4, 8), 1 / 8)), r"expected end in \[0, 0.133\] s"),
        (dict(words=[("b", 0.0, 0.05), ("a", 0.0, 0.02)], emotion=np.full((4, 8), 1 / 8)),
         r"expected words in time order"),
        (dict(words=[("a", 0.0, "x")], emotion=np.full((4, 8), 1 / 8)), r"expected Word\(text, start, end\)"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            sl.push(**kw)
    with pytest.raises(ValueError, match=r"stream: expected an index in \[0, 2\) \(2 streams allocated\), got 2"):
        sl.push(stream=2, **pushes[0])
    with pytest.raises(ValueError, match=r"beta: expected numbers of shape \(100,\), got shape \(99,\)"):
        sl.set_beta(np.zeros(99))
    with pytest.raises(ValueError, match=r"beta: expected numbers of shape \(100,\), got shape \(2, 100\)"):
        sl.set_beta(np.zeros((2, 100)), stream=1)
    with pytest.raises(ValueError, match=r"beta: expected numbers of shape"):
        StreamingListener(lm, vq, np.zeros(10))
    with pytest.raises(ValueError, match=r"beta: this VQ-VAE .* needs the listener's shape beta"):
        StreamingListener(lm, vq, None)
    codes = []
    k = len(pushes) // 2
    for i, p in enumerate(pushes):
        if i == k:   # mid-stream: a word from an already decoded step, out-of-order words
            last_end = sl.progress()["last_word_end"]
            with pytest.raises(ValueError, match=r"already decoded|expected words in time order"):
                sl.push(words=[Word("late", 0.0, 0.05)], emotion=np.full((1, 8), 1 / 8))
            with pytest.raises(ValueError, match="expected words in time order"):
                sl.push(words=[Word("late", 0.0, last_end - 0.2)], emotion=np.full((1, 8), 1 / 8))
            with pytest.raises(ValueError, match=r"since \(stream 0\): expected a step index in"):
                sl.codes(0, since=-1)
        sl.push(**p)
        new_codes(sl, codes)
    assert codes == offline_codes(lm, seg)


def test_audio_input_matches_offline_tokens(lm):
    """Raw audio through the built-in acoustic tokenizer, pushed in odd-sized chunks: the same SA
    tokens (hence codes) as tokenizing the whole recording; other sample rates are refused."""
    from minilisten.speaker import AcousticTokenizer
    rng = np.random.default_rng(0)
    sec, sr = 3.0, 16000
    t = np.arange(int(sec * sr)) / sr
    wav = (0.3 * np.sin(2 * np.pi * (120 + 40 * np.sin(2 * np.pi * 0.7 * t)) * t) * (1 + np.sin(2 * np.pi * 2 * t))
           + 0.02 * rng.normal(size=t.size)).astype(np.float32)
    tok = AcousticTokenizer.fit([wav], k=32, iters=5)
    seg = speaker_segment(sec, seed=6)
    full = tok.encode(wav, sr)
    seg = seg.replace(sa_tokens=full)
    vq = tiny_vq("adaln")
    sl = StreamingListener(lm, vq, seg.listener_beta, sa_tokenizer=tok, history_words=seg.history_words,
                           vq_context=10_000)   # keeps every code: late audio decodes many steps in one push
    with pytest.raises(ValueError, match=r"sample_rate \(stream 0\): expected 16000 Hz audio .*got 44100"):
        sl.push(audio=wav[:441], sample_rate=44100)
    codes, a = [], 0
    for p in chunks(seg, seed=6, max_frames=10):
        b = min(wav.size, a + int(rng.integers(100, 3000)))
        sl.push(words=p["words"], emotion=p["emotion"], audio=wav[a:b], sample_rate=sr)
        a = b
        new_codes(sl, codes)
    sl.push(audio=wav[a:], sample_rate=sr)
    new_codes(sl, codes)
    assert sl.progress()["sa_tokens"] == full.size
    assert codes == offline_codes(lm, seg)


def test_fps_is_the_models(lm):
    """The stream's frame rate defaults to ``lm.config.fps``; another rate is refused, naming both."""
    vq = tiny_vq("adaln")
    beta = np.zeros(100)
    assert StreamingListener(lm, vq, beta).fps == lm.config.fps == 30.0
    with pytest.raises(ValueError, match=r"fps: expected 30 \(the frame rate lm.config.fps was trained at\), got 25"):
        StreamingListener(lm, vq, beta, fps=25.0)
    lm25 = tiny_lm("gpt2", fps=25.0)
    with pytest.raises(ValueError, match=r"fps: expected 30 \(the frame rate vq.config.fps was trained at\), got 25"):
        StreamingListener(lm25, vq, beta)
    vq = tiny_vq("adaln", fps=25.0)
    sl = StreamingListener(lm25, vq, beta)
    assert sl.fps == 25.0
    # 25 fps: step i spans (8 i / 25, 8 (i + 1) / 25] s, so SA tokens [16 i, 16 (i + 1)) at 50/s
    assert [sl.sa_range(i) for i in range(3)] == [(0, 16), (16, 32), (32, 48)]
    with pytest.raises(ValueError, match=r"fps: expected 25 .* got 30"):
        StreamingListener(lm25, vq, beta, fps=30.0)


def test_progress_and_codes(lm):
    seg = speaker_segment(2.0, seed=9)
    sl = StreamingListener(lm, tiny_vq("adaln"), seg.listener_beta, history_words=seg.history_words)
    assert sl.progress() == dict(frames=0, steps=0, sa_tokens=0, last_word_end=0.0, emitted=0)
    assert [sl.sa_range(i) for i in range(3)] == [(0, 13), (13, 26), (26, 40)]   # 30 fps: 13.33 tokens/step
    sl.push(emotion=seg.emotion[:20], sa_tokens=seg.sa_tokens[:30],
            words=[w for w in seg.words if w.end <= 20 / 30])
    p = sl.progress()
    assert (p["frames"], p["steps"], p["sa_tokens"]) == (20, 2, 30)     # 20 frames: 2 whole steps of 8
    assert len(sl.codes()) == 2 and sl.codes(since=1) == sl.codes()[1:]
    with pytest.raises(ValueError, match=r"since \(stream 0\): expected a step index in \[0, 2\]"):
        sl.codes(since=3)


def test_one_protocol_for_both_generators(lm):
    """StreamingListener and StreamingARIG take the same pushes (``ListenerStream``): one driver
    runs either; ``motion`` advances StreamingListener's clock exactly as the emotion rows do."""
    from minilisten.arig import ARIG, ARIGConfig, arig_generate
    from minilisten.streaming import ListenerStream, StreamingARIG

    seg = speaker_segment(3.0, seed=2)
    seg = seg.replace(speaker_motion=np.random.default_rng(0).normal(0, 0.3, seg.speaker_motion.shape))
    pushes, f = [], 0
    for p in chunks(seg, seed=2):
        n = len(p["emotion"])
        pushes.append(dict(p, motion=seg.speaker_motion[f:f + n]))
        f += n

    def listen(stream: ListenerStream, pushes) -> np.ndarray:
        out = [stream.push(**p) for p in pushes]
        return np.concatenate(out + [stream.flush()])

    torch.manual_seed(0)
    arig = ARIG(ARIGConfig(d_model=16, n_head=2, d_ff=32, depth=2, window=6, diff_width=16, word_buckets=64,
                           sample_steps=2, diff_mul=2, n_sa=lm.vocab.n_sa)).eval()
    streams = {"lr": StreamingListener(lm, tiny_vq("adaln"), seg.listener_beta, history_words=seg.history_words),
               "arig": StreamingARIG(arig, seg.listener_beta, seed=5, history_words=seg.history_words)}
    for name, s in streams.items():
        assert isinstance(s, ListenerStream) and s.fps == seg.fps, name
        # rows that disagree: refused, naming the field, and the stream stays as it was
        with pytest.raises(ValueError, match="emotion"):
            s.push(motion=seg.speaker_motion[:5], emotion=seg.emotion[:4])
        with pytest.raises(ValueError, match="motion"):
            s.push(motion=np.zeros((3, 55)), emotion=seg.emotion[:3])
        got = listen(s, pushes)
        assert got.shape[1] == 56 and np.isfinite(got).all(), name
        s.reset()
        np.testing.assert_array_equal(listen(s, pushes), got)   # reset: a new, identical stream
    # the LR-token model: motion= is only the clock, so the frames equal the emotion-driven stream's
    streams["lr"].reset()
    lr = listen(streams["lr"], pushes)
    streams["lr"].reset()
    np.testing.assert_array_equal(listen(streams["lr"], [{k: v for k, v in p.items() if k != "motion"}
                                                         for p in pushes]), lr)
    assert len(lr) == R * (seg.T // R)
    # ARIG: one frame per speaker frame, equal to offline generation with the same seed
    streams["arig"].reset()
    np.testing.assert_allclose(listen(streams["arig"], pushes), arig_generate(arig, [seg], seed=5)[0], atol=1e-5)


# ----------------------------------------------------------------------------- one core, hostile input
def _tiny_arig(n_sa=1024):
    from minilisten.arig import ARIG, ARIGConfig
    torch.manual_seed(0)
    m = ARIG(ARIGConfig(d_model=16, n_head=2, d_ff=32, depth=2, window=6, diff_width=16, word_buckets=64,
                        sample_steps=2, diff_mul=2, n_sa=n_sa)).eval()
    with torch.no_grad():   # DiT-style zero inits make many paths (beta's among them) identity: perturb all weights
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _with_motion(seg, pushes):
    out, f = [], 0
    for p in pushes:
        n = len(p["emotion"])
        out.append(dict(p, motion=seg.speaker_motion[f:f + n]))
        f += n
    return out


HOSTILE = [
    (dict(words=[("x", 0, 10 ** 400)]), r"words\[0\] \(stream 1\) \('x'\): end: expected a finite number of seconds"),
    (dict(words=[("x", 0, 0)] * 300), r"words \(stream 1\): expected at most 256 words"),
    (dict(sa_tokens=np.array([2 ** 64], dtype=object)), r"sa_tokens \(stream 1\): expected a 1-D integer array"),
    (dict(sa_tokens=np.array([2 ** 64 - 1], np.uint64)), r"sa_tokens \(stream 1\): expected token ids in \[0, 1024\)"),
    (dict(motion=np.full((2, 56), 1e30), emotion=np.full((2, 8), 1 / 8)), r"motion \(stream 1\): expected finite"),
    (dict(motion=np.zeros((2, 56)), emotion=np.full((2, 8), 1 / 8), extra=1), r"chunks\[1\]: expected a dict"),
    (dict(motion=np.zeros((40, 56)), emotion=np.full((40, 8), 1 / 8)), r"motion \(stream 1\): expected at most "
                                                                        r"max_push_frames=30"),
]


@pytest.mark.parametrize("kind", ["lr", "arig"])
def test_hostile_chunk_never_reaches_another_stream(lm, kind):
    """push_many with a well-formed and a hostile chunk per round: the hostile one is returned as a
    UserError naming its field, its stream stays as it was, and the good stream's frames equal a
    solo run's bit for bit."""
    from minilisten.errors import UserError
    from minilisten.streaming import StreamingARIG
    seg = speaker_segment(3.0, seed=12)
    seg = seg.replace(speaker_motion=np.random.default_rng(1).normal(0, 0.3, seg.speaker_motion.shape))
    pushes = _with_motion(seg, chunks(seg, seed=12, max_frames=12))
    model = _tiny_arig() if kind == "arig" else None

    def make(n):
        if kind == "arig":
            return StreamingARIG(model, seg.listener_beta, n_streams=n, seed=4, history_words=seg.history_words,
                                 max_push_frames=30)
        return StreamingListener(lm, tiny_vq("adaln"), seg.listener_beta, n_streams=n,
                                 history_words=seg.history_words, max_push_frames=30)
    solo = make(1)
    want = np.concatenate([solo.push(**p) for p in pushes] + [solo.flush()])
    sl = make(2)
    got = []
    for i, p in enumerate(pushes):
        bad, msg = HOSTILE[i % len(HOSTILE)]
        before = copy.deepcopy(sl.streams[1])
        out = sl.push_many({0: p, 1: bad})
        got.append(out[0])
        assert isinstance(out[1], UserError), out[1]
        assert re.search(msg, str(out[1])), (str(out[1]), msg)
        assert sl.streams[1].frames == before.frames and sl.streams[1].done == before.done
    got.append(sl.flush(0))
    np.testing.assert_array_equal(np.concatenate(got), want)
    with pytest.raises(UserError, match=r"stream: expected an index in \[0, 2\)"):
        sl.push(stream=5, **pushes[0])
    assert isinstance(sl.push_many({7: pushes[0]})[7], UserError)


def test_beta_bounds_and_nonfinite_outputs_refused(lm):
    """set_beta refuses values beyond float32; a push whose frames come out non-finite is refused and
    its stream rolled back (an ARIG model whose weights are NaN)."""
    from minilisten.errors import UserError
    from minilisten.streaming import StreamingARIG
    seg = speaker_segment(1.0, seed=13)
    sl = StreamingListener(lm, tiny_vq("adaln"), seg.listener_beta)
    for beta, msg in (([1e300] * 100, r"finite values with \|x\| <= 3.403e\+38, got max \|x\| = 1e\+300"),
                      ([float("nan")] * 100, "finite values"),
                      ([10 ** 400] * 100, r"numbers of shape \(100,\), got list"),
                      (np.zeros(99), r"numbers of shape \(100,\), got shape \(99,\)")):
        with pytest.raises(UserError, match=f"beta: expected {msg}"):
            sl.set_beta(beta)
    model = _tiny_arig()
    with torch.no_grad():   # a broken model (the frame bound keeps finite outputs finite, not NaN ones)
        for p in model.parameters():
            p.fill_(float("nan"))
    sa = StreamingARIG(model, seg.listener_beta, seed=0)
    p = _with_motion(seg, chunks(seg, seed=13))[0]
    with pytest.raises(UserError, match=r"push \(stream 0\): expected finite listener frames"):
        sa.push(**p)
    assert (sa.streams[0].frames, sa.streams[0].done, sa.streams[0].st) == (0, 0, None)


@pytest.mark.parametrize("kind", ["lr", "arig"])
def test_failed_shared_forward_is_retried_per_stream(lm, kind, monkeypatch):
    """An exception inside the shared decode (a bug triggered by one stream's input) reaches that
    stream alone: the others are decoded again on their own and equal their solo runs."""
    from minilisten.streaming import StreamingARIG
    segs = [speaker_segment(2.0, seed=20 + k) for k in range(2)]
    pushes = [_with_motion(s, chunks(s, seed=k, max_frames=12)) for k, s in enumerate(segs)]
    model = _tiny_arig() if kind == "arig" else None
    make = (lambda n: StreamingARIG(model, segs[0].listener_beta, n_streams=n, seed=0)) if kind == "arig" else \
        (lambda n: StreamingListener(lm, tiny_vq("adaln"), segs[0].listener_beta, n_streams=n))
    solo = make(1)
    want = np.concatenate([solo.push(**p) for p in pushes[0]])
    sl = make(2)
    real = sl._advance

    def boom(todo, final):   # stream 1's input breaks the decoder
        if 1 in todo:
            raise RuntimeError("decoder bug")
        return real(todo, final)
    monkeypatch.setattr(sl, "_advance", boom)
    got = []
    for i, a in enumerate(pushes[0]):
        out = sl.push_many({0: a, 1: pushes[1][i % len(pushes[1])]})   # stream 1 is put back each time
        assert isinstance(out[1], RuntimeError if i == 0 else Exception) and sl.streams[1].frames == 0
        got.append(out[0])
    assert np.concatenate(got).shape == want.shape
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-5)


def test_parse_push_bounds_numbers():
    """The wire format: every number bounded before use, the error names the field."""
    import json

    from minilisten.streaming import ProtocolError, parse_push
    ok = parse_push(json.loads('{"type": "push", "frames": 2, "emotion": [[0.125, 0.125, 0.125, 0.125, 0.125, 0.125, '
                               '0.125, 0.125]], "words": [["a", 0, 0.05]], "sa_tokens": [1, 2]}'))
    assert ok["words"] == [Word("a", 0.0, 0.05)] and ok["sa_tokens"].dtype == np.int64 and ok["frames"] == 2
    bad = [
        ({"words": [["x", 0, 10 ** 400]]}, "words[0]"),
        ({"sa_tokens": [2 ** 64]}, "sa_tokens"),
        ({"frames": 2 ** 63}, "frames"),
        ({"motion": [[1e30] * 56]}, "motion"),
        ({"emotion": [[1e39] * 8]}, "emotion"),
        ({"emotion": [[10 ** 400] * 8]}, "emotion"),
        ({"audio": [1.0], "sample_rate": 10 ** 30}, "sample_rate"),
        ({"motion": [[0.0] * 56], "frames": 1}, "frames"),
    ]
    for fields, name in bad:
        with pytest.raises(ProtocolError) as e:
            parse_push({"type": "push", **fields}, "arig" if name == "frames" and "motion" in fields else "lr-token")
        assert e.value.field == name, (fields, e.value)


def test_arig_streams_batched_equal_solo():
    """StreamingARIG with n_streams: three streams pushed together (one batched frame per tick) equal
    their solo runs with the same seeds to float rounding; a stream stepped alone is bit-identical;
    reset takes a new seed."""
    from minilisten.streaming import StreamingARIG
    model = _tiny_arig()
    segs = [speaker_segment(1.5, seed=40 + k) for k in range(3)]
    segs = [s.replace(speaker_motion=np.random.default_rng(k).normal(0, 0.5, s.speaker_motion.shape))
            for k, s in enumerate(segs)]
    pushes = [_with_motion(s, chunks(s, seed=50 + k, max_frames=9)) for k, s in enumerate(segs)]

    def solo(k, seed):
        sa = StreamingARIG(model, segs[k].listener_beta, seed=seed, history_words=segs[k].history_words)
        return np.concatenate([sa.push(**p) for p in pushes[k]] + [sa.flush()])
    ms = StreamingARIG(model, np.zeros(100), n_streams=4, seed=0)
    widths, frame = [], ms._frame
    ms._frame = lambda m, st, inp, noise, steps: widths.append(len(noise)) or frame(m, st, inp, noise, steps)
    for b, s in enumerate(segs):
        ms.reset(b, s.history_words, seed=b)
        ms.set_beta(s.listener_beta, b)
    n = min(map(len, pushes))
    got = [[] for _ in segs]
    for i in range(n):
        out = ms.push_many({b: pushes[b][i] for b in range(3)})
        for b in range(3):
            got[b].append(out[b])
    assert max(widths) == 3 and len(widths) < sum(widths)   # the streams' frames shared forwards
    for b in range(3):   # the rest stream by stream
        got[b] += [ms.push(stream=b, **p) for p in pushes[b][n:]] + [ms.flush(b)]
        want = solo(b, seed=b)   # batched matmuls round differently: ~1e-6 relative, growing through the history
        np.testing.assert_allclose(np.concatenate(got[b]), want, atol=1e-5 * np.abs(want).max())
    ms.reset(3, segs[0].history_words, seed=3)
    ms.set_beta(segs[0].listener_beta, 3)
    alone = np.concatenate([ms.push(stream=3, **p) for p in pushes[0]] + [ms.flush(3)])
    np.testing.assert_array_equal(alone, solo(0, seed=3))
    for bad in (-1, 1.5, True, 2 ** 63):   # refused by reset and by the constructor alike
        with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*63\)"):
            ms.reset(0, seed=bad)
        with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*63\)"):
            StreamingARIG(ms.model, segs[0].listener_beta, seed=bad)
    # set_beta mid-stream: the next frames use the new identity (and the stream stays transactional)
    ms.reset(3, segs[0].history_words, seed=3)
    k = len(pushes[0]) // 2
    first = [ms.push(stream=3, **p) for p in pushes[0][:k]]
    ms.set_beta(-segs[0].listener_beta, 3)
    rest = np.concatenate([ms.push(stream=3, **p) for p in pushes[0][k:]])
    np.testing.assert_array_equal(np.concatenate(first), alone[:sum(map(len, first))])
    assert rest.shape == alone[sum(map(len, first)):].shape
    assert np.abs(rest - alone[sum(map(len, first)):]).max() > 1e-4


def test_step_too_long_for_the_context_is_refused_alone(lm):
    """A chunk whose step cannot fit the LM context is refused (UserError naming the stream), its stream
    unchanged; the other stream of the same push_many still equals its solo run."""
    from minilisten.errors import UserError
    seg = speaker_segment(2.0, seed=30)
    pushes = chunks(seg, seed=30, max_frames=12)
    make = lambda n: StreamingListener(lm, tiny_vq("adaln"), seg.listener_beta, n_streams=n, max_len=48,  # noqa: E731
                                       history_words=seg.history_words)
    solo = make(1)
    want = np.concatenate([solo.push(**p) for p in pushes] + [solo.flush()])
    sl = make(2)
    flood = dict(emotion=seg.emotion[:8], sa_tokens=seg.sa_tokens[:14],
                 words=[Word(f"w{k}", 0.0, 0.01 * k) for k in range(1, 26)])
    got = []
    for i, p in enumerate(pushes):
        out = sl.push_many({0: p, 1: flood} if i == 0 else {0: p})
        got.append(out[0])
        if i == 0:
            assert isinstance(out[1], UserError) and re.search(r"push \(stream 1\): step 0", str(out[1])), out[1]
            assert sl.progress(1)["frames"] == 0
    got.append(sl.flush(0))
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_sampled_stream_equals_offline_per_seed(lm, arch, monkeypatch):
    """Sampling (issue 25): each stream draws from its own seeded generator, so a stream equals the offline
    reference decoder with the same seed, alone or batched with others, after a reset(seed=) and after a push
    that failed after its draws (rolled back with the stream's generator)."""
    from minilisten.generate import Sampling
    model, max_len = (lm, None) if arch == "gpt2" else (tiny_lm("neox"), 96)
    sampling = Sampling(temperature=1.5, top_p=0.95)
    segs = [speaker_segment(4.0, seed=30 + k) for k in range(2)]
    segs[1] = segs[1].replace(history_words=segs[0].history_words)
    vq = tiny_vq("adaln")

    def offline(seg, seed):
        h, s = model.speaker_steps(seg)
        return generate_nocache(model, [h], [s], max_len, sampling=sampling, seeds=[seed])[0].tolist()
    want = [offline(segs[0], 7), offline(segs[1], 8)]
    assert want[0] != offline(segs[0], 8)                    # the seed matters
    sl = StreamingListener(model, vq, segs[0].listener_beta, n_streams=2, history_words=segs[0].history_words,
                           sampling=sampling, seed=7, max_len=max_len)
    sl.reset(1, seed=8)
    pushes = [chunks(s, seed=40 + k) for k, s in enumerate(segs)]
    codes = [[], []]
    for i in range(max(map(len, pushes))):
        sl.push_many({b: pushes[b][i] for b in range(2) if i < len(pushes[b])})
        for b in range(2):
            new_codes(sl, codes[b], b)
    assert codes == want
    sl.reset(0)                                              # the seed is kept
    decode, calls = vq.decode, []

    def fail_once(*a, **k):                                  # the first decode fails after the LM drew its codes
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return decode(*a, **k)
    monkeypatch.setattr(vq, "decode", fail_once)
    got = []
    for p in pushes[0]:
        out = sl.push_many({0: p})[0]
        if isinstance(out, Exception):
            assert "injected" in str(out)
            out = sl.push_many({0: p})[0]
        new_codes(sl, got)
    assert len(calls) > 1 and got == want[0]
