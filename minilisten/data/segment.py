"""The one data type: a dyadic ``Segment`` (speaker + listener, time-aligned), and the word rules. A motion frame
is expression ``[0:50]`` then pose ``[50:56]`` (the peers' order), ``beta`` (100,) a FLAME shape, times seconds from
the segment's first frame. Field shapes and conventions: docs/data.md."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from ..errors import UserError

N_EXP, N_POSE, N_SHAPE = 50, 6, 100
D_MOTION = N_EXP + N_POSE  # 56
EXP = slice(0, N_EXP)
POSE = slice(N_EXP, D_MOTION)
EMOTIONS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
N_EMOTIONS = len(EMOTIONS)
MEL_PER_FRAME = 4  # mel spectrogram frames per video frame (Learning2Listen)
_NUMBER = (int, float, np.integer, np.floating)


@dataclass(frozen=True)
class Word:
    """One spoken word with its start and end time in seconds (relative to the segment)."""
    text: str
    start: float
    end: float


def seconds(where: str, v) -> float:
    """A time in seconds as a finite float; UserError naming ``where`` otherwise (a huge int too)."""
    if isinstance(v, bool) or not isinstance(v, _NUMBER):
        raise UserError(f"{where}: expected a number of seconds, got {type(v).__name__} {v!r:.60}")
    try:
        t = float(v)
    except OverflowError:
        t = math.inf
    if not math.isfinite(t):
        raise UserError(f"{where}: expected a finite number of seconds, got {v!r:.60}")
    return t


def as_word(w, where: str = "word") -> Word:
    """``Word``, ``(text, start, end)`` or ``{"text", "start", "end"}`` -> ``Word`` with finite
    float times and ``start <= end`` (the one word coercion). ``where`` names the input in errors."""
    expect = f"{where}: expected Word(text, start, end), a (text, start, end) tuple or a dict"
    if isinstance(w, dict):
        if not {"text", "start", "end"} <= set(w):
            raise UserError(f"{where}: expected keys text/start/end, got {sorted(map(str, w))}")
        w = (w["text"], w["start"], w["end"])
    if isinstance(w, Word):
        w = (w.text, w.start, w.end)
    if not isinstance(w, (tuple, list)) or len(w) != 3:
        raise UserError(f"{expect}, got {type(w).__name__} {w!r:.60}")
    text, start, end = w
    if not isinstance(text, str) or any(isinstance(t, bool) or not isinstance(t, _NUMBER) for t in (start, end)):
        raise UserError(f"{expect} of (str, number, number), got ({type(text).__name__}, {type(start).__name__}, "
                        f"{type(end).__name__}) {w!r:.60}")
    w = Word(text, seconds(f"{where} ({text!r}): start", start), seconds(f"{where} ({text!r}): end", end))
    if w.end < w.start:
        raise UserError(f"{where} ({w.text!r}): expected start <= end, got start={w.start:.3f} > end={w.end:.3f}")
    return w


def check_word(name: str, i: int, w, hi: float) -> Word:
    """``as_word`` plus the bounds of field ``name``: words in [0, ``hi``] s, history words ending <= 0."""
    w = as_word(w, f"{name}[{i}]")
    if name != "history_words" and w.start < -1e-6:
        raise UserError(f"{name}[{i}] ({w.text!r}): expected start >= 0 s, got start={w.start:.3f} (speech before the "
                        f"clip belongs in history_words)")
    if w.end > hi + 1e-6:
        bound = "0 s (before the first frame)" if name == "history_words" else f"{hi:.3f} s (clip end)"
        raise UserError(f"{name}[{i}] ({w.text!r}): expected end <= {bound}, got end={w.end:.3f}")
    return w


def repair_words(items, word_seconds: float = 0.3) -> tuple[list[Word], int]:
    """ASR / peer words ``(text, start or None, end)`` -> ``(words, n_changed)``: stably sorted by end (trusted,
    as the peers read only it), each start (``end - word_seconds`` when missing) clamped into ``[previous end,
    end]``; ``n_changed`` counts words out of order or whose given start changed (docs/data.md)."""
    ends = np.array([end for _, _, end in items], np.float64)
    late = ends < np.maximum.accumulate(np.concatenate([[-math.inf], ends[:-1]]))   # before an earlier word's end
    out, changed, prev = [], 0, -math.inf
    for i in sorted(range(len(items)), key=lambda i: items[i][2]):
        text, start, end = items[i]
        s = min(max(end - word_seconds if start is None else start, prev), end)
        changed += int(late[i] or (start is not None and s != start))
        out.append(Word(text, s, end))
        prev = end
    return out, changed


def check_emotion_probs(probs, name: str = "emotion", rows: int | str = "T", hint: str = "") -> np.ndarray:
    """Per-frame probabilities ``(rows, 8)`` in ``EMOTIONS`` order -> float64, checked finite, >= 0,
    rows summing to 1 (tolerance 1e-3). ``rows``: an int is required, a str names the axis."""
    p = probs.detach().cpu().numpy() if hasattr(probs, "detach") else np.asarray(probs)
    if p.ndim != 2 or p.shape[1] != N_EMOTIONS or (isinstance(rows, int) and p.shape[0] != rows) \
            or not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise UserError(f"{name}: expected per-frame probabilities of shape ({rows}, {N_EMOTIONS}) "
                        f"({', '.join(EMOTIONS)}), got {tuple(p.shape)} {p.dtype}")
    p = p.astype(np.float64)
    if p.size and not np.isfinite(p).all():
        raise UserError(f"{name}: expected finite probabilities, got NaN/inf")
    if p.size and p.min() < -1e-6:
        raise UserError(f"{name}: expected probabilities >= 0, got min {p.min():.4g}{hint}")
    sums = p.sum(1)
    if p.size and not np.allclose(sums, 1.0, atol=1e-3):
        i = int(np.argmax(np.abs(sums - 1)))
        raise UserError(f"{name}: expected rows summing to 1, got {sums[i]:.4g} at frame {i}{hint}")
    return p


def _fmt(shape) -> str:
    dims = ["n" if s is None and i else "T" if s is None else str(s) for i, s in enumerate(shape)]
    return "(" + ", ".join(dims) + ("," if len(shape) == 1 else "") + ")"


def _check_array(name: str, x, shape: tuple, dtype=np.float32) -> np.ndarray:
    """``x`` as a numpy array of ``dtype`` after checking its shape (None = any size) and finiteness."""
    if x is None:
        raise UserError(f"{name}: expected an array of shape {_fmt(shape)}, got None")
    if hasattr(x, "detach"):  # a torch tensor (bf16 has no numpy dtype)
        x = x.detach().cpu()
        a = (x.float() if x.is_floating_point() and x.dtype.itemsize == 2 else x).numpy()
    else:
        try:
            a = np.asarray(x)
        except ValueError as e:  # ragged nested lists
            raise UserError(f"{name}: expected an array of shape {_fmt(shape)}, got {e}") from None
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        raise UserError(f"{name}: expected shape {_fmt(shape)}, got {tuple(a.shape)}")
    floating = np.issubdtype(dtype, np.floating)
    if not (np.issubdtype(a.dtype, np.integer) or (floating and np.issubdtype(a.dtype, np.floating))):
        raise UserError(f"{name}: expected {'a float' if floating else 'an integer'} array, got dtype {a.dtype}")
    a = a.astype(dtype, copy=False)
    if floating and a.size and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise UserError(f"{name}: expected finite values, got {a[tuple(bad)]} at index {tuple(int(i) for i in bad)}")
    return a


def _own_frozen(a: np.ndarray, given) -> np.ndarray:
    """``a`` (checked from ``given``) read-only, reachable only through the Segment: shared when read-only all the
    way down, frozen in place when the coercion made it, else copied first."""
    root = a
    while isinstance(root, np.ndarray) and not root.flags.writeable:
        root = root.base
    if root is None or isinstance(root, bytes) or (isinstance(root, memoryview) and root.readonly):
        return a
    fresh = isinstance(given, (list, tuple)) or (isinstance(given, np.ndarray) and not np.may_share_memory(a, given))
    if not fresh:
        a = a.copy()
    a.flags.writeable = False
    return a


def _positive(name: str, v) -> float:
    if isinstance(v, bool) or not (isinstance(v, _NUMBER) and math.isfinite(v) and v > 0):
        raise UserError(f"{name}: expected a positive number, got {v!r}")
    return float(v)


@dataclass(frozen=True, eq=False)
class Segment:
    """A dyadic sample: motion ``(T, 56)``, betas ``(100,)``, emotion ``(T, 8)``, valence ``(T,)``, sa_tokens
    ``(M,)`` int64, mel ``(4T, n_mels)``; optional fields None when absent. Validated, immutable (read-only
    arrays; change through :meth:`replace`); ``==`` is identity (docs/data.md)."""
    speaker_motion: np.ndarray
    listener_motion: np.ndarray
    fps: float
    listener_id: str = "listener"
    listener_beta: np.ndarray | None = None
    speaker_beta: np.ndarray | None = None
    words: tuple[Word, ...] = ()
    history_words: tuple[Word, ...] = ()
    sa_tokens: np.ndarray | None = None
    sa_rate: float = 50.0
    emotion: np.ndarray | None = None
    valence: np.ndarray | None = None
    mel: np.ndarray | None = None
    name: str = ""

    def __post_init__(self):
        def put(name, value):   # the frozen dataclass's own normalisation (the only writes)
            object.__setattr__(self, name, value)
            return value

        def array(name, shape, dtype=np.float32):
            given = getattr(self, name)
            return put(name, _own_frozen(_check_array(name, given, shape, dtype), given))

        put("fps", _positive("fps", self.fps))
        put("sa_rate", _positive("sa_rate", self.sa_rate))
        T = array("speaker_motion", (None, D_MOTION)).shape[0]
        if T == 0:
            raise UserError("speaker_motion: expected at least 1 frame, got 0")
        if array("listener_motion", (None, D_MOTION)).shape[0] != T:
            raise UserError(f"listener_motion: expected {T} frames (as speaker_motion), "
                            f"got {self.listener_motion.shape[0]}")
        for name, shape in {"listener_beta": (N_SHAPE,), "speaker_beta": (N_SHAPE,), "emotion": (T, N_EMOTIONS),
                            "valence": (T,), "mel": (MEL_PER_FRAME * T, None), "sa_tokens": (None,)}.items():
            if getattr(self, name) is not None:
                array(name, shape, np.int64 if name == "sa_tokens" else np.float32)
        if self.emotion is not None:
            check_emotion_probs(self.emotion, "emotion", rows=T)
        if self.mel is not None and self.mel.shape[1] < 1:
            raise UserError("mel: expected at least 1 mel band, got 0")
        if self.sa_tokens is not None and self.sa_tokens.size and self.sa_tokens.min() < 0:
            raise UserError(f"sa_tokens: expected non-negative token ids, got {self.sa_tokens.min()}")
        for name, hi in (("words", self.duration), ("history_words", 0.0)):
            ws = getattr(self, name)
            if not isinstance(ws, (list, tuple)):
                raise UserError(f"{name}: expected a list of Word(text, start, end), got {type(ws).__name__} "
                                f"{ws!r:.60}")
            ws = put(name, tuple(check_word(name, i, w, hi) for i, w in enumerate(ws)))
            for i in range(1, len(ws)):   # in time order, not overlapping (a word may start where the last ended)
                if ws[i].start < ws[i - 1].end - 1e-6:
                    raise UserError(f"{name}[{i}] ({ws[i].text!r}): expected words in time order, not overlapping: "
                                    f"start >= {ws[i - 1].end:.3f} s (the end of {name}[{i - 1}] {ws[i - 1].text!r}), "
                                    f"got start={ws[i].start:.3f}")
        put("listener_id", str(self.listener_id))

    def replace(self, **changes) -> "Segment":
        """A new Segment with ``changes`` applied, validated again; unchanged arrays are shared."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise UserError(f"replace: expected Segment fields ({', '.join(f.name for f in fields(self))}), "
                            f"got {', '.join(unknown)}")
        return replace(self, **changes)

    def __reduce__(self):
        # pickle / copy / deepcopy rebuild through the constructor: validated and frozen again.
        return _rebuild, (type(self), {f.name: getattr(self, f.name) for f in fields(self)})

    @property
    def T(self) -> int:
        return int(self.speaker_motion.shape[0])

    @property
    def duration(self) -> float:
        return self.T / self.fps

    def window(self, start: int, length: int, history_seconds: float = 3.0) -> "Segment":
        """Frames ``[start, start + length)``, times re-based: words ending inside are kept (clipped to 0), those
        ending less than ``history_seconds`` before become ``history_words`` (LM-listener uses 3 s)."""
        if not (0 <= start and length >= 1 and start + length <= self.T):
            raise UserError(f"window: expected 0 <= start and start + length <= T={self.T}, "
                            f"got start={start}, length={length}")
        t0, t1 = start / self.fps, (start + length) / self.fps
        words, hist = [], []
        for w in self.history_words + self.words:
            if t0 < w.end <= t1 + 1e-9:
                words.append(Word(w.text, max(w.start, t0) - t0, min(w.end, t1) - t0))
            elif t0 - history_seconds < w.end <= t0:
                hist.append(Word(w.text, w.start - t0, w.end - t0))
        sl = slice(start, start + length)
        cut = {"speaker_motion": sl, "listener_motion": sl, "emotion": sl, "valence": sl,
               "sa_tokens": slice(int(round(t0 * self.sa_rate)), int(round(t1 * self.sa_rate))),
               "mel": slice(MEL_PER_FRAME * start, MEL_PER_FRAME * (start + length))}
        arrays = {k: None if getattr(self, k) is None else getattr(self, k)[c] for k, c in cut.items()}
        return replace(self, words=words, history_words=hist, name=f"{self.name}[{start}:{start + length}]", **arrays)

    def windows(self, length: int = 240, stride: int | None = None, start: int = 0) -> list["Segment"]:
        """Windows of ``length`` frames every ``stride`` (default ``length``) frames from ``start``; no padded tail."""
        for name, v in (("length", length), ("stride", stride), ("start", start)):
            low = 0 if name == "start" else 1
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low):
                raise UserError(f"windows: {name}: expected an int >= {low}, got {v!r}")
        stride = length if stride is None else stride
        return [self.window(s, length) for s in range(start, self.T - length + 1, stride)]


def _rebuild(cls, kw: dict) -> Segment:
    """Unpickling / copying: ``cls(**kw)`` with the arrays marked read-only as they were, so shared."""
    for v in kw.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return cls(**kw)
