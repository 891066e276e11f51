"""Readers and tokenizers of the speaker's words (W), speech acoustics (SA) and emotion (emo) (paper §3.1); SA:
SpeechTokenizer (RVQ layer 1, 50/s), token files, :class:`AcousticTokenizer` (k-means units of 16 kHz audio) or
:class:`MelUnits` (of Learning2Listen mel frames). Step rules: :mod:`minilisten.tokens`; notes: docs/models.md."""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import safe_pickle
from .data.segment import MEL_PER_FRAME, Word, check_emotion_probs, repair_words, seconds
from .errors import UserError
from .kernels.nearest_code import nearest_code
from .tokens import SA_RATE, check_sa_tokens, sa_bounds, word_step

SA_SAMPLE_RATE = 16000  # SpeechTokenizer / AcousticTokenizer input sample rate
log = logging.getLogger("minilisten")
LOADERS = {".npy": safe_pickle.load_npy, ".npz": safe_pickle.load_npz, ".pt": safe_pickle.load_torch,
           ".pth": safe_pickle.load_torch, ".pkl": safe_pickle.load_pickle, ".pickle": safe_pickle.load_pickle,
           ".txt": lambda p: np.array(Path(p).read_text().split(), dtype=np.int64)}   # pickles: restricted


def read_whisper_words(src) -> list[Word]:
    """The words of a Whisper ``word_timestamps=True`` transcript (a JSON file, its dict or list of segments;
    WhisperX's ``word_segments`` too) at the transcript's times, repaired by ``segment.repair_words``."""
    data = src
    if isinstance(src, (str, os.PathLike)):
        if not Path(src).is_file():
            raise UserError(f"whisper transcript: expected a JSON file, got no file {str(src)!r}")
        data = json.loads(Path(src).read_text(encoding="utf-8"))
    segs = data
    if isinstance(data, dict):
        segs = data.get("segments", [{"words": data["word_segments"]}] if "word_segments" in data else None)
    if not isinstance(segs, list):
        raise UserError("whisper transcript: expected a dict with 'segments' (Whisper) or 'word_segments' (WhisperX), "
                        f"got {type(data).__name__} {sorted(data)[:8] if isinstance(data, dict) else ''}")
    items = []
    for si, seg in enumerate(segs):
        if not isinstance(seg, dict) or "words" not in seg:
            raise UserError(f"whisper transcript: segments[{si}]: expected a 'words' list (transcribe with "
                            "word_timestamps=True), got none")
        for wi, w in enumerate(seg["words"]):
            text = w.get("word", w.get("text")) if isinstance(w, dict) else None
            if text is None:
                raise UserError(f"whisper transcript: segments[{si}].words[{wi}]: expected a dict with 'word', "
                                f"'start', 'end', got {w!r}")
            at = f"whisper transcript: segments[{si}].words[{wi}] ({text!r})"
            start = None if w.get("start") is None else seconds(f"{at}: start", w["start"])
            if text.strip():
                items.append((text.strip(), start, seconds(f"{at}: end", w.get("end"))))
    words, repaired = repair_words(items)
    if repaired:
        log.warning("whisper transcript: repaired %d word(s): put in order by end time, starts clamped to the "
                    "previous word's end", repaired)
    return words


def _load(path, what: str, keys: tuple[str, ...] = ()) -> np.ndarray:
    """The object in a ``LOADERS`` file; of a dict its first entry named in ``keys`` (or its only entry), but an
    EMOCA dict (``expr_classification``) whole."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what}: expected a file, got no file {str(p)!r}")
    if p.suffix.lower() not in LOADERS:
        raise UserError(f"{what} {str(p)!r}: expected one of {', '.join(LOADERS)}, got extension {p.suffix!r}")
    obj = LOADERS[p.suffix.lower()](p)
    if not isinstance(obj, dict) or "expr_classification" in obj:
        return obj
    key = next((k for k in keys if k in obj), None)
    if key is None and len(obj) != 1:
        raise UserError(f"{what} {str(p)!r}: expected an array or a dict with one of {keys}, got keys "
                        f"{sorted(obj)[:10]}")
    return _as_np(obj[key] if key else next(iter(obj.values())))


def _as_np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)


def read_sa_tokens(path, layer: int = 1, n_sa: int | None = None) -> np.ndarray:
    """``(M,)`` int64 tokens from a file of ``(M,)`` or SpeechTokenizer's ``(n_q, [1,] M)`` codes (row ``layer``)."""
    where = f"sa tokens {str(path)!r}"
    a = _as_np(_load(path, "sa tokens", ("codes", "sa_tokens", "tokens")))
    if a.ndim == 3 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        if not 0 <= layer < a.shape[0]:
            raise UserError(f"{where}: layer {layer} requested, the file has {a.shape[0]} RVQ layers")
        a = a[layer]
    if np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    return check_sa_tokens(a, n_sa, where + " (shapes (M,), (n_q, M), (n_q, 1, M))")


