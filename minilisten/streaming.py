"""Live listener motion: feed the speaker chunk by chunk, get listener frames (n, 56) as they are ready.

    sl = StreamingListener(lm, vq, beta)          # LR tokens + VQ decoding: frames in steps of r = 8
    sl = StreamingARIG(model, beta, seed=0)       # ARIG-style: one frame per speaker frame
    for chunk in speaker:
        render(sl.push(motion=m, words=w, sa_tokens=s, emotion=e))
    render(sl.flush())

One core (:class:`ListenerStream`): checks, per-stream transactions, ``n_streams`` batched; each generator
plugs in its model step. :func:`parse_push`: server message -> push arguments. Design: docs/streaming.md.
"""
from __future__ import annotations

import base64
import binascii
import copy
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import tokens
from .arig import ARIG, check_steps, compiled_decode_frame, decode_frame, frame_sa, sample_frame, word_id
from .data.segment import D_MOTION, N_EMOTIONS, N_SHAPE, Word, as_word, check_emotion_probs, check_word
from .errors import UserError
from .generate import FAST_ARCHS, Generator, HFDecoder, Sampling
from .speaker import SA_SAMPLE_RATE
from .tokens import EPS, SA_RATE, check_sa_tokens, emotion_tokens, sa_bounds, sa_frame_bounds, step_ids, word_frame

MOTION_LIMIT = 1e3   # |speaker motion|: FLAME coefficients and radians are O(1); larger values only overflow a model
MAX_WORDS = 256      # words per stream waiting for their step or frame
F32_MAX = float(np.finfo(np.float32).max)
INT64 = 2 ** 63
PUSH_FIELDS = {"lr-token": ("words", "sa_tokens", "emotion", "motion", "frames", "audio", "audio_pcm16",
                            "sample_rate"),
               "arig": ("words", "sa_tokens", "emotion", "motion")}


class ProtocolError(UserError):
    """A client message the server cannot use: ``field``, ``expected`` and ``actual`` value."""

    def __init__(self, field: str, expected: str, actual):
        try:
            s = actual if isinstance(actual, str) else json.dumps(actual)
        except (TypeError, ValueError, OverflowError, RecursionError):
            s = repr(actual)
        self.field, self.expected = field, expected
        self.actual = s if len(s) <= 120 else f"{s[:120]}... ({len(s)} chars)"
        super().__init__(f"{field}: expected {expected}, got {self.actual}")


def _is_int(v, lo: int = -INT64) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and lo <= v < INT64


def _check_seed(seed) -> int:
    if not _is_int(seed, 0):
        raise UserError(f"seed: expected an int in [0, 2**63), got {seed!r}")
    return int(seed)


def _raised(r):
    if isinstance(r, Exception):
        raise r
    return r


def floats(x, name: str, shape: tuple, limit: float = F32_MAX) -> np.ndarray:
    """The one bound on pushed floats: finite numbers of ``shape`` (None: any length), ``|x| <= limit`` -> float32."""
    want = f"numbers of shape ({', '.join('n' if d is None else str(d) for d in shape)}{',' * (len(shape) == 1)})"
    try:
        a = np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise ProtocolError(name, want, type(x).__name__) from None
    if a.size == 0 and shape[0] is None:
        a = a.reshape((0, *shape[1:]))
    if a.ndim != len(shape) or any(d is not None and d != k for d, k in zip(shape, a.shape)):
        raise ProtocolError(name, want, f"shape {a.shape}")
    if a.size and not (np.isfinite(a).all() and np.abs(a).max() <= limit):
        raise ProtocolError(name, f"finite values with |x| <= {limit:.4g}", f"max |x| = {np.abs(a).max():.4g}")
    return a.astype(np.float32)


