"""The one data type: a dyadic ``Segment`` (speaker + listener, time-aligned).

Conventions used everywhere in minilisten:
- a motion frame is 56 numbers: expression ``[0:50]`` then pose ``[50:56]`` (3 global head
  rotation + 3 jaw), as LM-listener and Learning2Listen store them (``EXP``, ``POSE`` below);
- ``beta`` is the 100-d FLAME shape of a person, constant over a segment, not part of a frame;
- times are seconds relative to the segment's first frame: ``words`` end in ``(0, T / fps]``,
  ``history_words`` (speech before the first frame, W^h in the paper) end at or before 0;
- ``emotion`` holds per-frame probabilities over EMOCA's 8 classes in ``EMOTIONS`` order;
- ``sa_tokens`` are speaker acoustic tokens at ``sa_rate`` tokens/s (SpeechTokenizer: 50/s).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

N_EXP, N_POSE, N_SHAPE = 50, 6, 100
D_MOTION = N_EXP + N_POSE  # 56
EXP = slice(0, N_EXP)
POSE = slice(N_EXP, D_MOTION)
EMOTIONS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
N_EMOTIONS = len(EMOTIONS)


@dataclass(frozen=True)
class Word:
    """One spoken word with its start and end time in seconds (relative to the segment)."""
    text: str
    start: float
    end: float


def as_word(w, where: str = "word") -> Word:
    """``Word``, ``(text, start, end)`` tuple/list or ``{"text", "start", "end"}`` dict -> ``Word``
    with float times, finite and ``start <= end`` (the one word coercion: ``Segment`` and the
    streaming API call it). ``where`` names the input in errors, e.g. ``"words[3]"``."""
    expect = f"{where}: expected Word(text, start, end), a (text, start, end) tuple or a dict"
    if isinstance(w, dict):
        if not {"text", "start", "end"} <= set(w):
            raise ValueError(f"{where}: expected keys text/start/end, got {sorted(map(str, w))}")
        w = (w["text"], w["start"], w["end"])
    if isinstance(w, Word):
        w = (w.text, w.start, w.end)
    if isinstance(w, (str, bytes)) or not isinstance(w, (tuple, list)) or len(w) != 3:
        raise ValueError(f"{expect}, got {type(w).__name__} {w!r:.60}")
    text, start, end = w
    if not isinstance(text, str) or any(isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating))
                                        for t in (start, end)):
        raise ValueError(f"{expect} of (str, number, number), got ({type(text).__name__}, {type(start).__name__}, "
                         f"{type(end).__name__}) {w!r:.60}")
    w = Word(text, float(start), float(end))
    if not (math.isfinite(w.start) and math.isfinite(w.end)):
        raise ValueError(f"{where} ({w.text!r}): expected finite start/end, got start={w.start}, end={w.end}")
    if w.end < w.start:
        raise ValueError(f"{where} ({w.text!r}): expected start <= end, got start={w.start:.3f} > end={w.end:.3f}")
    return w


def check_emotion_probs(probs, name: str = "emotion", rows: int | str = "T", hint: str = "") -> np.ndarray:
    """Per-frame emotion probabilities ``(rows, 8)`` (``EMOTIONS`` order) -> float64 array, after
    checking shape, finiteness, ``p >= 0`` and rows summing to 1 (tolerance 1e-3): the one
    emotion check (``Segment``, the tokens rules, the readers and the streaming API call it).
    ``rows``: an int requires that many frames, a str only names the axis in errors; ``hint`` is
    appended to value errors (e.g. how to pass logits)."""
    p = probs.detach().cpu().numpy() if hasattr(probs, "detach") else np.asarray(probs)
    if p.ndim != 2 or p.shape[1] != N_EMOTIONS or (isinstance(rows, int) and p.shape[0] != rows) \
            or not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"{name}: expected per-frame probabilities of shape ({rows}, {N_EMOTIONS}) "
                         f"({', '.join(EMOTIONS)}), got {tuple(p.shape)} {p.dtype}")
    p = p.astype(np.float64)
    if p.size and not np.isfinite(p).all():
        raise ValueError(f"{name}: expected finite probabilities, got NaN/inf")
    if p.size and p.min() < -1e-6:
        raise ValueError(f"{name}: expected probabilities >= 0, got min {p.min():.4g}{hint}")
    sums = p.sum(1)
    if p.size and not np.allclose(sums, 1.0, atol=1e-3):
        i = int(np.argmax(np.abs(sums - 1)))
        raise ValueError(f"{name}: expected rows summing to 1, got {sums[i]:.4g} at frame {i}{hint}")
    return p


def _check_array(name: str, x, shape: tuple, dtype=np.float32, finite: bool = True) -> np.ndarray:
    """Return ``x`` as a numpy array of ``dtype`` after checking its shape (None = any size)."""
    if x is None:
        raise ValueError(f"{name}: expected an array of shape {_fmt(shape)}, got None")
    if hasattr(x, "detach"):  # torch tensor (bf16 has no numpy dtype)
        x = x.detach().cpu()
        a = (x.float() if x.dtype == torch_bf16() else x).numpy()
    else:
        try:
            a = np.asarray(x)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"{name}: expected an array of shape {_fmt(shape)}, got {e}") from None
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {tuple(a.shape)}")
    if np.issubdtype(dtype, np.floating):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{name}: expected a float array, got dtype {a.dtype}")
        a = a.astype(dtype, copy=False)
        if finite and a.size and not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(f"{name}: expected finite values, got {a[tuple(bad)]} at index {tuple(int(i) for i in bad)}")
    else:
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name}: expected an integer array, got dtype {a.dtype}")
        a = a.astype(dtype, copy=False)
    return a


def torch_bf16():
    import torch  # only reached when a torch tensor was passed
    return torch.bfloat16


def _fmt(shape) -> str:
    return "(" + ", ".join("T" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _read_only(a: np.ndarray) -> bool:
    """True when ``a`` and every array it views are read-only and the memory underneath is numpy's,
    immutable ``bytes`` or a read-only ``memoryview`` (not, e.g., a torch tensor's storage, which
    its holder can write)."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return a is None or isinstance(a, bytes) or (isinstance(a, memoryview) and a.readonly)


