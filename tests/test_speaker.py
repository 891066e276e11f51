"""Speaker inputs: SA tokenizers, readers (Whisper words, SA token files, EMOCA emotions), errors.

The rules that assign them to LR steps are tested in test_tokens.py."""
import json
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from conftest import emotion_probs as _probs

from minilisten.data.segment import Segment
from minilisten.speaker import (
    FEATURES,
    AcousticTokenizer,
    SpeechTokenizerSA,
    acoustic_features,
    read_emoca_emotions,
    read_sa_tokens,
    read_whisper_words,
)
from minilisten.tokens import speaker_tokens


# ----------------------------------------------------------------------------- SA
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
