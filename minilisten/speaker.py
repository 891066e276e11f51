"""Speaker inputs for the listener LM: words (W), speech acoustics (SA) and emotion (emo).

Paper §3.1 and supplement §3. This module reads and makes the raw per-modality inputs; the
rules that assign them to LR steps (Eq. 1: word-to-step, SA step bounds, emotion tokens, the
per-segment :func:`speaker_tokens`) live in :mod:`minilisten.tokens` (their one home).

- **W** -- Whisper's ``word_timestamps=True`` JSON is read by :func:`read_whisper_words`.
- **SA** -- SpeechTokenizer's second RVQ layer, 50 tokens/s (:class:`SpeechTokenizerSA`, needs
  the ``speechtokenizer`` package and a local checkpoint), precomputed token files
  (:func:`read_sa_tokens`), or the built-in :class:`AcousticTokenizer` (prosody + spectral
  features at 50 Hz from 16 kHz audio, k-means codebook quantized with
  ``minilisten.kernels.nearest_code``; no external weights).
- **emo** -- :func:`read_emoca_emotions` reads EMOCA-style per-frame outputs (probabilities, or
  ``expr_classification`` logits); :func:`~minilisten.tokens.emotion_tokens` turns them into
  one class per step.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.segment import N_EMOTIONS, Word, check_emotion_probs
from .tokens import SA_RATE

SA_SAMPLE_RATE = 16000  # SpeechTokenizer / AcousticTokenizer input sample rate


def _nearest_code(z: torch.Tensor, codebook: torch.Tensor):
    from .kernels.nearest_code import nearest_code  # kernels/ is installed as minilisten.kernels (setup.py)
    return nearest_code(z, codebook)


# ----------------------------------------------------------------------------- words (W)
def read_whisper_words(src, clip_start: float = 0.0, clip_end: float | None = None,
                       history_seconds: float = 3.0) -> tuple[list[Word], list[Word]]:
    """Words of a Whisper transcript made with ``word_timestamps=True``.

    ``src``: a path to the JSON file, a JSON string, or the decoded dict (``{"segments": [{"words":
    [{"word": " Hello", "start": 0.0, "end": 0.32, ...}, ...]}, ...]}``; a bare list of segments
    and WhisperX's top-level ``word_segments`` list are accepted too). Times are re-based to
    ``clip_start``: returns ``(words, history_words)`` -- words ending in ``(clip_start,
    clip_end]`` and words ending in ``(clip_start - history_seconds, clip_start]``, the layout of
    :class:`~minilisten.data.Segment`. Words without timings raise (WhisperX leaves some numbers
    unaligned): re-run the aligner or drop them explicitly.
    """
    if isinstance(src, (str, os.PathLike)) and not (isinstance(src, str) and src.lstrip().startswith(("{", "["))):
        p = Path(src)
        if not p.is_file():
            raise FileNotFoundError(f"whisper transcript: no file {str(p)!r}")
        data = json.loads(p.read_text(encoding="utf-8"))
    elif isinstance(src, str):
        data = json.loads(src)
    else:
        data = src
    if isinstance(data, dict) and "segments" in data:
        segs = data["segments"]
    elif isinstance(data, dict) and "word_segments" in data:
        segs = [{"words": data["word_segments"]}]
    elif isinstance(data, list):
        segs = data
    else:
        raise ValueError("whisper transcript: expected a dict with 'segments' (Whisper) or 'word_segments' (WhisperX), "
                         f"got {type(data).__name__} with keys {sorted(data)[:8] if isinstance(data, dict) else '-'}")
    words, hist = [], []
    for si, seg in enumerate(segs):
        if not isinstance(seg, dict) or "words" not in seg:
            raise ValueError(f"whisper transcript: segments[{si}] has no 'words' list; transcribe with word_timestamps=True")
        for wi, w in enumerate(seg["words"]):
            where = f"segments[{si}].words[{wi}]"
            text = w.get("word", w.get("text")) if isinstance(w, dict) else None
            if text is None:
                raise ValueError(f"whisper transcript: {where}: expected a dict with 'word', 'start', 'end', got {w!r}")
            if "start" not in w or "end" not in w or w["start"] is None or w["end"] is None:
                raise ValueError(f"whisper transcript: {where} ({text!r}): expected 'start' and 'end' times, got "
                                 f"start={w.get('start')!r}, end={w.get('end')!r}")
            start, end = float(w["start"]), float(w["end"])
            if not (math.isfinite(start) and math.isfinite(end)) or end < start:
                raise ValueError(f"whisper transcript: {where} ({text!r}): expected finite start <= end, got {start}, {end}")
            text = text.strip()
            if not text:
                continue
            s_rel, e_rel = start - clip_start, end - clip_start
            if e_rel > 0 and (clip_end is None or end <= clip_end + 1e-9):
                words.append(Word(text, max(s_rel, 0.0), e_rel))      # a word straddling the start keeps its end
            elif -history_seconds < e_rel <= 0:
                hist.append(Word(text, s_rel, e_rel))
    return words, hist


# ----------------------------------------------------------------------------- acoustics (SA)
def read_sa_tokens(path, layer: int = 1, n_sa: int | None = None) -> np.ndarray:
    """Precomputed acoustic tokens of one clip: ``.npy`` / ``.npz`` / ``.pt`` / ``.txt``.

    Accepts ``(M,)`` (already one layer), or SpeechTokenizer's ``(n_q, M)`` / ``(n_q, 1, M)``
    codes, of which row ``layer`` is returned (1 = the paper's acoustic layer; 0 is content).
    ``.npz`` files must hold one array or a ``codes`` / ``sa_tokens`` entry; ``.txt`` holds
    whitespace-separated integers. Returns ``(M,)`` int64.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sa tokens: no file {str(p)!r}")
    from . import safe_pickle
    suf = p.suffix.lower()
    if suf == ".npy":
        a = safe_pickle.load_npy(p)
    elif suf == ".npz":
        z = safe_pickle.load_npz(p)
        keys = [k for k in ("codes", "sa_tokens", "tokens") if k in z]
        if keys:
            a = z[keys[0]]
        elif len(z) == 1:
            a = next(iter(z.values()))
        else:
            raise ValueError(f"sa tokens {str(p)!r}: expected one array or a 'codes'/'sa_tokens' entry, got {sorted(z)}")
    elif suf in (".pt", ".pth"):
        a = safe_pickle.load_torch(p)
        if isinstance(a, dict):
            key = next((k for k in ("codes", "sa_tokens", "tokens") if k in a), None)
            if key is None:
                raise ValueError(f"sa tokens {str(p)!r}: expected a tensor or a dict with 'codes', got keys {sorted(a)}")
            a = a[key]
        a = a.numpy() if torch.is_tensor(a) else np.asarray(a)
    elif suf == ".txt":
        a = np.array(p.read_text().split(), dtype=np.int64)
    else:
        raise ValueError(f"sa tokens {str(p)!r}: unsupported extension {suf!r}, expected .npy, .npz, .pt or .txt")
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        if not 0 <= layer < a.shape[0]:
            raise ValueError(f"sa tokens {str(p)!r}: layer {layer} requested, the file has {a.shape[0]} RVQ layers")
        a = a[layer]
    if a.ndim != 1:
        raise ValueError(f"sa tokens {str(p)!r}: expected shape (M,), (n_q, M) or (n_q, 1, M), got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise ValueError(f"sa tokens {str(p)!r}: expected integer token ids, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if n_sa is not None and a.size and (a.min() < 0 or a.max() >= n_sa):
        raise ValueError(f"sa tokens {str(p)!r}: expected ids in [0, {n_sa}), got range [{a.min()}, {a.max()}]")
    return a


def _mono16k(wav, sr: int, name: str = "wav") -> np.ndarray:
    """1-D float64 waveform at 16 kHz (polyphase resampling); errors on multi-channel input."""
    w = wav.detach().cpu().numpy() if torch.is_tensor(wav) else np.asarray(wav)
    if w.ndim == 2 and 1 in w.shape:
        w = w.reshape(-1)
    if w.ndim != 1:
        raise ValueError(f"{name}: expected a mono waveform of shape (N,) or (1, N), got {w.shape}; mix channels first")
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"{name}: expected float samples in [-1, 1], got dtype {w.dtype}")
    if not (isinstance(sr, (int, np.integer)) and sr > 0):
        raise ValueError(f"sample_rate: expected a positive integer, got {sr!r}")
    w = w.astype(np.float64)
    if sr != SA_SAMPLE_RATE:
        from scipy.signal import resample_poly
        g = math.gcd(int(sr), SA_SAMPLE_RATE)
        w = resample_poly(w, SA_SAMPLE_RATE // g, int(sr) // g)
    return w


class SpeechTokenizerSA:
    """SA tokens from SpeechTokenizer (Zhang et al.): RVQ layer ``layer`` (1 = the paper's) of a
    local checkpoint. Needs ``pip install speechtokenizer`` and its ``config.json`` +
    ``SpeechTokenizer.pt``; imported lazily so minilisten works without it."""

    def __init__(self, config_path, ckpt_path, layer: int = 1, device: str = "cpu"):
        try:
            from speechtokenizer import SpeechTokenizer
        except ImportError as e:
            raise ImportError(
                "SpeechTokenizerSA needs the `speechtokenizer` package (pip install speechtokenizer) and a local "
                "checkpoint (config.json + SpeechTokenizer.pt from fnlp/SpeechTokenizer). Without them, use the built-in "
                "minilisten.speaker.AcousticTokenizer or precomputed tokens via minilisten.speaker.read_sa_tokens."
            ) from e
        for name, p in (("config_path", config_path), ("ckpt_path", ckpt_path)):
            if not Path(p).is_file():
                raise FileNotFoundError(f"SpeechTokenizerSA: {name} {str(p)!r} does not exist")
        self.model = SpeechTokenizer.load_from_checkpoint(str(config_path), str(ckpt_path)).to(device).eval()
        self.layer, self.device = layer, device
        self.sample_rate = int(getattr(self.model, "sample_rate", SA_SAMPLE_RATE))

    @torch.no_grad()
    def encode(self, wav, sample_rate: int) -> np.ndarray:
        """``wav``: mono ``(N,)`` float -> ``(M,)`` int64 tokens of RVQ layer ``self.layer``."""
        w = _mono16k(wav, sample_rate)
        if self.sample_rate != SA_SAMPLE_RATE:
            from scipy.signal import resample_poly
            g = math.gcd(self.sample_rate, SA_SAMPLE_RATE)
            w = resample_poly(w, self.sample_rate // g, SA_SAMPLE_RATE // g)
        x = torch.as_tensor(w, dtype=torch.float32, device=self.device)[None, None]  # (B=1, 1, N)
        codes = self.model.encode(x)                                                    # (n_q, B, M)
        if codes.dim() != 3 or not 0 <= self.layer < codes.shape[0]:
            raise ValueError(f"SpeechTokenizer codes: expected (n_q > {self.layer}, 1, M), got {tuple(codes.shape)}")
        return codes[self.layer, 0].long().cpu().numpy()


# Built-in offline acoustic tokenizer ------------------------------------------------------
_HOP, _WIN = 320, 640  # 20 ms hop (50 Hz) and 40 ms analysis window at 16 kHz
FEATURES = ("log_energy", "log_f0", "voicing", "d_log_energy", "d_log_f0", "zcr", "log_centroid",
            "log_flatness", "rolloff", "mfcc1", "mfcc2", "mfcc3", "mfcc4", "mfcc5", "mfcc6", "mfcc7", "mfcc8")


def _mel_filterbank(n_mels: int = 24, n_fft: int = _WIN, sr: int = SA_SAMPLE_RATE, fmin=60.0, fmax=7600.0) -> np.ndarray:
    mel = lambda f: 2595 * np.log10(1 + f / 700)          # noqa: E731
    imel = lambda m: 700 * (10 ** (m / 2595) - 1)          # noqa: E731
    pts = imel(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    fb = np.zeros((n_mels, freqs.size))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


def acoustic_features(wav, sample_rate: int = SA_SAMPLE_RATE) -> np.ndarray:
    """Prosody + spectral features at 50 Hz: ``(M, 17)`` float32, ``M = N // 320`` at 16 kHz.

    Frame ``k`` is the 40 ms ending at ``(k + 1) / 50`` s (causal: token ``k`` only sees audio
    up to its end time). Columns (``FEATURES``): log energy, log F0 (autocorrelation pitch in
    60-400 Hz, 0 when unvoiced), voicing strength, their frame deltas, zero-crossing rate,
    log spectral centroid, log spectral flatness, 85% roll-off (kHz), 8 MFCCs (c1-c8 of 24 mel bands).
    """
    from scipy.fft import dct
    w = _mono16k(wav, sample_rate)
    M = w.size // _HOP
    if M == 0:
        return np.zeros((0, len(FEATURES)), np.float32)
    padded = np.concatenate([np.zeros(_WIN - _HOP), w[:M * _HOP]])
    idx = np.arange(M)[:, None] * _HOP + np.arange(_WIN)[None]
    frames = padded[idx]                                                     # (M, 640)
    frames = frames - frames.mean(1, keepdims=True)
    win = np.hanning(_WIN)
    spec = np.abs(np.fft.rfft(frames * win, axis=1)) ** 2 + 1e-10           # (M, 321)
    freqs = np.fft.rfftfreq(_WIN, 1 / SA_SAMPLE_RATE)
    energy = (frames ** 2).mean(1)
    log_e = np.log(energy + 1e-8)
    # pitch: normalized autocorrelation (Wiener-Khinchin, zero-padded), best lag in 60-400 Hz
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames * win, n=2 * _WIN, axis=1)) ** 2, axis=1)[:, :_WIN]
    ac_win = np.fft.irfft(np.abs(np.fft.rfft(win, n=2 * _WIN)) ** 2)[:_WIN]
    ac = ac / np.maximum(ac_win[None], 1e-8)                                  # unbias the window taper
    lo, hi = SA_SAMPLE_RATE // 400, SA_SAMPLE_RATE // 60
    seg = ac[:, lo:hi + 1]
    # shortest period whose correlation is within 90% of the best (avoids sub-octave errors:
    # a periodic signal correlates as well at 2 and 3 periods), refined to its local peak
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
    mfcc = dct(np.log(spec @ _mel_filterbank().T + 1e-10), type=2, axis=1, norm="ortho")[:, 1:9]
    feats = np.column_stack([log_e, log_f0, voicing, d_e, d_f0, zcr, centroid, flatness, rolloff, mfcc])
    return feats.astype(np.float32)


@dataclass
class AcousticTokenizer:
    """Offline SA tokenizer: :func:`acoustic_features` standardized, then the nearest of ``K``
    k-means centroids (``minilisten.kernels.nearest_code``). 50 tokens/s from 16 kHz audio.

    >>> tok = AcousticTokenizer.fit([wav1, wav2], k=1024)    # k-means++ + Lloyd
    >>> tokens = tok.encode(wav, sample_rate=16000)           # (len(wav) // 320,) int64
    >>> tok.save("sa_tok"); AcousticTokenizer.load("sa_tok")
    """
    codebook: torch.Tensor   # (K, F) in standardized feature units
    mean: torch.Tensor       # (F,)
    std: torch.Tensor        # (F,)

    @property
    def k(self) -> int:
        return int(self.codebook.shape[0])

    @classmethod
    def fit(cls, waves: list, sample_rate: int = SA_SAMPLE_RATE, k: int = 1024, iters: int = 20,
            seed: int = 0, max_points: int = 200_000, progress: bool = False) -> "AcousticTokenizer":
        feats = np.concatenate([acoustic_features(w, sample_rate) for w in waves]) if waves else np.zeros((0, 1))
        if feats.shape[0] < k:
            raise ValueError(f"AcousticTokenizer.fit: expected at least k={k} feature frames (20 ms each), got "
                             f"{feats.shape[0]}; pass more audio or a smaller k")
        g = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(feats).double()
        if x.shape[0] > max_points:
            x = x[torch.randperm(x.shape[0], generator=g)[:max_points]]
        mean, std = x.mean(0), x.std(0).clamp_min(1e-3)
        z = ((x - mean) / std).float()
        cb = kmeans(z, k, iters=iters, generator=g, progress=progress)
        return cls(cb, mean.float(), std.float())

    def tokens_from_features(self, feats: np.ndarray) -> np.ndarray:
        """``(M, F)`` features -> ``(M,)`` int64 token ids."""
        if feats.ndim != 2 or feats.shape[1] != self.codebook.shape[1]:
            raise ValueError(f"features: expected shape (M, {self.codebook.shape[1]}), got {feats.shape}")
        if feats.shape[0] == 0:
            return np.zeros(0, np.int64)
        z = (torch.from_numpy(feats).float() - self.mean) / self.std
        idx, _ = _nearest_code(z.contiguous(), self.codebook)
        return idx.long().numpy()

    def encode(self, wav, sample_rate: int = SA_SAMPLE_RATE) -> np.ndarray:
        """Mono waveform ``(N,)`` -> ``(N * 50 // sample_rate,)`` int64 tokens in ``[0, K)``."""
        return self.tokens_from_features(acoustic_features(wav, sample_rate))

    def save(self, directory) -> None:
        from .checkpoint import save_checkpoint
        save_checkpoint(directory, {"format": "minilisten.AcousticTokenizer", "k": self.k, "features": list(FEATURES),
                                    "sample_rate": SA_SAMPLE_RATE, "hop": _HOP, "win": _WIN, "rate": SA_RATE},
                        {"codebook": self.codebook, "mean": self.mean, "std": self.std})

    @classmethod
    def load(cls, directory) -> "AcousticTokenizer":
        from .checkpoint import load_checkpoint
        cfg, sd = load_checkpoint(directory)
        if cfg.get("format") != "minilisten.AcousticTokenizer":
            raise ValueError(f"{str(directory)!r}: expected an AcousticTokenizer checkpoint, got format {cfg.get('format')!r}")
        if list(cfg["features"]) != list(FEATURES):
            raise ValueError(f"{str(directory)!r}: saved with features {cfg['features']}, this version computes {list(FEATURES)}")
        return cls(sd["codebook"].float(), sd["mean"].float(), sd["std"].float())


def kmeans(x: torch.Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None,
           progress: bool = False) -> torch.Tensor:
    """k-means++ initialisation then Lloyd iterations; ``x: (N, d)`` -> centroids ``(k, d)``.
    Assignment uses ``nearest_code``; an emptied cluster is re-seeded at the point currently
    farthest from its centroid."""
    from tqdm import tqdm
    N = x.shape[0]
    g = generator or torch.Generator().manual_seed(0)
    cb = torch.empty(k, x.shape[1])
    cb[0] = x[torch.randint(N, (1,), generator=g)]
    d2 = ((x - cb[0]) ** 2).sum(1)
    for j in range(1, k):                        # k-means++ (D^2 sampling)
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / N)
        cb[j] = x[torch.multinomial(p, 1, generator=g)]
        d2 = torch.minimum(d2, ((x - cb[j]) ** 2).sum(1))
    for _ in tqdm(range(iters), desc="k-means", disable=not progress):
        idx, dist = _nearest_code(x, cb)
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(cb).index_add_(0, idx, x)
        new = sums / counts.clamp_min(1)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            far = dist.argsort(descending=True)[:empty.numel()]
            new[empty] = x[far]
        cb = torch.where((counts > 0)[:, None], new, cb)
        if empty.numel():
            cb[empty] = x[far]
    return cb.contiguous()


# ----------------------------------------------------------------------------- emotion (emo)
def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _load_any(p: Path):
    """An emotion file; every pickle (``.pkl``, ``.npy`` object arrays, ``.pt``) goes through the
    restricted unpickler of :mod:`minilisten.safe_pickle` (numpy arrays / plain values only)."""
    from . import safe_pickle
    suf = p.suffix.lower()
    if suf == ".npy":
        return safe_pickle.load_npy(p)
    if suf == ".npz":
        return safe_pickle.load_npz(p)
    if suf in (".pt", ".pth"):
        return safe_pickle.load_torch(p)
    if suf in (".pkl", ".pickle"):
        return safe_pickle.load_pickle(p)   # EMOCA writes dicts of numpy arrays
    raise ValueError(f"emotion file {str(p)!r}: unsupported extension {suf!r} (.npy, .npz, .pt, .pkl)")


def _as_np(a) -> np.ndarray:
    return a.detach().cpu().float().numpy() if torch.is_tensor(a) else np.asarray(a, dtype=np.float64)


def _emotion_from_obj(obj, where: str, logits: bool | None):
    """(probs-or-logits array, is_logits) from an array or an EMOCA-style output dict."""
    if isinstance(obj, dict):
        if "expr_classification" in obj:        # EMOCA's emotion recognition output (logits)
            return _as_np(obj["expr_classification"]), True if logits is None else logits
        for key in ("emotion", "expression", "probs", "probabilities"):
            if key in obj:
                return _as_np(obj[key]), bool(logits)
        raise ValueError(f"{where}: expected an array or a dict with 'expr_classification' (EMOCA logits) or "
                         f"'emotion'/'probs', got keys {sorted(obj)[:10]}")
    return _as_np(obj), bool(logits)


def read_emoca_emotions(path, logits: bool | None = None) -> np.ndarray:
    """Per-frame emotion probabilities ``(T, 8)`` from EMOCA-style outputs.

    ``path``: one file holding ``(T, 8)`` (``.npy``/``.npz``/``.pt``/``.pkl``; a dict with
    EMOCA's ``expr_classification`` logits is softmaxed), or a directory with one file per frame
    (sorted by the number in the name) each holding ``(8,)`` / ``(1, 8)`` or such a dict.
    Class order: EMOCA's AffectNet order, our ``EMOTIONS``. ``logits=True`` applies a softmax
    to plain arrays; otherwise plain arrays must already be probabilities.
    """
    p = Path(path)
    if p.is_dir():
        import re
        files = [f for f in p.iterdir() if f.suffix.lower() in (".npy", ".npz", ".pt", ".pth", ".pkl", ".pickle")]
        if not files:
            raise FileNotFoundError(f"emotion directory {str(p)!r}: no .npy/.npz/.pt/.pkl per-frame files")
        key = lambda f: (int(m.group()) if (m := re.search(r"\d+", f.stem)) else -1, f.name)  # noqa: E731
        rows = []
        for f in sorted(files, key=key):
            a, is_logits = _emotion_from_obj(_load_any(f), str(f), logits)
            a = a.reshape(-1)
            if a.size != N_EMOTIONS:
                raise ValueError(f"emotion file {str(f)!r}: expected {N_EMOTIONS} values (one frame), got shape {a.shape}")
            rows.append(_softmax(a) if is_logits else a)
        probs = np.stack(rows)
    elif p.is_file():
        a, is_logits = _emotion_from_obj(_load_any(p), str(p), logits)
        if a.ndim == 3 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 2 or a.shape[1] != N_EMOTIONS:
            raise ValueError(f"emotion file {str(p)!r}: expected shape (T, {N_EMOTIONS}), got {a.shape}")
        probs = _softmax(a) if is_logits else a
    else:
        raise FileNotFoundError(f"emotion: no file or directory {str(p)!r}")
    hint = " (pass logits=True if these are EMOCA's expr_classification logits)"
    return check_emotion_probs(probs, f"emotion ({p.name})", hint=hint).astype(np.float32)
