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
from minilisten.errors import UserError
from minilisten.speaker import (
    FEATURES,
    AcousticTokenizer,
    MelUnits,
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
    with pytest.raises(ValueError, match=r"expected token ids in \[0, 3\)"):
        read_sa_tokens(tmp_path / "c.npy", n_sa=3)
    np.save(tmp_path / "f.npy", np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="expected a 1-D integer array"):
        read_sa_tokens(tmp_path / "f.npy")
    np.save(tmp_path / "4d.npy", np.zeros((2, 2, 2, 2), np.int64))
    with pytest.raises(ValueError, match=r"expected a 1-D integer array, got shape \(2, 2, 2, 2\)"):
        read_sa_tokens(tmp_path / "4d.npy")
    with pytest.raises(UserError, match="no file"):
        read_sa_tokens(tmp_path / "missing.npy")
    (tmp_path / "c.wav").write_bytes(b"RIFF")
    with pytest.raises(UserError, match="expected one of .npy"):
        read_sa_tokens(tmp_path / "c.wav")


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
    with pytest.raises(UserError, match="ckpt_path"):
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
    with pytest.raises(ValueError, match=r"of shape \(T, 8\).*got \(4, 6\)"):
        read_emoca_emotions(tmp_path / "w.npy")
    with pytest.raises(UserError, match="no file"):
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
    words = read_whisper_words(tmp_path / "t.json")
    assert [(w.text, w.start, w.end) for w in words] == [
        ("Hello", 9.0, 9.4), ("there.", 9.5, 10.2), ("Do", 10.4, 10.6), ("you", 10.6, 10.9), ("know?", 11.0, 11.6)]
    assert read_whisper_words(WHISPER) == words == read_whisper_words(WHISPER["segments"])
    assert read_whisper_words({"word_segments": WHISPER["segments"][1]["words"]}) == words[2:]    # WhisperX
    # the clip [10 s, 11 s) of a 12 s recording: Segment.window re-bases and splits words and history
    seg = Segment(np.zeros((360, 56)), np.zeros((360, 56)), 30.0, words=words).window(300, 30)
    assert [(w.text, round(w.start, 3), round(w.end, 3)) for w in seg.words] == [
        ("there.", 0.0, 0.2), ("Do", 0.4, 0.6), ("you", 0.6, 0.9)]          # "there." straddles the start
    assert [(w.text, round(w.end, 3)) for w in seg.history_words] == [("Hello", -0.6)]
    assert speaker_tokens(seg, "W").words[0][0].text == "there."


def test_read_whisper_words_errors():
    bad = {"segments": [{"words": [{"word": " hi", "start": 1.0, "end": None}]}]}
    with pytest.raises(UserError, match=r"segments\[0\].words\[0\] \(' hi'\): end: expected a number of seconds"):
        read_whisper_words(bad)
    for start, end in ((float("nan"), 1.0), (0.0, float("inf")), ("0", 1.0)):
        with pytest.raises(UserError, match="expected (a finite number|a number) of seconds"):
            read_whisper_words({"segments": [{"words": [{"word": "hi", "start": start, "end": end}]}]})
    with pytest.raises(ValueError, match="word_timestamps=True"):
        read_whisper_words({"segments": [{"text": "hi"}]})
    with pytest.raises(ValueError, match="'segments'"):
        read_whisper_words({"text": "hi"})


def test_read_whisper_words_repairs_asr_timings(caplog):
    """ASR words as they come: overlapping, zero-length, out of order, start after end, no start (issue 23)."""
    words = [{"word": " a", "start": 0.0, "end": 0.5}, {"word": " b", "start": 0.2, "end": 0.8},   # overlaps a
             {"word": " c", "start": 0.8, "end": 0.8},                                             # zero-length
             {"word": " e", "start": 1.5, "end": 2.0}, {"word": " d", "start": 1.0, "end": 1.2},   # out of order
             {"word": " f", "start": 2.6, "end": 2.4}, {"word": " g", "end": 3.0}]                 # start > end; none
    with caplog.at_level("WARNING", logger="minilisten"):
        got = read_whisper_words({"segments": [{"words": words}]})
    assert [(w.text, w.start, w.end) for w in got] == [
        ("a", 0.0, 0.5), ("b", 0.5, 0.8), ("c", 0.8, 0.8), ("d", 1.0, 1.2), ("e", 1.5, 2.0), ("f", 2.4, 2.4),
        ("g", 2.7, 3.0)]
    # changed: b (start), d (ends before e), f (start); c, g (estimated start) are not counted
    assert [r.getMessage() for r in caplog.records if "repaired" in r.getMessage()] == [
        "whisper transcript: repaired 3 word(s): put in order by end time, starts clamped to the previous word's end"]
    Segment(np.zeros((120, 56)), np.zeros((120, 56)), 30.0, words=got)     # a Segment accepts them
    caplog.clear()
    with caplog.at_level("WARNING", logger="minilisten"):
        read_whisper_words(WHISPER)
    assert not caplog.records                                                # nothing to repair, nothing said


# ----------------------------------------------------------------------------- MelUnits (Learning2Listen mel)
def _mel_clusters(n_per=60, n_mels=8, seed=0):
    """Four well-separated clusters of mel frames (centres ~N(0, 10) in every bin, noise 0.3) and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (4, n_mels))
    labels = np.repeat(np.arange(4), n_per)
    rng.shuffle(labels)
    return (centres[labels] + rng.normal(0, 0.3, (len(labels), n_mels))).astype(np.float32), labels


def _same_partition(a, b):
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_mel_units_recover_scipy_kmeans_partition():
    from scipy.cluster.vq import kmeans2
    mel, labels = _mel_clusters()
    units = MelUnits.fit([mel[:100], mel[100:]], n_units=4, seed=0)
    got = units.units(mel)
    _, ref = kmeans2(mel.astype(np.float64), 4, minit="++", seed=1)
    assert _same_partition(got, ref) and _same_partition(got, labels)
    again = MelUnits.fit([mel[:100], mel[100:]], n_units=4, seed=0)        # deterministic for a seed
    assert torch.equal(again.codebook, units.codebook)
    sampled = MelUnits.fit([mel[:100], mel[100:]], n_units=4, seed=0, max_points=120)   # a sample of the frames
    assert _same_partition(sampled.units(mel), labels)


def test_mel_units_token_rate_by_hand():
    rng = np.random.default_rng(0)
    frames = 10.0 * np.eye(20, dtype=np.float32)                          # 20 frames, each its own cluster
    units = MelUnits.fit([frames + rng.normal(0, 0.1, frames.shape).astype(np.float32) for _ in range(10)], n_units=20)
    per_frame = units.units(frames)
    assert len(set(per_frame.tolist())) == 20
    # 3 video frames at 30 fps = 12 mel frames at 120/s = 0.1 s -> floor(0.1 * 50) = 5 SA tokens; token k ends at
    # t = (k + 1) / 50 s and takes the mel frame j whose span (j/120, (j+1)/120] holds t: j = 2, 4, 7, 9, 11
    assert units.tokens(frames[:12], fps=30).tolist() == per_frame[[2, 4, 7, 9, 11]].tolist()
    # 25 fps: 100 mel frames/s, 2 per token: the second of each pair
    assert units.tokens(frames, fps=25).tolist() == per_frame[1:20:2].tolist()
    # 64 frames at 30 fps (a Learning2Listen row): 256 mel frames, floor(64 / 30 * 50) = 106 tokens
    assert units.tokens(np.zeros((256, 20), np.float32), fps=30).shape == (106,)
    assert units.tokens(frames[:2], fps=30).shape == (0,) and units.tokens(frames[:2], fps=30).dtype == np.int64


def test_mel_units_save_load_and_errors(tmp_path):
    mel, _ = _mel_clusters()
    units = MelUnits.fit([mel], n_units=4, seed=3)
    units.save(tmp_path / "mel_units")
    assert sorted(p.name for p in (tmp_path / "mel_units").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "mel_units" / "config.json").read_text())
    assert cfg["format"] == "minilisten.MelUnits" and cfg["n_mels"] == 8 and cfg["mel_per_frame"] == 4
    back = MelUnits.load(tmp_path / "mel_units")
    assert np.array_equal(back.tokens(mel, 30), units.tokens(mel, 30))
    AcousticTokenizer.fit([_tone(110.0), _tone(320.0)], k=4, iters=2).save(tmp_path / "acoustic")
    with pytest.raises(UserError, match="expected a MelUnits"):
        MelUnits.load(tmp_path / "acoustic")
    with pytest.raises(UserError, match=r"features: expected shape \(M, 8\)"):
        units.tokens(mel[:, :5], 30)
    with pytest.raises(UserError, match="mels\\[1\\]: expected finite float mel frames"):
        MelUnits.fit([mel, np.full((4, 8), np.nan, np.float32)], n_units=4)
    with pytest.raises(UserError, match="expected one n_mels"):
        MelUnits.fit([mel, mel[:, :5]], n_units=4)
    with pytest.raises(UserError, match="at least k=500 mel frames"):
        MelUnits.fit([mel], n_units=500)