def _mono(wav, sr: int, rate: int = SA_SAMPLE_RATE) -> np.ndarray:
    """A mono float waveform ``(N,)`` or ``(1, N)`` -> 1-D float64 at ``rate`` (polyphase resampling)."""
    from scipy.signal import resample_poly
    w = _as_np(wav)
    w = w.reshape(-1) if w.ndim == 2 and 1 in w.shape else w
    if w.ndim != 1:
        raise UserError(f"wav: expected a mono waveform of shape (N,) or (1, N), got {w.shape}; mix channels first")
    if not np.issubdtype(w.dtype, np.floating):
        raise UserError(f"wav: expected float samples in [-1, 1], got dtype {w.dtype}")
    if not (isinstance(sr, (int, np.integer)) and sr > 0):
        raise UserError(f"sample_rate: expected a positive integer, got {sr!r}")
    return resample_poly(w.astype(np.float64), rate, sr)


class SpeechTokenizerSA:
    """SA tokens from SpeechTokenizer (Zhang et al.): RVQ layer ``layer`` (1 = the paper's) of a local checkpoint."""

    def __init__(self, config_path, ckpt_path, layer: int = 1, device: str = "cpu"):
        try:
            from speechtokenizer import SpeechTokenizer
        except ImportError as e:
            raise ImportError("SpeechTokenizerSA needs `pip install speechtokenizer` and a local checkpoint (fnlp/"
                              "SpeechTokenizer); else use AcousticTokenizer or read_sa_tokens") from e
        for name, p in (("config_path", config_path), ("ckpt_path", ckpt_path)):
            if not Path(p).is_file():
                raise UserError(f"SpeechTokenizerSA: {name}: expected a file, got no file {str(p)!r}")
        self.model = SpeechTokenizer.load_from_checkpoint(str(config_path), str(ckpt_path)).to(device).eval()
        self.layer, self.device = layer, device
        self.sample_rate = int(getattr(self.model, "sample_rate", SA_SAMPLE_RATE))

    @torch.no_grad()
    def encode(self, wav, sample_rate: int) -> np.ndarray:
        """``wav``: mono ``(N,)`` float -> ``(M,)`` int64 tokens of RVQ layer ``self.layer``."""
        x = torch.as_tensor(_mono(wav, sample_rate, self.sample_rate), dtype=torch.float32, device=self.device)
        codes = self.model.encode(x[None, None])                                       # (n_q, B=1, M)
        if codes.dim() != 3 or not 0 <= self.layer < codes.shape[0]:
            raise ValueError(f"SpeechTokenizer codes: expected (n_q > {self.layer}, 1, M), got {tuple(codes.shape)}")
        return codes[self.layer, 0].long().cpu().numpy()


_HOP, _WIN = 320, 640  # 20 ms hop (50 Hz) and 40 ms analysis window at 16 kHz
FEATURES = ("log_energy", "log_f0", "voicing", "d_log_energy", "d_log_f0", "zcr", "log_centroid",
            "log_flatness", "rolloff", "mfcc1", "mfcc2", "mfcc3", "mfcc4", "mfcc5", "mfcc6", "mfcc7", "mfcc8")


