"""Speaker tokens: word-to-step rule, SA steps and tokenizers, emotion tokens, readers, errors."""
import json
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from minilisten.data.segment import Segment, Word
from minilisten.speaker import (FEATURES, AcousticTokenizer, SpeechTokenizerSA, acoustic_features, check_modalities,
                                emotion_tokens, read_emoca_emotions, read_sa_tokens, read_whisper_words, sa_step_bounds,
                                sa_steps, speaker_tokens, word_step, word_steps)

FPS, R = 30.0, 8


def _probs(T, cls, strength=0.9):
    p = np.full((T, 8), (1 - strength) / 7, np.float32)
    p[np.arange(T), cls] = strength
    return p


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
    b = sa_step_bounds(30, FPS, R, 50.0)
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


def test_read_sa_tokens_formats(tmp_path):
    codes = np.arange(24).reshape(8, 3) % 5              # SpeechTokenizer-like (n_q, M)
    np.save(tmp_path / "c.npy", codes)
    assert np.array_equal(read_sa_tokens(tmp_path / "c.npy"), codes[1])
    assert np.array_equal(read_sa_tokens(tmp_path / "c.npy", layer=0), codes[0])
    np.save(tmp_path / "c3.npy", codes[:, None, :])
    assert np.array_equal(read_sa_tokens(tmp_path / "c3.npy"), codes[1])
    (tmp_path / "c.txt").write_text("1 2 3\n4")
    assert read_sa_tokens(tmp_path / "c.txt").tolist() == [1, 2, 3, 4]
    torch.save({"codes": torch.tensor([5, 6])}, tmp_path / "c.pt")
    assert read_sa_tokens(tmp_path / "c.pt").tolist() == [5, 6]
    np.savez(tmp_path / "c.npz", codes=np.array([7, 8]))
    assert read_sa_tokens(tmp_path / "c.npz").tolist() == [7, 8]
    with pytest.raises(ValueError, match="layer 9 requested, the file has 8 RVQ layers"):
        read_sa_tokens(tmp_path / "c.npy", layer=9)
    with pytest.raises(ValueError, match=r"expected ids in \[0, 3\)"):
        read_sa_tokens(tmp_path / "c.npy", n_sa=3)
    np.save(tmp_path / "f.npy", np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="integer token ids"):
        read_sa_tokens(tmp_path / "f.npy")
    with pytest.raises(FileNotFoundError):
        read_sa_tokens(tmp_path / "missing.npy")


def _tone(f0, seconds=1.0, sr=16000, harmonics=4, amp=0.3):
    t = np.arange(int(seconds * sr)) / sr
    return amp * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, harmonics + 1))


def test_acoustic_features_rate_and_pitch():
    w = _tone(200.0, 1.0)
    f = acoustic_features(w, 16000)
    assert f.shape == (50, len(FEATURES)) and f.dtype == np.float32
    f0 = np.exp(f[5:, FEATURES.index("log_f0")])       # skip the zero-padded first frames
    assert np.all(np.abs(f0 / 200.0 - 1) < 0.05), f0
    assert np.all(f[5:, FEATURES.index("voicing")] > 0.8)
    # resampling: the same tone at 48 kHz gives the same number of 50 Hz frames and pitch
    f48 = acoustic_features(_tone(200.0, 1.0, sr=48000), 48000)
    assert f48.shape[0] == 50
    assert np.all(np.abs(np.exp(f48[5:, FEATURES.index("log_f0")]) / 200 - 1) < 0.05)
    silence = acoustic_features(np.zeros(3200), 16000)
    assert np.all(silence[:, FEATURES.index("log_f0")] == 0)
    with pytest.raises(ValueError, match=r"mono waveform of shape \(N,\)"):
        acoustic_features(np.zeros((2, 1600)), 16000)
    with pytest.raises(ValueError, match="float samples"):
        acoustic_features(np.zeros(1600, np.int16), 16000)