def parse_words(name: str, v) -> list[Word]:
    """A JSON list of ``[text, start, end]`` or ``{text, start, end}`` -> Words (times bounded)."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise ProtocolError(name, "a list of [text, start, end] or {text, start, end}", type(v).__name__)
    out = []
    for i, w in enumerate(v):
        try:
            out.append(as_word(w, f"{name}[{i}]"))
        except UserError:
            raise ProtocolError(f"{name}[{i}]", "[text, start, end] or {text, start, end} with finite times in "
                                "seconds, start <= end", w) from None
    return out


def _pcm16(b) -> np.ndarray:
    try:
        raw = base64.b64decode(b, validate=True) if isinstance(b, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or len(raw) % 2:
        raise ProtocolError("audio_pcm16", "base64 of little-endian int16 mono samples (an even byte count)",
                            b if raw is None else f"{len(raw)} bytes")
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


def _wire_int(m: dict, name: str, want: str) -> int:
    if not _is_int(m.get(name)):
        raise ProtocolError(name, want, m.get(name))
    return m[name]


def parse_push(msg: dict, kind: str = "lr-token") -> dict:
    """A ``push`` message -> push keyword arguments of the ``kind`` ("lr-token" or "arig") stream:
    fields, types, shapes and number ranges checked; times, orders and vocabularies by the stream."""
    allowed = PUSH_FIELDS[kind]
    unknown = sorted(set(msg) - {"type", "id", *allowed})
    if unknown:
        raise ProtocolError(unknown[0], f"one of the push fields of the {kind} model " + ", ".join(allowed), unknown[0])
    m = {k: v for k, v in msg.items() if k in allowed and v is not None}
    kw = {"words": parse_words("words", m.get("words"))}
    for name, shape, limit in (("motion", (None, D_MOTION), MOTION_LIMIT), ("emotion", (None, N_EMOTIONS), F32_MAX),
                               ("audio", (None,), F32_MAX)):
        if name not in m:
            continue
        if not isinstance(m[name], list):
            raise ProtocolError(name, "a list of numbers", type(m[name]).__name__)
        kw[name] = floats(m[name], name, shape, limit)
    if "sa_tokens" in m:
        if not isinstance(m["sa_tokens"], list) or not all(_is_int(t) for t in m["sa_tokens"]):
            raise ProtocolError("sa_tokens", "a list of integer token ids (int64)", m["sa_tokens"])
        kw["sa_tokens"] = np.asarray(m["sa_tokens"], np.int64).reshape(-1)
    if "audio_pcm16" in m:
        if "audio" in m:
            raise ProtocolError("audio", "one of audio (floats) and audio_pcm16 (base64), not both", "both")
        kw["audio"] = _pcm16(m["audio_pcm16"])
    if "frames" in m:
        kw["frames"] = _wire_int(m, "frames", "an integer number of speaker frames")
    if "audio" in kw:
        kw["sample_rate"] = _wire_int(m, "sample_rate", "the audio's sample rate in Hz (an integer)")
    return kw


@dataclass
class _State:
    """What every stream holds: the clock, and the input not yet consumed."""
    frames: int = 0                     # speaker frames received: the clock
    done: int = 0                       # LR steps decoded / ARIG frames made
    words: list = field(default_factory=list)          # words of steps / frames not yet made
    last_end: float = 0.0               # end of the last word received
    sa: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))      # pending SA tokens ...
    sa_base: int = 0                    # ... from this absolute token index
    emo: np.ndarray = field(default_factory=lambda: np.zeros((0, N_EMOTIONS)))  # pending emotion rows
    history: list = field(default_factory=list)        # W^h: words ending at or before 0 s
    seed: int = 0
    gen: torch.Generator | None = None  # the stream's sampling / noise generator (snapshotted with the stream)
    refill: bool = False                # restored from a snapshot: the decoder lost this stream's context


class ListenerStream:
    """The stream core of both generators (docs/streaming.md): ``push``, ``push_many``, ``flush``, ``reset``.
    A generator provides ``_fresh``, ``_advance`` (its batched model step) and optional parse hooks."""

    EXTRA: tuple = ()          # push arguments beyond motion, words, sa_tokens, emotion
    UNIT = "frame"             # what a word's end selects (LR: "LR step")

    def _setup(self, n_streams, fps, sa_rate, max_skew, max_push_frames, uses_sa: bool, needs_emotion: bool, n_sa):
        if isinstance(n_streams, bool) or not (isinstance(n_streams, int) and n_streams >= 1):
            raise UserError(f"n_streams: expected an int >= 1, got {n_streams!r}")
        for name, v in (("sa_rate", sa_rate), ("max_skew", max_skew), ("max_push_frames", max_push_frames)):
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf):
                raise UserError(f"{name}: expected a positive number or None, got {v!r}")
        self.n_streams, self.fps, self.sa_rate = n_streams, float(fps), float(sa_rate)
        self.max_skew, self.max_push_frames = max_skew, max_push_frames
        self.uses_sa, self.needs_emotion, self.n_sa = uses_sa, needs_emotion, n_sa

    def push(self, *, motion=None, words=(), sa_tokens=None, emotion=None, stream: int = 0, **extra) -> np.ndarray:
        """Feed the next chunk of ``stream`` -> the listener frames ``(k, 56)`` that became available."""
        out = self.push_many({stream: dict(motion=motion, words=words, sa_tokens=sa_tokens, emotion=emotion, **extra)})
        return _raised(out[stream])

    def push_many(self, chunks: dict) -> dict:
        """``{stream: push kwargs}`` -> ``{stream: frames (k, 56) or the exception that refused it}``;
        the streams' model steps share batched forwards."""
        if not isinstance(chunks, dict) or not chunks:
            raise UserError(f"chunks: expected a non-empty dict {{stream: push kwargs}}, got {chunks!r:.80}")
        out, todo = {}, {}
        for b, c in chunks.items():
            try:
                k = self._check_stream(b)
                todo[k] = self._parse(k, c)
            except Exception as e:   # this chunk's own fault (or a bug it triggers): it stays with this stream
                out[b] = e
        return {**out, **self._transact(todo, final=False)}

    def flush(self, stream: int = 0) -> np.ndarray:
        """End of ``stream``'s input: the frames still held back."""
        b = self._check_stream(stream)
        return _raised(self._transact({b: None}, final=True)[b])

    def reset(self, stream: int = 0, history_words=None, seed: int | None = None) -> None:
        """A new stream in slot ``stream`` (clock 0); ``history_words`` (ending <= 0 s) and ``seed``: default kept."""
        b = self._check_stream(stream)
        old = self.streams[b]
        hist = old.history if history_words is None else self._check_history(history_words)
        self.streams[b] = self._fresh(b, hist, old.seed if seed is None else _check_seed(seed))

    def state_sizes(self, stream: int = 0) -> dict:
        """Sizes of everything a stream holds (constant over a long stream), the model's caches included."""
        s = self.streams[self._check_stream(stream)]
        return dict(pending_words=len(s.words), sa_buffer=len(s.sa), emotion_buffer=len(s.emo), **self._sizes(s))

    def _check_stream(self, b) -> int:
        if not (_is_int(b, 0) and b < self.n_streams):
            raise UserError(f"stream: expected an index in [0, {self.n_streams}) ({self.n_streams} streams allocated), "
                            f"got {b!r:.40}")
        return int(b)

    @staticmethod
    def _check_history(words) -> list[Word]:
        return [check_word("history_words", i, w, 0.0) for i, w in enumerate(words)]

    def _parse(self, b: int, chunk) -> dict:
        """Check one chunk against stream b's state (no state changes) -> the parsed chunk."""
        where = f"stream {b}"
        allowed = ("motion", "words", "sa_tokens", "emotion", *self.EXTRA)
        if not isinstance(chunk, dict) or set(chunk) - set(allowed):
            got = sorted(map(str, chunk)) if isinstance(chunk, dict) else type(chunk).__name__
            raise UserError(f"chunks[{b}]: expected a dict of the push arguments {', '.join(allowed)}, got {got}")
        s = self.streams[b]
        p = dict(motion=None, emo=None, words=[], sa=None, frames=0, audio=None)
        if chunk.get("motion") is not None:
            p["motion"] = floats(chunk["motion"], f"motion ({where})", (None, D_MOTION), MOTION_LIMIT)
        if chunk.get("emotion") is not None:
            p["emo"] = check_emotion_probs(chunk["emotion"], f"emotion ({where})", rows="n")
        if (f := chunk.get("frames")) is not None and not _is_int(f, 0):
            raise UserError(f"frames ({where}): expected an int >= 0, got {f!r:.40}")
        counts = [(k, len(v)) for k, v in (("motion", p["motion"]), ("emotion", p["emo"])) if v is not None]
        if f is not None:
            counts.append(("frames", int(f)))
        n = p["frames"] = counts[0][1] if counts else 0
        for name, k in counts[1:]:
            if k != n:
                raise UserError(f"{name} ({where}): expected {n} frames, as {counts[0][0]} gives, got {k}")
        if self.max_push_frames is not None and n > self.max_push_frames:
            raise UserError(f"{counts[0][0]} ({where}): expected at most max_push_frames={self.max_push_frames} "
                            f"speaker frames per push, got {n}")
        if n and p["emo"] is None and self.needs_emotion:
            raise UserError(f"emotion ({where}): the model uses emotion, expected ({n}, {N_EMOTIONS}) probabilities "
                            f"for the {n} frames pushed, got None")
        clock = (s.frames + n) / self.fps
        last, words = s.last_end, list(chunk.get("words") or ())
        if len(s.words) + len(words) > MAX_WORDS:
            raise UserError(f"words ({where}): expected at most {MAX_WORDS} words waiting for their {self.UNIT}, "
                            f"got {len(s.words) + len(words)}")
        for i, w in enumerate(words):
            w = as_word(w, f"words[{i}] ({where})")
            at = f"words[{i}] ({w.text!r}, {where})"
            if w.end < last - EPS / self.fps:
                raise UserError(f"{at}: expected words in time order, got end {w.end:.3f} s before the previous "
                                f"word's end {last:.3f} s")
            if not 0 <= w.end <= clock + EPS / self.fps:
                raise UserError(f"{at}: expected end in [0, {clock:.3f}] s (earlier words are history_words; push "
                                f"the frames before or with their words), got {w.end:.3f}")
            k = self._word_unit(w.end)
            if k < s.done:
                raise UserError(f"{at}: expected a word ending in {self.UNIT} >= {s.done} ({self.UNIT}s "
                                f"0..{s.done - 1} are already decoded: push words no later than the frames their "
                                f"{self.UNIT} ends with), got end {w.end:.3f} s in {self.UNIT} {k}")
            p["words"].append(w)
            last = w.end
        if chunk.get("sa_tokens") is not None:
            p["sa"] = check_sa_tokens(chunk["sa_tokens"], self.n_sa, f"sa_tokens ({where})")
        self._parse_extra(s, p, chunk, where)
        new_sa = 0 if p["sa"] is None else p["sa"].size
        if not (n or p["words"] or new_sa or p["audio"] is not None):
            raise UserError(f"push ({where}): empty chunk: expected frames (motion, emotion or frames=), words, "
                            "sa_tokens or audio, got none")
        lead = (s.sa_base + len(s.sa) + new_sa) / self.sa_rate - clock
        if self.max_skew is not None and lead > self.max_skew and new_sa:   # a push that catches up is never refused
            raise UserError(f"sa_tokens ({where}): expected the SA stream at most max_skew={self.max_skew:g} s ahead "
                            f"of the frames pushed ({clock:.3f} s), got {lead:.3f} s ahead; push the frames too")
        if self.max_skew is not None and self.uses_sa and -lead > self.max_skew and n:
            raise UserError(f"sa_tokens ({where}): the model uses SA, expected the SA stream at most max_skew="
                            f"{self.max_skew:g} s behind the frames pushed ({clock:.3f} s), got {-lead:.3f} s behind; "
                            "push sa_tokens (or audio) with the frames")
        return p

    def _apply(self, s: _State, p: dict) -> None:
        """Add a parsed chunk to the stream's buffers."""
        s.frames += p["frames"]
        if p["emo"] is not None and self.needs_emotion:   # else the rows only count as the clock
            s.emo = np.concatenate([s.emo, p["emo"]])
        if p["words"]:
            s.words = s.words + p["words"]
            s.last_end = max(s.last_end, p["words"][-1].end)
        if p["sa"] is not None and p["sa"].size:
            s.sa = np.concatenate([s.sa, p["sa"]])
        if not self.uses_sa:   # the tokens only count for the skew
            s.sa_base, s.sa = s.sa_base + len(s.sa), s.sa[:0]

    def _transact(self, todo: dict, final: bool) -> dict:
        """Apply ``todo``'s parsed chunks and decode in shared forwards; a stream that fails (or gives non-finite
        frames) is put back with its error; if the shared forward fails, each stream is retried alone."""
        snap = {b: copy.deepcopy(self.streams[b]) for b in todo}
        try:
            res = self._advance(todo, final)
        except Exception:
            res = {}
            for b, p in todo.items():
                self._restore(b, snap[b])
                try:
                    res[b] = self._advance({b: p}, final)[b]
                except Exception as e:
                    self._restore(b, snap[b])
                    res[b] = e
        for b, r in res.items():
            if isinstance(r, np.ndarray) and not np.isfinite(r).all():
                self._restore(b, snap[b])
                res[b] = UserError(f"push (stream {b}): expected finite listener frames, got NaN/inf (the inputs "
                                   "drive the model out of range); the push was refused")
        return res

    def _restore(self, b: int, snap) -> None:
        self.streams[b] = copy.deepcopy(snap)
        self.streams[b].refill = True   # a decoder may have advanced past the snapshot

    # hooks of a generator (and _fresh, _advance, which each defines)
    def _word_unit(self, end: float) -> int:
        return word_frame(end, self.fps)

    def _parse_extra(self, s, p: dict, chunk: dict, where: str) -> None:
        pass