def _own_frozen(a: np.ndarray, given) -> np.ndarray:
    """``a`` (``given`` after ``_check_array``) as a read-only array only the Segment can reach:

    - already read-only all the way down (a window's views of its segment, arrays a reader
      froze): shared, no copy;
    - new memory made by the coercion (a dtype conversion of an ndarray, a list): frozen, no copy;
    - otherwise (the caller's array or a view of it, a torch tensor's storage, any other
      array-like): copied, then frozen, so the caller's array stays writeable and its later
      writes do not reach the Segment."""
    if _read_only(a):
        return a
    fresh = isinstance(given, (list, tuple)) or (isinstance(given, np.ndarray) and not np.may_share_memory(a, given))
    if not fresh:
        a = a.copy()
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Segment:
    """A dyadic sample. Shapes: motion ``(T, 56)``, beta ``(100,)``, emotion ``(T, 8)``,
    valence ``(T,)``, sa_tokens ``(M,)`` int64. Optional fields are ``None`` when a source lacks
    them (Learning2Listen has no words and no beta; see the readers).

    Construction validates every field and raises ``ValueError`` naming the field, the expected
    and the actual value; nothing is truncated or coerced silently.

    Immutable, so that the validation cannot be bypassed: assigning a field raises
    ``dataclasses.FrozenInstanceError``, the arrays are read-only (``flags.writeable`` False; an
    in-place write raises ``ValueError``), ``words``/``history_words`` are tuples of ``Word``.
    Changes go through :meth:`replace` (or ``dataclasses.replace``), which validates again.
    The Segment owns its arrays: an array of the caller's is copied before it is frozen (the
    caller's stays writeable), unless it is already read-only all the way down (a window's views
    of its segment, arrays a reader froze), which is shared without a copy. Numpy and Python
    guard against mistakes, not intent: ``object.__setattr__`` and ``torch.from_numpy`` (which
    ignores the flag) still get through.

    ``eq=False``: ``==`` is identity and ``hash`` is ``id``-based (usable in sets and as dict
    keys); two Segments with equal contents are not ``==`` (arrays have no single truth value:
    compare fields with ``np.array_equal``).
    """
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
    name: str = ""

    def __post_init__(self):
        def put(name, value):   # the frozen dataclass's own normalisation (the only writes)
            object.__setattr__(self, name, value)

        def array(name, shape, dtype=np.float32):
            given = getattr(self, name)
            a = _own_frozen(_check_array(name, given, shape, dtype), given)
            put(name, a)
            return a

        if isinstance(self.fps, bool) or not (isinstance(self.fps, (int, float, np.integer, np.floating))
                                              and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps: expected a positive number, got {self.fps!r}")
        put("fps", float(self.fps))
        if isinstance(self.sa_rate, bool) or not (isinstance(self.sa_rate, (int, float, np.integer, np.floating))
                                                  and math.isfinite(self.sa_rate) and self.sa_rate > 0):
            raise ValueError(f"sa_rate: expected a positive rate, got {self.sa_rate!r}")
        T = array("speaker_motion", (None, D_MOTION)).shape[0]
        if T == 0:
            raise ValueError("speaker_motion: expected at least 1 frame, got 0")
        if array("listener_motion", (None, D_MOTION)).shape[0] != T:
            raise ValueError(f"listener_motion: expected {T} frames (as speaker_motion), got {self.listener_motion.shape[0]}")
        for name in ("listener_beta", "speaker_beta"):
            if getattr(self, name) is not None:
                array(name, (N_SHAPE,))
        if self.emotion is not None:
            check_emotion_probs(array("emotion", (T, N_EMOTIONS)), "emotion", rows=T)
        if self.valence is not None:
            array("valence", (T,))
        if self.sa_tokens is not None:
            sa = array("sa_tokens", (None,), dtype=np.int64)
            if sa.size and sa.min() < 0:
                raise ValueError(f"sa_tokens: expected non-negative token ids, got {sa.min()}")
        for name, hi in (("words", self.duration), ("history_words", 0.0)):
            ws = getattr(self, name)
            if isinstance(ws, (str, bytes)) or not isinstance(ws, (list, tuple)):
                raise ValueError(f"{name}: expected a list of Word(text, start, end), got {type(ws).__name__} {ws!r:.60}")
            ws = tuple(self._check_word(name, i, w, hi) for i, w in enumerate(ws))
            for i in range(1, len(ws)):   # in time order, not overlapping (a word may start where the last ended)
                a, b = ws[i - 1], ws[i]
                if b.start < a.end - 1e-6:
                    raise ValueError(f"{name}[{i}] ({b.text!r}): expected words in time order, not overlapping: start >= "
                                     f"{a.end:.3f} s (the end of {name}[{i - 1}] {a.text!r}), got start={b.start:.3f}")
            put(name, ws)
        put("listener_id", str(self.listener_id))

    def replace(self, **changes) -> "Segment":
        """A new Segment with ``changes`` (field name -> value) applied, validated like any other
        (``ValueError`` naming the field); unchanged arrays are shared, not copied."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"replace: expected Segment fields ({', '.join(f.name for f in fields(self))}), "
                             f"got {', '.join(unknown)}")
        return replace(self, **changes)

    def __reduce__(self):
        # pickle / copy / deepcopy rebuild through the constructor: validated and frozen again.
        return _rebuild, (type(self), {f.name: getattr(self, f.name) for f in fields(self)})

    @staticmethod
    def _check_word(field_name: str, i: int, w, hi: float) -> Word:
        w = as_word(w, f"{field_name}[{i}]")
        where, eps = f"{field_name}[{i}] ({w.text!r})", 1e-6
        if field_name == "words":
            if w.start < -eps:
                raise ValueError(f"{where}: expected start >= 0 s, got start={w.start:.3f} (speech before the clip belongs in history_words)")
            if w.end > hi + eps:
                raise ValueError(f"{where}: expected end <= {hi:.3f} s (clip end), got end={w.end:.3f}")
        elif w.end > eps:
            raise ValueError(f"{where}: expected end <= 0 s (before the first frame), got end={w.end:.3f}")
        return w

    # ------------------------------------------------------------------ views
    @property
    def T(self) -> int:
        return int(self.speaker_motion.shape[0])

    @property
    def duration(self) -> float:
        return self.T / self.fps

    def window(self, start: int, length: int, history_seconds: float = 3.0) -> "Segment":
        """Frames ``[start, start + length)`` as a new Segment with times re-based to its first
        frame. Words ending inside the window are kept (a word straddling the start keeps its end
        and is clipped to start at 0); words that end before the window and less than
        ``history_seconds`` earlier become ``history_words`` (LM-listener uses 3 s)."""
        if not (0 <= start and length >= 1 and start + length <= self.T):
            raise ValueError(f"window: expected 0 <= start and start + length <= T={self.T}, got start={start}, length={length}")
        t0, t1 = start / self.fps, (start + length) / self.fps
        words, hist = [], []
        for w in self.history_words + self.words:
            if t0 < w.end <= t1 + 1e-9:
                words.append(Word(w.text, max(w.start, t0) - t0, min(w.end, t1) - t0))
            elif t0 - history_seconds < w.end <= t0:
                hist.append(Word(w.text, w.start - t0, w.end - t0))
        sl = slice(start, start + length)
        sa = None
        if self.sa_tokens is not None:
            a, b = int(round(t0 * self.sa_rate)), int(round(t1 * self.sa_rate))
            sa = self.sa_tokens[a:b]
        return replace(
            self,
            speaker_motion=self.speaker_motion[sl], listener_motion=self.listener_motion[sl],
            words=words, history_words=hist, sa_tokens=sa,
            emotion=None if self.emotion is None else self.emotion[sl],
            valence=None if self.valence is None else self.valence[sl],
            name=f"{self.name}[{start}:{start + length}]",
        )

    def windows(self, length: int = 240, stride: int | None = None, start: int = 0) -> list["Segment"]:
        """Non-padded windows of exactly ``length`` frames every ``stride`` (default ``length``)
        frames from ``start``; a tail shorter than ``length`` is dropped (documented, not padded)."""
        for name, v in (("length", length), ("stride", stride), ("start", start)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "start" else 1)):
                raise ValueError(f"windows: {name}: expected an int >= {0 if name == 'start' else 1}, got {v!r}")
        stride = length if stride is None else stride
        return [self.window(s, length) for s in range(start, self.T - length + 1, stride)]


def _rebuild(cls, kw: dict) -> Segment:
    """Unpickling / copying of a :class:`Segment`: ``cls(**kw)`` after marking the arrays of ``kw``
    read-only, as they were in the Segment that was pickled (fresh from the unpickler or
    ``deepcopy``, or that Segment's own under ``copy.copy``), so that they are shared, not copied."""
    for v in kw.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return cls(**kw)