def acoustic_features(wav, sample_rate: int = SA_SAMPLE_RATE) -> np.ndarray:
    """``FEATURES`` at 50 Hz: ``(N // 320, 17)`` float32 at 16 kHz. Frame ``k`` is the 40 ms ending at
    ``(k + 1) / 50`` s (causal); pitch by normalized autocorrelation in 60-400 Hz (docs/models.md)."""
    from scipy.fft import dct
    w = _mono(wav, sample_rate)
    M = w.size // _HOP
    if M == 0:
        return np.zeros((0, len(FEATURES)), np.float32)
    padded = np.concatenate([np.zeros(_WIN - _HOP), w[:M * _HOP]])
    frames = padded[np.arange(M)[:, None] * _HOP + np.arange(_WIN)[None]]     # (M, 640)
    frames = frames - frames.mean(1, keepdims=True)
    win = np.hanning(_WIN)
    spec = np.abs(np.fft.rfft(frames * win, axis=1)) ** 2 + 1e-10           # (M, 321)
    freqs = np.fft.rfftfreq(_WIN, 1 / SA_SAMPLE_RATE)
    log_e = np.log((frames ** 2).mean(1) + 1e-8)
    # pitch: normalized autocorrelation (Wiener-Khinchin, zero-padded), window taper removed
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames * win, n=2 * _WIN, axis=1)) ** 2, axis=1)[:, :_WIN]
    ac_win = np.fft.irfft(np.abs(np.fft.rfft(win, n=2 * _WIN)) ** 2)[:_WIN]
    ac = ac / np.maximum(ac_win[None], 1e-8)
    lo, hi = SA_SAMPLE_RATE // 400, SA_SAMPLE_RATE // 60
    seg = ac[:, lo:hi + 1]
    # the shortest period within 90% of the best correlation (no sub-octave errors), refined to its peak
    first = np.argmax(seg >= 0.9 * seg.max(1, keepdims=True), axis=1)
    span = np.arange(seg.shape[1])[None]
    near = (span >= first[:, None]) & (span <= (first + (first + lo) // 2)[:, None])
    lag = lo + np.argmax(np.where(near, seg, -np.inf), axis=1)
    voicing = np.clip(ac[np.arange(M), lag] / np.maximum(ac[:, 0], 1e-10), 0, 1)
    voiced = (voicing > 0.45) & (log_e > np.log(1e-6))
    log_f0 = np.where(voiced, np.log(SA_SAMPLE_RATE / lag), 0.0)
    d_e = np.diff(log_e, prepend=log_e[:1])
    d_f0 = np.where(voiced & np.roll(voiced, 1), np.diff(log_f0, prepend=log_f0[:1]), 0.0)
    zcr = (np.abs(np.diff(np.sign(frames), axis=1)) > 0).mean(1)
    p = spec / spec.sum(1, keepdims=True)
    centroid = np.log((p * freqs[None]).sum(1) + 1.0)
    flatness = np.log(np.exp(np.log(spec).mean(1)) / spec.mean(1))
    rolloff = freqs[np.argmax(np.cumsum(p, 1) >= 0.85, axis=1)] / 1000.0
    # MFCC 1-8 of 24 triangular mel bands (HTK mel scale) over 60-7600 Hz
    pts = 700 * (10 ** (np.linspace(2595 * np.log10(1 + 60 / 700), 2595 * np.log10(1 + 7600 / 700), 26) / 2595) - 1)
    lo_f, c, hi_f = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    mel = np.clip(np.minimum((freqs - lo_f) / (c - lo_f), (hi_f - freqs) / (hi_f - c)), 0, None)   # (24, 321)
    mfcc = dct(np.log(spec @ mel.T + 1e-10), type=2, axis=1, norm="ortho")[:, 1:9]
    feats = np.column_stack([log_e, log_f0, voicing, d_e, d_f0, zcr, centroid, flatness, rolloff, mfcc])
    return feats.astype(np.float32)


def kmeans(x: torch.Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ then Lloyd: ``x (N, d)`` -> centroids ``(k, d)``; an emptied cluster restarts at the farthest point."""
    N = x.shape[0]
    g = generator or torch.Generator().manual_seed(0)
    cb = torch.empty(k, x.shape[1])
    cb[0] = x[torch.randint(N, (1,), generator=g)]
    d2 = ((x - cb[0]) ** 2).sum(1)
    for j in range(1, k):                        # k-means++ (D^2 sampling)
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / N)
        cb[j] = x[torch.multinomial(p, 1, generator=g)]
        d2 = torch.minimum(d2, ((x - cb[j]) ** 2).sum(1))
    for _ in range(iters):
        idx, dist = nearest_code(x, cb)
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(cb).index_add_(0, idx, x)
        cb = torch.where((counts > 0)[:, None], sums / counts.clamp_min(1)[:, None], cb)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            cb[empty] = x[dist.argsort(descending=True)[:empty.numel()]]
    return cb.contiguous()


@dataclass
class _Units:
    """Standardized features -> the nearest of ``K`` k-means centroids; saved as config.json + model.safetensors."""
    codebook: torch.Tensor   # (K, F) in standardized feature units
    mean: torch.Tensor       # (F,)
    std: torch.Tensor        # (F,)

    @property
    def k(self) -> int:
        return int(self.codebook.shape[0])

    @classmethod
    def _fit(cls, feats: list[np.ndarray], k: int, iters: int, seed: int, max_points: int, what: str):
        """Units of the rows of ``feats`` (a list of ``(N_i, F)`` arrays), at most ``max_points`` sampled ones."""
        starts = np.cumsum([0] + [len(f) for f in feats])
        if starts[-1] < k:
            raise UserError(f"{cls.__name__}.fit: expected at least k={k} {what}, got {starts[-1]}; "
                            "pass more data or a smaller k")
        g = torch.Generator().manual_seed(seed)
        if starts[-1] <= max_points:
            x = torch.from_numpy(np.concatenate(feats)).double()
        else:   # gathered from the list, never concatenated whole (Learning2Listen's mel frames are many)
            rows = torch.randperm(int(starts[-1]), generator=g)[:max_points].numpy()
            which = np.searchsorted(starts, rows, side="right") - 1
            x = torch.from_numpy(np.stack([feats[w][i - starts[w]] for w, i in zip(which, rows)])).double()
        mean, std = x.mean(0), x.std(0).nan_to_num(1.0).clamp_min(1e-3)
        cb = kmeans(((x - mean) / std).float(), k, iters=iters, generator=g)
        return cls(cb, mean.float(), std.float())

    def units(self, feats: np.ndarray) -> np.ndarray:
        """``(M, F)`` features -> ``(M,)`` int64 unit ids."""
        if feats.ndim != 2 or feats.shape[1] != self.codebook.shape[1]:
            raise UserError(f"features: expected shape (M, {self.codebook.shape[1]}), got {feats.shape}")
        if feats.shape[0] == 0:
            return np.zeros(0, np.int64)
        z = (torch.from_numpy(np.asarray(feats, np.float32)) - self.mean) / self.std
        return nearest_code(z.contiguous(), self.codebook)[0].long().numpy()

    def _meta(self) -> dict:
        return {"format": f"minilisten.{type(self).__name__}", "k": self.k, "rate": SA_RATE}

    def save(self, directory) -> None:
        from .checkpoint import save_checkpoint
        save_checkpoint(directory, self._meta(), {"codebook": self.codebook, "mean": self.mean, "std": self.std})

    @classmethod
    def load(cls, directory):
        from .checkpoint import load_checkpoint
        cfg, sd = load_checkpoint(directory)
        unit = cls(sd["codebook"].float(), sd["mean"].float(), sd["std"].float())
        want = unit._meta()
        got = {k: cfg.get(k) for k in want}
        if got != want:
            raise UserError(f"{str(directory)!r}: expected a {cls.__name__} saved as {want}, got {got}")
        return unit


class AcousticTokenizer(_Units):
    """Offline SA tokenizer for 16 kHz audio: :func:`acoustic_features` -> k-means units, 50 tokens/s."""

    @classmethod
    def fit(cls, waves: list, sample_rate: int = SA_SAMPLE_RATE, k: int = 1024, iters: int = 20,
            seed: int = 0, max_points: int = 200_000) -> "AcousticTokenizer":
        feats = [acoustic_features(w, sample_rate) for w in waves]
        return cls._fit(feats, k, iters, seed, max_points, "feature frames (20 ms each)")

    def encode(self, wav, sample_rate: int = SA_SAMPLE_RATE) -> np.ndarray:
        """Mono waveform ``(N,)`` -> ``(N * 50 // sample_rate,)`` int64 tokens in ``[0, K)``."""
        return self.units(acoustic_features(wav, sample_rate))

    def _meta(self) -> dict:
        return super()._meta() | {"features": list(FEATURES), "sample_rate": SA_SAMPLE_RATE, "hop": _HOP, "win": _WIN}


class MelUnits(_Units):
    """SA tokens for Learning2Listen's mel frames (``MEL_PER_FRAME`` per video frame): k-means units at 50/s, token
    ``k`` the unit of the mel frame holding its end ``(k + 1) / 50`` s (``tokens.word_step``; docs/models.md)."""

    @classmethod
    def fit(cls, mels: list[np.ndarray], n_units: int = 256, seed: int = 0, iters: int = 20,
            max_points: int = 200_000) -> "MelUnits":
        """Units fitted on ``mels``: ``(N_i, n_mels)`` float mel frames (the training split)."""
        mels = [_check_mel(m, f"mels[{i}]") for i, m in enumerate(mels)]
        if len({m.shape[1] for m in mels}) != 1:
            raise UserError(f"MelUnits.fit: mels: expected one n_mels, got {sorted({m.shape[1] for m in mels})}")
        return cls._fit(mels, n_units, iters, seed, max_points, "mel frames")

    def tokens(self, mel: np.ndarray, fps: float) -> np.ndarray:
        """``mel (N, n_mels)`` of a clip at ``fps`` video frames/s -> int64 unit ids at the SA rate (50/s)."""
        mel = _check_mel(mel, "mel")
        rate = MEL_PER_FRAME * float(fps)
        n = sa_bounds(mel.shape[0], rate, r=1)
        return self.units(mel[[word_step((i + 1) / SA_RATE, rate, r=1) for i in range(n)]])

    def _meta(self) -> dict:
        return super()._meta() | {"n_mels": int(self.codebook.shape[1]), "mel_per_frame": MEL_PER_FRAME}


def _check_mel(mel, name: str) -> np.ndarray:
    m = _as_np(mel)
    if m.ndim != 2 or not np.issubdtype(m.dtype, np.floating) or not np.isfinite(m).all():
        raise UserError(f"{name}: expected finite float mel frames (N, n_mels), got shape {m.shape} dtype {m.dtype}")
    return m.astype(np.float32, copy=False)


def _emotion_probs(path, logits: bool | None) -> np.ndarray:
    """Probabilities from a file of an array or an EMOCA-style dict (``expr_classification``: logits)."""
    from scipy.special import softmax
    obj = _load(path, "emotion", ("emotion", "expression", "probs", "probabilities"))
    if isinstance(obj, dict):
        obj, logits = _as_np(obj["expr_classification"]), logits is not False
    a = _as_np(obj).astype(np.float64)
    return softmax(a, axis=-1) if logits else a


def read_emoca_emotions(path, logits: bool | None = None) -> np.ndarray:
    """Per-frame emotion probabilities ``(T, 8)`` from a file or a directory of per-frame files (numeric name order);
    EMOCA's ``expr_classification`` logits are softmaxed, plain arrays only when ``logits=True``."""
    p, hint = Path(path), " (pass logits=True if these are EMOCA's expr_classification logits)"
    if p.is_dir():
        files = [f for f in p.iterdir() if f.suffix.lower() in LOADERS and f.suffix != ".txt"]
        if not files:
            raise UserError(f"emotion directory {str(p)!r}: expected per-frame {tuple(LOADERS)} files, got none")
        files.sort(key=lambda f: (int(m.group()) if (m := re.search(r"\d+", f.stem)) else -1, f.name))
        probs = np.concatenate([check_emotion_probs(_emotion_probs(f, logits).reshape(1, -1),
                                                    f"emotion file {str(f)!r}", 1, hint) for f in files])
    else:
        probs = _emotion_probs(p, logits)
        probs = probs[:, 0] if probs.ndim == 3 and probs.shape[1] == 1 else probs
    return check_emotion_probs(probs, f"emotion ({p.name})", hint=hint).astype(np.float32)