@dataclass
class _LRState(_State):
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0))   # audio kept for the tokenizer ...
    audio_base: int = 0                 # ... from this sample
    hist: list = field(default_factory=list)            # [<bos>] + history of the current LM context
    win: list = field(default_factory=list)             # speaker tokens of the steps in the context
    win_codes: list = field(default_factory=list)       # and their LR codes
    codes: list = field(default_factory=list)           # LR codes kept for VQ decoding ...
    codes_base: int = 0                 # ... from this code index
    emitted: int = 0                    # codes whose frames were returned


class StreamingListener(ListenerStream):
    """Lai et al.'s listener, live: LR step i is decoded, as offline, once its frames and SA tokens are in; frames
    of code k come once code ``k + lookahead`` is known. ``beta (100,)`` or ``(n_streams, 100)``; ``sampling``
    (default greedy) draws each stream's codes from its own generator, seeded ``seed`` (or by ``reset``);
    ``sa_tokenizer.encode(wav, sample_rate)`` for ``audio``; ``motion`` or ``frames=n`` advance the clock only."""

    EXTRA = ("frames", "audio", "sample_rate")
    UNIT = "LR step"
    _AUDIO_CONTEXT = 2   # hops of past audio re-analysed: the built-in tokenizer's frame k sees hops k-1, k

    def __init__(self, lm, vq, beta=None, *, n_streams: int = 1, fps: float | None = None, lookahead: int | None = None,
                 vq_context: int | None = None, history_words=(), sa_tokenizer=None,
                 sample_rate: int = SA_SAMPLE_RATE, sa_rate: float = SA_RATE, max_len: int | None = None,
                 compile: bool | str = False, dtype: torch.dtype | None = None, device=None,
                 generator: Generator | None = None, max_skew: float | None = 4.0, max_push_frames: int | None = None,
                 sampling: Sampling | None = None, seed: int = 0):
        fps = float(getattr(lm.config, "fps", 30.0)) if fps is None else fps
        for what, cfg in (("lm", lm.config), ("vq", vq.config)):
            model_fps = getattr(cfg, "fps", None)
            if model_fps is not None and abs(float(model_fps) - fps) > 1e-6:
                raise UserError(f"fps: expected {model_fps:g} (the frame rate {what}.config.fps was trained at), got "
                                f"{fps:g}; resample the speaker stream")
        self.modalities = tuple(lm.modalities)
        self._setup(n_streams, fps, sa_rate, max_skew, max_push_frames, "SA" in self.modalities,
                    "emo" in self.modalities, lm.vocab.n_sa)
        self.r = int(lm.config.r)
        if vq.rate != self.r:
            raise UserError(f"vq: expected {self.r} frames per code (lm.config.r), got vq.rate={vq.rate}")
        R, local = vq.receptive_field, vq.config.dec_norm not in ("in", "adain")
        self.lookahead = R if lookahead is None else lookahead
        self.vq_context = (R if local else 29) if vq_context is None else vq_context
        for name in ("lookahead", "vq_context"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise UserError(f"{name}: expected an int >= 0 (codes), got {getattr(self, name)!r}")
        self.lm, self.vq = lm, vq
        self.sa_tokenizer, self.sample_rate = sa_tokenizer, int(sample_rate)
        self.hop = int(round(self.sample_rate / self.sa_rate))   # audio samples per SA token
        self.max_len = int(max_len or lm.max_len)
        self.hf_decoders = None
        if generator is not None:
            if generator.lm is not lm or generator.batch < n_streams or generator.max_len != self.max_len:
                raise UserError(f"generator: expected a Generator of this lm with batch >= {n_streams} and max_len "
                                f"{self.max_len}, got batch {generator.batch}, max_len {generator.max_len}")
            if sampling is not None and sampling != generator.sampling:
                raise UserError(f"sampling: expected the generator's {generator.sampling} or None, got {sampling}")
            self.decoder = generator
        elif lm.backbone.config.model_type in FAST_ARCHS:
            self.decoder = Generator(lm, batch=n_streams, max_len=self.max_len, dtype=dtype, device=device,
                                     compile=compile, sampling=sampling)
        else:   # generic path: one HF static-cache decoder per stream
            self.decoder, self.hf_decoders = None, [HFDecoder(lm, 1, "static", self.max_len, sampling=sampling)
                                                    for _ in range(n_streams)]
        self.sampling = (self.decoder or self.hf_decoders[0]).sampling
        self.vq_device = vq.motion_mean.device
        hist, seed = self._check_history(history_words), _check_seed(seed)
        self.streams = [self._fresh(b, hist, seed) for b in range(n_streams)]
        self.betas: list = [None] * n_streams
        rows = np.asarray(beta) if beta is not None and np.ndim(beta) == 2 else None
        for b in range(n_streams):
            self.set_beta(rows[b] if rows is not None and len(rows) == n_streams else beta, b)

    def set_beta(self, beta, stream: int = 0) -> None:
        """The listener identity ``(100,)`` of ``stream``: frames decoded after the call use it."""
        b = self._check_stream(stream)
        if beta is None and self.vq.needs_beta:
            raise UserError(f"beta: this VQ-VAE (dec_norm={self.vq.config.dec_norm!r}) needs the listener's shape "
                            f"beta of shape ({N_SHAPE},), got None")
        self.betas[b] = None if beta is None else torch.as_tensor(floats(beta, "beta", (N_SHAPE,)),
                                                                  device=self.vq_device)

    def _fresh(self, b: int, history: list, seed: int) -> _LRState:
        if self.decoder is not None:
            self.decoder.reset([b])
        dev = (self.decoder or self.hf_decoders[b]).device
        return _LRState(history=history, seed=seed, hist=list(self.lm.history_ids(history)),
                        gen=torch.Generator(device=dev).manual_seed(seed))

    def _sizes(self, s: _LRState) -> dict:
        dec = self.decoder.state_bytes() if self.decoder is not None else None
        return dict(audio_buffer=len(s.audio), context_tokens=len(s.hist) + sum(len(x) + 1 for x in s.win),
                    window_steps=len(s.win), vq_codes=len(s.codes), decoder_state_bytes=dec)

    def progress(self, stream: int = 0) -> dict:
        """Speaker ``frames``, LR ``steps`` decoded, ``sa_tokens``, ``last_word_end`` (s), ``emitted`` steps."""
        s = self.streams[self._check_stream(stream)]
        return dict(frames=s.frames, steps=s.done, sa_tokens=s.sa_base + len(s.sa), last_word_end=s.last_end,
                    emitted=s.emitted)

    def codes(self, stream: int = 0, since: int = 0) -> list[int]:
        """LR codes of ``stream`` from step ``since`` on (only the last ``vq_context + lookahead`` or so are kept)."""
        s = self.streams[self._check_stream(stream)]
        if not (isinstance(since, (int, np.integer)) and s.codes_base <= since <= s.codes_base + len(s.codes)):
            raise UserError(f"since (stream {stream}): expected a step index in [{s.codes_base}, "
                            f"{s.codes_base + len(s.codes)}] (codes still held), got {since!r}")
        return list(s.codes[since - s.codes_base:])

    def sa_range(self, step: int) -> tuple[int, int]:
        """SA token indices ``[a, b)`` of LR step ``step``."""
        return sa_bounds(step, self.fps, self.r, self.sa_rate), sa_bounds(step + 1, self.fps, self.r, self.sa_rate)

    def _word_unit(self, end: float) -> int:
        return tokens.word_step(end, self.fps, self.r, self.lm.word_placement)

    def _parse_extra(self, s: _LRState, p: dict, chunk: dict, where: str) -> None:
        audio = chunk.get("audio")
        if audio is None:
            return
        if p["sa"] is not None:
            raise UserError(f"sa_tokens/audio ({where}): expected one of them, got both")
        if self.sa_tokenizer is None:
            raise UserError(f"audio ({where}): expected sa_tokens, or an sa_tokenizer given to StreamingListener")
        if chunk.get("sample_rate") != self.sample_rate:
            raise UserError(f"sample_rate ({where}): expected {self.sample_rate} Hz audio (the tokenizer's rate; "
                            f"resample the whole recording first), got {chunk.get('sample_rate')!r:.40}")
        a = np.asarray(audio.detach().cpu() if torch.is_tensor(audio) else audio)
        if not np.issubdtype(a.dtype, np.floating):   # int PCM would need scaling: refuse it
            raise UserError(f"audio ({where}): expected mono float samples, got dtype {a.dtype}")
        a = floats(a, f"audio ({where})", (None,))
        limit = None if self.max_push_frames is None else math.ceil(self.max_push_frames / self.fps * self.sample_rate)
        if limit is not None and a.size > limit:
            raise UserError(f"audio ({where}): expected at most {limit} samples (max_push_frames), got {a.size}")
        p["audio"] = a.astype(np.float64)
        p["sa"] = self._audio_tokens(s, p["audio"])

    def _audio_tokens(self, s: _LRState, new: np.ndarray) -> np.ndarray:
        """SA tokens of the complete hops in (kept + new) audio not made yet (kept: ``_AUDIO_CONTEXT`` hops early)."""
        buf = np.concatenate([s.audio, new])
        made, total = s.sa_base + len(s.sa), (s.audio_base + len(buf)) // self.hop
        if total <= made:
            return np.zeros(0, np.int64)
        tok = np.asarray(self.sa_tokenizer.encode(buf.astype(np.float32), self.sample_rate), dtype=np.int64)
        first = s.audio_base // self.hop
        return tok[made - first: total - first]

    def _apply(self, s: _LRState, p: dict) -> None:
        super()._apply(s, p)
        s.words.sort(key=lambda w: (w.end, w.start))
        if p["audio"] is not None:
            buf = np.concatenate([s.audio, p["audio"]])
            keep_from = max(0, (s.sa_base + len(s.sa) - self._AUDIO_CONTEXT) * self.hop)   # absolute sample
            cut = max(0, keep_from - s.audio_base)
            s.audio, s.audio_base = buf[cut:], s.audio_base + cut

    def _ready(self, s: _LRState) -> bool:
        i = s.done
        return s.frames >= self.r * (i + 1) and not (self.uses_sa and s.sa_base + len(s.sa) < self.sa_range(i)[1])

    def _take_step(self, s: _LRState) -> list[int]:
        """Speaker token ids of the stream's next step (the rules of :mod:`minilisten.tokens`); consumes input."""
        i, r = s.done, self.r
        words = sa = emo = None
        if "W" in self.modalities:
            k = sum(self._word_unit(w.end) <= i for w in s.words)   # words are sorted by end
            words, s.words = [self.lm.word_ids(w.text) for w in s.words[:k]], s.words[k:]
        else:
            s.words = []
        if self.uses_sa:
            a, b = (k - s.sa_base for k in self.sa_range(i))
            sa, s.sa, s.sa_base = s.sa[a:b], s.sa[b:], s.sa_base + b
        if "emo" in self.modalities:   # emo[0] is the step's first frame (emotion comes with every frame)
            emo = int(emotion_tokens(s.emo[:r], r)[0])
        s.emo = s.emo[r:]
        s.done += 1
        return step_ids(self.lm.vocab, words, sa, emo)

    def _context(self, s: _LRState, step: list[int]) -> list[int] | None:
        """Add ``step`` to the LM context -> None (the decoder continues) or the whole context to prefill."""
        j = self.lm.context_plan(s.hist, s.win + [step], with_lr=True, max_len=self.max_len)[-1]
        s.win.append(step)
        if j:
            head = self.lm.context_ids(s.hist, s.win, s.win_codes, j, j)    # [<bos>] + H_j + steps[j]
            s.hist = head[:len(head) - len(s.win[j])]
            s.win, s.win_codes = s.win[j:], s.win_codes[j:]
        elif len(s.win) > 1 and not s.refill:
            return None
        s.refill = False
        return self.lm.context_ids(s.hist, s.win, s.win_codes, len(s.win) - 1, 0)

    @torch.no_grad()
    def _advance(self, todo: dict, final: bool) -> dict:
        for b, p in todo.items():
            if p is not None:
                self._apply(self.streams[b], p)
        while True:   # the streams' k-th new steps share a forward
            pre, step = {}, {}
            for b in todo:
                s = self.streams[b]
                if self._ready(s):
                    ids = self._take_step(s)
                    try:
                        ctx = self._context(s, ids)
                    except ValueError as e:   # lm.context_plan: the step does not fit the LM context
                        raise UserError(f"push (stream {b}): {e}") from None
                    (step.__setitem__(b, ids) if ctx is None else pre.__setitem__(b, ctx))
            if not pre and not step:
                break
            if self.decoder is not None:
                for b in list(pre) + list(step):
                    self.decoder.gens[b] = self.streams[b].gen
                self.decoder.advance(prefill=pre, step=step)
                codes = self.decoder.codes.tolist()
            else:
                codes = {}
                for b in list(pre) + list(step):
                    self.hf_decoders[b].gens[0] = self.streams[b].gen
                    self.hf_decoders[b].advance(prefill={0: pre[b]} if b in pre else None,
                                                step={0: step[b]} if b in step else None)
                    codes[b] = int(self.hf_decoders[b].codes[0])
            for b in list(pre) + list(step):
                self.streams[b].win_codes.append(codes[b])
                self.streams[b].codes.append(codes[b])
        return {b: self._emit(b, final) for b in todo}

    @torch.no_grad()
    def _emit(self, b: int, final: bool) -> np.ndarray:
        s, r = self.streams[b], self.r
        k1 = s.codes_base + len(s.codes) - (0 if final else self.lookahead)   # frames of codes [emitted, k1) come
        out = np.zeros((0, D_MOTION), np.float32)
        if k1 > s.emitted:
            k0 = s.emitted
            start = max(s.codes_base, k0 - self.vq_context)
            codes = torch.tensor([s.codes[start - s.codes_base:]], dtype=torch.long, device=self.vq_device)
            beta = None if self.betas[b] is None else self.betas[b][None]
            out = self.vq.decode(codes, beta)[0, (k0 - start) * r:(k1 - start) * r].float().cpu().numpy()
            s.emitted = k1
        drop = max(0, s.emitted - self.vq_context - s.codes_base)   # keep vq_context codes of left context
        s.codes, s.codes_base = s.codes[drop:], s.codes_base + drop
        return out


@dataclass
class _ARIGState(_State):
    motion: list = field(default_factory=list)          # speaker frames waiting for their SA tokens
    sa_last: int = -1                   # the last SA token consumed (repeated by frames without a new one)
    st: dict | None = None              # the model's caches (ARIG.init_state at the first frame)
    beta: torch.Tensor | None = None    # (1, 100)


class StreamingARIG(ListenerStream):
    """The ARIG-style listener, live: frame t comes with the push that completes speaker frame t (and its SA
    tokens), equal to :func:`~minilisten.arig.arig_generate` with the stream's seed; ``reference (56,)``: raw start."""

    def __init__(self, model: ARIG, beta=None, *, n_streams: int = 1, seed: int = 0, steps: int | None = None,
                 reference=None, temperature: float | None = None, history_words=(), compile: bool = False,
                 max_skew: float | None = 2.0, max_push_frames: int | None = None):
        c = model.config
        self._setup(n_streams, c.fps, c.sa_rate, max_skew, max_push_frames, bool(c.n_sa), c.use_emotion, c.n_sa or None)
        self.model, self.cfg, self.temperature = model.eval(), c, model.noise_scale(temperature)
        self.steps = c.sample_steps if steps is None else steps
        check_steps(self.steps)
        self.dev = model.lis_mean.device
        self._frame = compiled_decode_frame(self.dev.type) if compile else decode_frame
        ref = model.lis_mean.cpu().numpy() if reference is None else reference
        self.ref = torch.as_tensor(floats(ref, "reference", (D_MOTION,), MOTION_LIMIT), device=self.dev)[None]
        hist, seed = self._check_history(history_words), _check_seed(seed)
        self.streams: list[_ARIGState] = [None] * n_streams
        for b in range(n_streams):
            self.streams[b] = self._fresh(b, hist, seed)
            self.set_beta(beta, b)

    def set_beta(self, beta, stream: int = 0) -> None:
        """Listener identity ``(100,)`` of ``stream`` (required when the model uses beta), from its next frame."""
        s = self.streams[self._check_stream(stream)]
        if beta is None and self.cfg.use_beta:
            raise UserError(f"beta: this model uses the listener's shape beta, expected shape ({N_SHAPE},), got None")
        row = np.zeros(N_SHAPE, np.float32) if beta is None else floats(beta, "beta", (N_SHAPE,))
        s.beta = torch.as_tensor(row, device=self.dev)[None]
        if s.st is not None:
            with torch.no_grad():
                s.st["beta"] = self.model._beta(s.beta)

    def _fresh(self, b: int, history: list, seed: int) -> _ARIGState:
        old = self.streams[b]
        return _ARIGState(history=history, seed=seed, words=list(history), beta=None if old is None else old.beta,
                          gen=torch.Generator(device=self.dev).manual_seed(seed))

    def _parse_extra(self, s: _ARIGState, p: dict, chunk: dict, where: str) -> None:
        if p["frames"] and p["motion"] is None:
            raise UserError(f"motion ({where}): expected the speaker's motion (n, {D_MOTION}) with the frames (the "
                            "ARIG model's input and clock), got None")

    def _sizes(self, s: _ARIGState) -> dict:
        return dict(kv_floats=0 if s.st is None else sum(v["k"].numel() + v["v"].numel() for v in s.st["kv"].values()))

    def _apply(self, s: _ARIGState, p: dict) -> None:
        super()._apply(s, p)
        if p["motion"] is not None:
            s.motion += list(p["motion"])

    def _input(self, s: _ARIGState) -> dict:
        """The next frame's model inputs (batch 1; :func:`~minilisten.arig.frame_inputs`' rules); consumes buffers."""
        c, t = self.cfg, s.done
        slots = np.full(c.sa_slots, -1, np.int64)
        if c.n_sa:
            b0, b1 = sa_frame_bounds(t, c.fps, c.sa_rate), sa_frame_bounds(t + 1, c.fps, c.sa_rate)
            slots, s.sa_last = frame_sa(s.sa[b0 - s.sa_base:b1 - s.sa_base], s.sa_last, c.sa_slots)
            s.sa, s.sa_base = s.sa[b1 - s.sa_base:], b1
        word, since = 0, c.since_max
        known = [w for w in s.words if word_frame(w.end, c.fps) <= t]
        if c.use_words and known:
            w = known[-1]
            word, since = word_id(w.text, c.word_buckets), min(t - word_frame(w.end, c.fps), c.since_max)
        s.words = s.words[max(0, len(known) - 1):]
        emo = np.zeros(N_EMOTIONS, np.float32)
        if c.use_emotion:
            emo, s.emo = s.emo[0], s.emo[1:]
        one = lambda x, dt=None: torch.as_tensor(np.asarray(x)[None], dtype=dt, device=self.dev)   # noqa: E731
        return {"spk": one(s.motion.pop(0), torch.float32), "sa": one(slots), "emo": one(emo, torch.float32),
                "word": one(word), "since": one(since), "beta": s.beta}

    def _due(self, s: _ARIGState, final: bool) -> bool:
        sa_in = s.sa_base + len(s.sa) >= sa_frame_bounds(s.done + 1, self.fps, self.cfg.sa_rate)
        return bool(s.motion) and (final or not self.uses_sa or sa_in)

    @torch.no_grad()
    def _advance(self, todo: dict, final: bool) -> dict:
        m, out = self.model, {b: [] for b in todo}
        for b, p in todo.items():
            if p is not None:
                self._apply(self.streams[b], p)
        while True:   # one tick: one frame of every stream that can make one
            ready = [b for b in todo if self._due(self.streams[b], final)]
            if not ready:
                break
            ss = [self.streams[b] for b in ready]
            inps = [self._input(s) for s in ss]
            for s, inp in zip(ss, inps):
                if s.st is None:
                    s.st = m.init_state(inp, self.ref)
            st = ss[0].st if len(ss) == 1 else _stack([s.st for s in ss])
            inp = {k: torch.cat([i[k] for i in inps]) for k in inps[0]}
            x = sample_frame(m, st, inp, [s.gen for s in ss], self.temperature, self.steps, self._frame)
            if len(ss) > 1:
                for s, part in zip(ss, _split(st, len(ss))):
                    s.st = part
            for b, s, row in zip(ready, ss, x.float().cpu().numpy()):
                s.done += 1
                out[b].append(row)
        return {b: np.stack(v) if v else np.zeros((0, D_MOTION), np.float32) for b, v in out.items()}


def _stack(states: list[dict]) -> dict:
    """ARIG step states of batch 1 (caches equally full, as after ``init_state``) -> one of their batch."""
    kv = {n: {"k": torch.cat([s["kv"][n]["k"] for s in states]), "v": torch.cat([s["kv"][n]["v"] for s in states]),
              "valid": c["valid"]} for n, c in states[0]["kv"].items()}
    return {"kv": kv, **{k: torch.cat([s[k] for s in states]) for k in ("beta", "m_hist", "a_hist")}}


def _split(st: dict, n: int) -> list[dict]:
    """Inverse of :func:`_stack`."""
    kv = st["kv"].items()
    return [{"kv": {name: {"k": c["k"][i:i + 1], "v": c["v"][i:i + 1], "valid": c["valid"]} for name, c in kv},
             **{k: st[k][i:i + 1] for k in ("beta", "m_hist", "a_hist")}} for i in range(n)]