def test_acoustic_tokenizer_tones_save_load(tmp_path):
    rng = np.random.default_rng(0)
    low, high = _tone(110.0), _tone(320.0)
    noise = 0.1 * rng.standard_normal(16000)
    tok = AcousticTokenizer.fit([low, high, noise, np.zeros(8000)], k=8, iters=10)
    assert tok.k == 8
    t_low, t_high = tok.encode(low), tok.encode(high)
    assert t_low.shape == (50,) and t_low.dtype == np.int64 and t_low.max() < 8
    # steady parts of different pitches map to disjoint token sets
    assert not set(t_low[5:].tolist()) & set(t_high[5:].tolist())
    tok.save(tmp_path / "sa")
    tok2 = AcousticTokenizer.load(tmp_path / "sa")
    assert np.array_equal(tok2.encode(high), t_high)
    with pytest.raises(ValueError, match="at least k=64 feature frames"):
        AcousticTokenizer.fit([np.zeros(3200)], k=64)


def test_acoustic_tokenizer_on_espeak_speech(tmp_path):
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        pytest.skip("espeak-ng not installed")
    from scipy.io import wavfile
    waves = []
    for i, text in enumerate(["do you know what I mean", "I just love waiting in line"]):
        out = tmp_path / f"s{i}.wav"
        subprocess.run([exe, "-w", str(out), text], check=True, capture_output=True)
        sr, w = wavfile.read(out)
        waves.append((w.astype(np.float64) / 32768.0, sr))
    tok = AcousticTokenizer.fit([w for w, _ in waves], sample_rate=waves[0][1], k=16, iters=5)
    w, sr = waves[0]
    t = tok.encode(w, sr)
    assert t.shape == (len(w) * 50 // sr,)
    assert len(np.unique(t)) > 3          # speech is not one token
    voicing = acoustic_features(w, sr)[:, FEATURES.index("voicing")]
    assert (voicing > 0.45).mean() > 0.2  # voiced frames found in real speech


def test_speechtokenizer_adapter_missing_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "speechtokenizer", None)
    with pytest.raises(ImportError, match="pip install speechtokenizer"):
        SpeechTokenizerSA(tmp_path / "config.json", tmp_path / "ckpt.pt")


def test_speechtokenizer_adapter_with_fake_package(monkeypatch, tmp_path):
    class FakeST(torch.nn.Module):
        sample_rate = 16000

        @classmethod
        def load_from_checkpoint(cls, config_path, ckpt_path):
            cls.loaded = (config_path, ckpt_path)
            return cls()

        def encode(self, x):                     # (B, 1, N) -> (n_q, B, N // 320)
            assert x.dim() == 3 and x.shape[:2] == (1, 1)
            M = x.shape[-1] // 320
            return torch.arange(8)[:, None, None].expand(8, 1, M) * 10 + torch.arange(M) % 3
    monkeypatch.setitem(sys.modules, "speechtokenizer", types.SimpleNamespace(SpeechTokenizer=FakeST))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "ckpt.pt").write_bytes(b"")
    st = SpeechTokenizerSA(tmp_path / "config.json", tmp_path / "ckpt.pt")
    codes = st.encode(np.zeros(16000 * 3, np.float32), 48000)   # resampled to 16 kHz first
    assert codes.tolist() == (10 + np.arange(50) % 3).tolist()
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        SpeechTokenizerSA(tmp_path / "config.json", tmp_path / "nope.pt")


# ----------------------------------------------------------------------------- emotion
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


def test_read_emoca_emotions(tmp_path):
    p = _probs(10, np.arange(10) % 8)
    np.save(tmp_path / "p.npy", p)
    assert np.allclose(read_emoca_emotions(tmp_path / "p.npy"), p)
    logits = np.log(p) + 3.0                                   # EMOCA's expr_classification: logits
    torch.save({"expr_classification": torch.from_numpy(logits), "valence": torch.zeros(10)}, tmp_path / "e.pt")
    assert np.allclose(read_emoca_emotions(tmp_path / "e.pt"), p, atol=1e-5)
    np.save(tmp_path / "l.npy", logits)
    assert np.allclose(read_emoca_emotions(tmp_path / "l.npy", logits=True), p, atol=1e-5)
    with pytest.raises(ValueError, match="probabilities >= 0.*logits=True"):
        read_emoca_emotions(tmp_path / "l.npy")
    np.save(tmp_path / "w.npy", np.full((4, 6), 1 / 6))
    with pytest.raises(ValueError, match=r"expected shape \(T, 8\), got \(4, 6\)"):
        read_emoca_emotions(tmp_path / "w.npy")
    with pytest.raises(FileNotFoundError):
        read_emoca_emotions(tmp_path / "nothing")


def test_read_emoca_emotions_directory(tmp_path):
    import pickle
    p = _probs(12, np.arange(12) % 8)
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(12):                       # numeric order: frame_10 after frame_9
        with open(d / f"frame_{i + 1:d}.pkl", "wb") as f:
            pickle.dump({"expr_classification": np.log(p[i])[None]}, f)
    assert np.allclose(read_emoca_emotions(d), p, atol=1e-5)


# ----------------------------------------------------------------------------- Whisper
WHISPER = {"text": " Hello there. Do you know?", "segments": [
    {"id": 0, "start": 9.0, "end": 10.4, "text": " Hello there.", "words": [
        {"word": " Hello", "start": 9.0, "end": 9.4, "probability": 0.9},
        {"word": " there.", "start": 9.5, "end": 10.2, "probability": 0.8}]},
    {"id": 1, "start": 10.4, "end": 12.0, "text": " Do you know?", "words": [
        {"word": " Do", "start": 10.4, "end": 10.6}, {"word": " you", "start": 10.6, "end": 10.9},
        {"word": " know?", "start": 11.0, "end": 11.6}]}]}


def test_read_whisper_words(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(WHISPER))
    words, hist = read_whisper_words(tmp_path / "t.json", clip_start=10.0, clip_end=11.0)
    assert [(w.text, round(w.start, 3), round(w.end, 3)) for w in words] == [
        ("there.", 0.0, 0.2), ("Do", 0.4, 0.6), ("you", 0.6, 0.9)]          # "there." straddles the start
    assert [(w.text, round(w.end, 3)) for w in hist] == [("Hello", -0.6)]
    all_words, none = read_whisper_words(WHISPER)
    assert [w.text for w in all_words] == ["Hello", "there.", "Do", "you", "know?"] and none == []
    seg = Segment(np.zeros((30, 56)), np.zeros((30, 56)), 30.0, words=words, history_words=hist)
    assert speaker_tokens(seg, "W").words[0][0].text == "there."


def test_read_whisper_words_errors():
    bad = {"segments": [{"words": [{"word": " hi", "start": 1.0, "end": None}]}]}
    with pytest.raises(ValueError, match=r"segments\[0\].words\[0\] \(' hi'\): expected 'start' and 'end'"):
        read_whisper_words(bad)
    with pytest.raises(ValueError, match="word_timestamps=True"):
        read_whisper_words({"segments": [{"text": "hi"}]})
    with pytest.raises(ValueError, match="'segments'"):
        read_whisper_words({"text": "hi"})


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
    seg = _segment()
    seg.words = [Word("late", 0.5, 1.5)]          # mutated after validation: ends after the clip (0.8 s)
    with pytest.raises(ValueError, match=r"words\[0\] \('late'\): expected end in \[0, 0.800\]"):
        speaker_tokens(seg, "W")
    with pytest.raises(ValueError, match=r"expected end <= 0.800 s \(clip end\)"):
        _segment(words=[Word("late", 0.5, 1.5)])   # Segment itself rejects it at construction
    with pytest.raises(ValueError, match=r"sa_tokens: expected token ids in \[0, 4\)"):
        speaker_tokens(_segment(), "SA", n_sa=4)
    seg = _segment()
    seg.emotion = np.full((24, 8), 0.5, np.float32)
    with pytest.raises(ValueError, match="rows summing to 1"):
        speaker_tokens(seg, "emo")
