"""Real-time listener motion: feed the speaker chunk by chunk, get listener frames as they are ready.

    sl = StreamingListener(lm, vq, beta)                    # beta: the listener's shape (100,)
    for chunk in speaker:                                   # e.g. every 100 ms
        motion = sl.push(words=new_words, sa_tokens=new_sa, emotion=new_emotion_frames)
        render(motion)                                      # (n, 56): expression[0:50] + pose[50:56]
    render(sl.flush())                                      # end of the stream: the frames held back

Speaker input, in time order (times in seconds since the stream started, frames at ``fps``):
- ``motion (n, 56)``, ``emotion (n, 8)`` or ``frames=n``: the next n speaker frames, which advance
  the stream's clock (any of them; given together they must agree on n). The LR-token model is
  conditioned on words, SA and emotion only (Lai et al.), so of ``motion`` only its length counts;
  it is accepted so that this class and ``arig.StreamingARIG`` (which needs the speaker's motion)
  take the same pushes (:class:`ListenerStream`). ``emotion``: per-frame emotion probabilities,
  required with the ``emo`` modality;
- ``words``: ``Word(text, start, end)`` (or ``(text, start, end)``/dicts) that ended since the last
  push (Whisper-style word timings); each must end after the previous word and by the clock;
- ``sa_tokens``: the next acoustic tokens of the 50/s stream, or ``audio`` (mono float samples at
  ``sample_rate`` = 16 kHz) tokenized by ``sa_tokenizer`` (e.g. ``speaker.AcousticTokenizer``, which
  is causal: chunked audio gives exactly the tokens of the whole recording).

LR step i (frames ``[8i, 8i+8)``) is decoded as soon as all its speaker tokens are in: the frames
are pushed, and the SA tokens up to the step's end. Its tokens are built exactly as
``ListenerLM.speaker_steps`` builds them offline (the same rules of :mod:`minilisten.tokens`:
word-to-step rule, SA bounds, emotion tokens, step assembly), so streaming a segment gives the
same LR codes as the reference decoder ``generate.generate_nocache`` on it,
including the LM's sliding context (``ListenerLM.context_plan``): when the context would exceed
``max_len`` tokens, the stream keeps the history words and the last steps and re-prefills. Memory
stays constant: fixed KV caches, and per stream only the current context, unconsumed input and a
few codes are kept (``state_sizes()``).

VQ decoding (``VQVAE.decode``, convolutional, non-causal): frames of code k depend on
``vq.receptive_field`` = R codes on each side (R = 4 for the paper's shape). Frames of code k are
returned once code ``k + lookahead`` is known, decoded from a window reaching ``vq_context`` codes
before k and up to the newest code. The default is the exact choice, ``lookahead = R`` (a latency
of R LR steps, 4 x 267 ms at 30 fps): with a local decoder (dec_norm none/ln/adaln) the streamed
frames then equal offline ``vq.decode`` of all codes up to float rounding. Measured on a VQ-VAE
trained on the synthetic corpus (width 64, 600 steps; 4 segments of 32 s; listener motion std
0.063), max |streamed - offline| (rms):

    lookahead   0: 1.15 (0.044)   1: 0.37 (0.0095)   2: 0.083 (0.0026)   4 = R: 7e-7 (5e-8)

so ``lookahead=0`` (lowest latency) is available but visibly different. An instance-norm decoder
(dec_norm in/adain, the paper's) normalises over the decoded window, so no finite context is exact
w.r.t. decoding a whole long stream at once (rms 0.04 at lookahead R, window 30 codes, vs a whole
32-s segment); its default window (``vq_context = 29``: 30 codes = 240 frames) is the clip length
offline evaluation decodes. ``flush()`` emits the last ``lookahead`` codes' frames with the
sequence end as their right edge, as offline decoding does.

Bad input (out-of-order words, empty pushes, audio at another sample rate, a wrong beta shape, a
stream index beyond those allocated, a step too long for the LM context, ...) raises ``ValueError``
naming the field, the stream, the expected and the actual value. Pushes are transactional: a chunk
is checked, then applied to a copy of the stream and every step it completes is planned (token
lengths, context jumps) before anything changes, so a push that raises leaves the stream exactly
as it was: the next outputs are those of a stream that never saw the bad chunk.

Bounded buffers: the SA token stream may run ahead of the frame clock, and (when the LM uses SA)
fall behind it, by at most ``max_skew`` seconds (default 4 s); a push beyond that raises, naming
the stream. So the SA, emotion and word buffers hold at most ``max_skew`` s of input plus a step.
``fps`` defaults to the LM's frame rate (``lm.config.fps``); a stream at another rate (or a VQ
config recording another) is refused with an error: resample the speaker stream first.

Reading a stream's state: ``progress(stream)`` (frames, steps, SA tokens received, ...),
``codes(stream, since)`` (the LR codes still held), ``state_sizes(stream)`` (buffer sizes).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .data.segment import D_MOTION, N_EMOTIONS, N_SHAPE, Word, as_word, check_emotion_probs
from .generate import FAST_ARCHS, Generator, HFDecoder
from .speaker import SA_SAMPLE_RATE
from .tokens import EPS as _EPS
from .tokens import SA_RATE, check_sa_tokens, emotion_tokens, sa_bounds, step_ids, word_step


@dataclass
class _Stream:
    """Per-stream state (see ``StreamingListener.state_sizes``)."""
    frames: int = 0                     # speaker frames received: the clock
    steps: int = 0                      # LR steps decoded
    words: list = field(default_factory=list)           # received words of undecoded steps
    last_end: float = 0.0               # end time of the last received word
    sa: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))   # pending SA tokens ...
    sa_base: int = 0                    # ... from this absolute token index
    emo: np.ndarray = field(default_factory=lambda: np.zeros((0, N_EMOTIONS)))  # pending emotion frames ...
    emo_base: int = 0                   # ... from this frame
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0))  # audio kept for the tokenizer ...
    audio_base: int = 0                 # ... from this sample
    hist: list = field(default_factory=list)            # [<bos>] + history of the current LM context
    win: list = field(default_factory=list)             # speaker tokens of the steps in the context
    win_codes: list = field(default_factory=list)       # and their LR codes
    codes: list = field(default_factory=list)           # LR codes kept for VQ decoding ...
    codes_base: int = 0                 # ... from this code index
    emitted: int = 0                    # codes whose frames were returned


@runtime_checkable
class ListenerStream(Protocol):
    """What both live generators implement, so an integrator can swap one for the other:
    :class:`StreamingListener` (LR tokens + VQ decoding, frames in steps of 8) and
    :class:`minilisten.arig.StreamingARIG` (continuous, one frame per speaker frame).

        def listen(stream: ListenerStream, chunks):           # chunks: what the speaker did since the last call
            for motion, words, sa_tokens, emotion in chunks:
                yield stream.push(motion=motion, words=words, sa_tokens=sa_tokens, emotion=emotion)
            yield stream.flush()

    - ``push(*, motion (n, 56), words, sa_tokens (m,), emotion (n, 8))`` -> the listener frames
      ``(k, 56)`` float32 that became available. ``motion`` advances the clock by n frames at
      ``fps``; ``words`` are ``Word(text, start, end)`` that ended since the last push; SA tokens
      run at 50/s. Each input is checked even where the model does not use it (then it is ignored).
      Bad input raises ``ValueError`` naming the field and leaves the stream as it was.
    - ``flush()`` -> the frames still held back (end of the input).
    - ``reset()``: a new stream (clock 0); ``set_beta(beta (100,))``: the listener's identity.
    - ``fps``: the frame rate of the speaker input and of the listener output.
    """

    fps: float

    def push(self, *, motion=None, words=(), sa_tokens=None, emotion=None) -> np.ndarray: ...

    def flush(self) -> np.ndarray: ...

    def reset(self) -> None: ...

    def set_beta(self, beta) -> None: ...


class StreamingListener:
    """Listener motion from a live speaker stream (see the module docstring).

    ``lm``: a ``ListenerLM``; ``vq``: a ``VQVAE`` (``vq.rate == lm.config.r``); ``beta``: the
    listener's shape ``(100,)``, or ``(n_streams, 100)``, or None for a VQ without identity input.
    ``n_streams``: independent streams decoded together (``push(stream=...)``/``push_many``).
    ``lookahead``, ``vq_context``: VQ decoding latency/exactness in codes (module docstring; defaults:
    ``lookahead = vq.receptive_field``, ``vq_context`` = that for local decoders, 29 for
    instance-norm decoders). ``history_words``: W^h (words
    ending at or before 0 s). ``sa_tokenizer``: object with ``encode(wav, sample_rate) -> (M,) int``
    at 50 tokens/s (needed for ``audio``). ``max_len``: LM context (default ``lm.max_len``).
    ``compile``/``dtype``/``device``: of the :class:`~minilisten.generate.Generator`; or pass
    ``generator``, an existing one for ``lm`` with ``batch >= n_streams`` (e.g. already compiled).
    ``max_skew``: seconds the SA stream may run ahead of / behind the frame clock (module docstring).
    ``fps``: the speaker stream's frame rate, default and only accepted value ``lm.config.fps``.
    """

    def __init__(self, lm, vq, beta=None, *, n_streams: int = 1, fps: float | None = None, lookahead: int | None = None,
                 vq_context: int | None = None, history_words=(), sa_tokenizer=None,
                 sample_rate: int = SA_SAMPLE_RATE, sa_rate: float = SA_RATE, max_len: int | None = None,
                 compile: bool | str = False, dtype: torch.dtype | None = None, device=None,
                 generator: Generator | None = None, max_skew: float = 4.0):
        if not (isinstance(n_streams, int) and n_streams >= 1):
            raise ValueError(f"n_streams: expected an int >= 1, got {n_streams!r}")
        if fps is None:
            fps = float(getattr(lm.config, "fps", 30.0))
        if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps: expected a positive number, got {fps!r}")
        for what, cfg in (("lm", getattr(lm, "config", None)), ("vq", getattr(vq, "config", None))):
            model_fps = getattr(cfg, "fps", None)
            if model_fps is not None and abs(float(model_fps) - fps) > 1e-6:
                raise ValueError(f"fps: expected {model_fps:g} (the frame rate {what}.config.fps was trained at), got "
                                 f"{fps:g}; resample the speaker stream")
        for name, v in (("sa_rate", sa_rate), ("max_skew", max_skew)):
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: expected a positive number, got {v!r}")
        self.max_skew = float(max_skew)
        self.r = int(lm.config.r)
        if vq.rate != self.r:
            raise ValueError(f"vq: expected {self.r} frames per code (lm.config.r), got vq.rate={vq.rate}")
        local = vq.config.dec_norm not in ("in", "adain")
        R = vq.receptive_field
        vq_context = (R if local else 29) if vq_context is None else vq_context
        lookahead = R if lookahead is None else lookahead
        for name, v in (("lookahead", lookahead), ("vq_context", vq_context)):
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"{name}: expected an int >= 0 (codes), got {v!r}")
        self.lm, self.vq, self.n_streams, self.fps = lm, vq, n_streams, float(fps)
        self.lookahead, self.vq_context, self.local_decoder = lookahead, vq_context, local
        self.sa_tokenizer, self.sample_rate, self.sa_rate = sa_tokenizer, int(sample_rate), float(sa_rate)
        self.modalities = tuple(lm.modalities)
        self.max_len = int(max_len or lm.max_len)
        if generator is not None:
            if generator.lm is not lm or generator.batch < n_streams or generator.max_len != self.max_len:
                raise ValueError(f"generator: expected a Generator of this lm with batch >= {n_streams} and max_len "
                                 f"{self.max_len}, got batch {generator.batch}, max_len {generator.max_len}")
            self.decoder, self.hf_decoders = generator, None
        elif lm.backbone.config.model_type in FAST_ARCHS:
            self.decoder = Generator(lm, batch=n_streams, max_len=self.max_len, dtype=dtype, device=device, compile=compile)
            self.hf_decoders = None
        else:   # generic path: one HF static-cache decoder per stream
            self.decoder, self.hf_decoders = None, [HFDecoder(lm, 1, "static", self.max_len) for _ in range(n_streams)]
        self.vq_device = vq.motion_mean.device
        self.history_words = self._check_history(history_words)
        self.betas: list[torch.Tensor | None] = [None] * n_streams
        self.set_beta(beta)
        self.streams = [_Stream() for _ in range(n_streams)]
        self.reset()

    # ------------------------------------------------------------------ configuration
    def set_beta(self, beta, stream: int | None = None) -> None:
        """The listener identity (shape beta ``(100,)``) of ``stream`` (default: all streams; then
        ``(n_streams, 100)`` gives one per stream). Frames decoded after the call use it."""
        streams = list(range(self.n_streams)) if stream is None else [self._check_stream(stream)]
        if beta is None:
            if self.vq.needs_beta:
                raise ValueError(f"beta: this VQ-VAE (dec_norm={self.vq.config.dec_norm!r}) needs the listener's "
                                 f"shape beta of shape ({N_SHAPE},), got None")
            for b in streams:
                self.betas[b] = None
            return
        t = torch.as_tensor(np.asarray(beta.detach().cpu() if torch.is_tensor(beta) else beta, dtype=np.float64))
        if t.shape == (N_SHAPE,):
            rows = [t] * len(streams)
        elif stream is None and t.shape == (self.n_streams, N_SHAPE):
            rows = list(t)
        else:
            want = f"({N_SHAPE},)" + (f" or ({self.n_streams}, {N_SHAPE})" if stream is None else "")
            raise ValueError(f"beta: expected shape {want}, got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError("beta: expected finite values, got NaN/inf")
        for b, row in zip(streams, rows):
            self.betas[b] = row.to(self.vq_device, torch.float32)

    def reset(self, stream: int | None = None, history_words=None) -> None:
        """Start ``stream`` (default all) afresh: clock 0, no context, no pending input; the
        caches stay allocated. ``history_words`` replaces the W^h given at construction."""
        streams = list(range(self.n_streams)) if stream is None else [self._check_stream(stream)]
        if history_words is not None:
            self.history_words = self._check_history(history_words)
        hist = self.lm.history_ids(self.history_words)
        for b in streams:
            self.streams[b] = _Stream(hist=list(hist))
        if self.decoder is not None:
            self.decoder.reset(streams)

    def state_sizes(self, stream: int = 0) -> dict:
        """Sizes of everything a stream holds (constant over a long stream) + the decoder's bytes."""
        s = self.streams[self._check_stream(stream)]
        dec = self.decoder.state_bytes() if self.decoder is not None else None
        return dict(pending_words=len(s.words), sa_buffer=len(s.sa), emotion_buffer=len(s.emo), audio_buffer=len(s.audio),
                    context_tokens=len(s.hist) + sum(len(x) + 1 for x in s.win), window_steps=len(s.win),
                    vq_codes=len(s.codes), decoder_state_bytes=dec)

    def progress(self, stream: int = 0) -> dict:
        """Where ``stream`` stands: ``frames`` (speaker frames received), ``steps`` (LR steps
        decoded), ``sa_tokens`` (SA tokens received or made from audio), ``last_word_end`` (end
        time of the latest word, s), ``emitted`` (LR steps whose frames were returned)."""
        s = self.streams[self._check_stream(stream)]
        return dict(frames=s.frames, steps=s.steps, sa_tokens=s.sa_base + len(s.sa), last_word_end=s.last_end,
                    emitted=s.emitted)

    def codes(self, stream: int = 0, since: int = 0) -> list[int]:
        """LR codes of ``stream`` from step index ``since`` on. The stream keeps only the last
        ``vq_context + lookahead`` or so (for VQ decoding): read them after each push."""
        s = self.streams[self._check_stream(stream)]
        if not (isinstance(since, (int, np.integer)) and s.codes_base <= since <= s.codes_base + len(s.codes)):
            raise ValueError(f"since (stream {stream}): expected a step index in [{s.codes_base}, "
                             f"{s.codes_base + len(s.codes)}] (codes still held), got {since!r}")
        return list(s.codes[since - s.codes_base:])

    def sa_range(self, step: int) -> tuple[int, int]:
        """SA token indices ``[a, b)`` of LR step ``step`` (the tokens a push must bring for it)."""
        return sa_bounds(step, self.fps, self.r, self.sa_rate), sa_bounds(step + 1, self.fps, self.r, self.sa_rate)

    # ------------------------------------------------------------------ pushing
    def push(self, words=(), sa_tokens=None, emotion=None, *, motion=None, frames: int | None = None, audio=None,
             sample_rate: int | None = None, stream: int = 0) -> np.ndarray:
        """Feed the next chunk of ``stream``; returns the listener motion frames ``(n, 56)`` float32
        that became available (n is a multiple of 8; often 0). See the module docstring."""
        return self.push_many({stream: dict(words=words, sa_tokens=sa_tokens, emotion=emotion, motion=motion,
                                            frames=frames, audio=audio, sample_rate=sample_rate)})[stream]

    def push_many(self, chunks: dict) -> dict:
        """``{stream: dict(words=, sa_tokens=, emotion=, motion=, frames=, audio=, sample_rate=)}`` ->
        ``{stream: frames (n, 56)}``; the streams' LM steps share forward passes."""
        if not isinstance(chunks, dict) or not chunks:
            raise ValueError(f"chunks: expected a non-empty dict {{stream: chunk}}, got {chunks!r}")
        for b, c in chunks.items():
            self._check_stream(b)
            if not isinstance(c, dict):
                raise ValueError(f"chunks[{b}]: expected a dict of push arguments, got {type(c).__name__}")
        parsed = {int(b): self._parse(int(b), **c) for b, c in chunks.items()}
        snap = {b: copy.deepcopy(self.streams[b]) for b in parsed}
        for b, p in parsed.items():   # plan on copies: whatever decoding would raise, raise it now
            self._plan(b, copy.deepcopy(snap[b]), p)
        try:
            for b, p in parsed.items():   # everything is valid: apply
                self._apply(self.streams[b], p)
            self._decode(list(parsed))
            return {b: self._emit(b, final=False) for b in parsed}
        except BaseException:   # not reachable by bad input (planned above); keep the streams usable
            for b, s in snap.items():
                s.win, s.win_codes = [], []   # the decoder may have advanced: re-prefill the next step
                self.streams[b] = s
            raise

    def flush(self, stream: int = 0) -> np.ndarray:
        """End of ``stream``'s input: return the frames still held back by ``lookahead``, decoded
        with the sequence end as their right edge (as offline decoding does)."""
        return self._emit(self._check_stream(stream), final=True)

    # ------------------------------------------------------------------ input checks
    def _check_stream(self, b) -> int:
        if not (isinstance(b, (int, np.integer)) and not isinstance(b, bool) and 0 <= b < self.n_streams):
            raise ValueError(f"stream: expected an index in [0, {self.n_streams}) ({self.n_streams} streams allocated), "
                             f"got {b!r}")
        return int(b)

    def _check_history(self, words) -> list[Word]:
        out = [as_word(w, f"history_words[{i}]") for i, w in enumerate(words)]
        for i, w in enumerate(out):
            if w.end > _EPS:
                raise ValueError(f"history_words[{i}] ({w.text!r}): expected end <= 0 s (before the stream), got {w.end:.3f}")
        return out

    def _word_step(self, end: float) -> int:
        return word_step(end, self.fps, self.r, self.lm.word_placement)

    def _parse(self, b: int, words=(), sa_tokens=None, emotion=None, motion=None, frames=None, audio=None,
               sample_rate=None) -> dict:
        """Check one chunk against the stream's state; returns the parsed chunk. No state changes."""
        s = self.streams[b]
        where = f"stream {b}"
        counts = []   # (what, n): every input that says how many frames this push brings
        if motion is not None:
            m = np.asarray(motion)
            if m.ndim != 2 or m.shape[1] != D_MOTION or not np.issubdtype(m.dtype, np.number) \
                    or not np.isfinite(m).all():
                raise ValueError(f"motion ({where}): expected finite speaker frames of shape (n, {D_MOTION}), got "
                                 f"shape {m.shape}, dtype {m.dtype}")
            counts.append(("the motion rows pushed", m.shape[0]))
        emo = None
        if emotion is not None:
            emo = check_emotion_probs(emotion, f"emotion ({where})", rows="n")
            counts.append(("the emotion rows pushed", emo.shape[0]))
        if frames is not None:
            if isinstance(frames, bool) or not (isinstance(frames, (int, np.integer)) and frames >= 0):
                raise ValueError(f"frames ({where}): expected an int >= 0, got {frames!r}")
            counts.append(("frames=", int(frames)))
        n = counts[0][1] if counts else 0
        for what, k in counts[1:]:
            if k != n:
                field_ = "frames" if what == "frames=" else "emotion"
                raise ValueError(f"{field_} ({where}): expected {n} ({counts[0][0]}), got {k}")
        if n and emo is None and "emo" in self.modalities:
            raise ValueError(f"emotion ({where}): the LM uses the 'emo' modality, expected ({n}, {N_EMOTIONS}) "
                             f"probabilities for the {n} frames pushed, got None")
        clock = (s.frames + n) / self.fps
        ws = [as_word(w, f"words[{i}] ({where})") for i, w in enumerate(words or ())]
        last = s.last_end
        for i, w in enumerate(ws):
            if w.end < last - _EPS / self.fps:
                raise ValueError(f"words[{i}] ({w.text!r}, {where}): expected words in time order, got end {w.end:.3f} s "
                                 f"before the previous word's end {last:.3f} s")
            if w.end < 0:
                raise ValueError(f"words[{i}] ({w.text!r}, {where}): expected end >= 0 s (earlier words are "
                                 f"history_words), got {w.end:.3f}")
            if w.end > clock + _EPS / self.fps:
                raise ValueError(f"words[{i}] ({w.text!r}, {where}): expected end <= {clock:.3f} s (the end of the "
                                 f"frames pushed so far), got {w.end:.3f}; push the frames first or with the word")
            if self._word_step(w.end) < s.steps:
                raise ValueError(f"words[{i}] ({w.text!r}, {where}): ends at {w.end:.3f} s in LR step "
                                 f"{self._word_step(w.end)}, already decoded (steps 0..{s.steps - 1}); words must be "
                                 "pushed no later than the frames their step ends with")
            last = w.end
        sa = None
        if sa_tokens is not None and audio is not None:
            raise ValueError(f"sa_tokens/audio ({where}): expected one of them, got both")
        if sa_tokens is not None:
            sa = check_sa_tokens(sa_tokens, self.lm.vocab.n_sa, f"sa_tokens ({where})")
        new_audio = None
        if audio is not None:
            if self.sa_tokenizer is None:
                raise ValueError(f"audio ({where}): expected sa_tokens, or an sa_tokenizer given to StreamingListener")
            if sample_rate != self.sample_rate:
                raise ValueError(f"sample_rate ({where}): expected {self.sample_rate} Hz audio (the tokenizer's rate; "
                                 f"resample the whole recording first), got {sample_rate!r}")
            new_audio = np.asarray(audio.detach().cpu() if torch.is_tensor(audio) else audio)
            if new_audio.ndim != 1 or not np.issubdtype(new_audio.dtype, np.floating):
                raise ValueError(f"audio ({where}): expected mono float samples of shape (N,), got {new_audio.shape} "
                                 f"{new_audio.dtype}")
            sa = self._audio_tokens(s, new_audio)
        if not (n or ws or (sa is not None and sa.size)) and (new_audio is None or new_audio.size == 0):
            raise ValueError(f"push ({where}): empty chunk: expected frames (motion, emotion or frames=), words, sa_tokens or "
                             "audio, got none")
        n_sa_total = s.sa_base + len(s.sa) + (0 if sa is None else sa.size)
        lead = n_sa_total / self.sa_rate - clock
        if lead > self.max_skew and sa is not None and sa.size:   # a push that catches up is never refused
            raise ValueError(f"sa_tokens ({where}): expected the SA stream at most max_skew={self.max_skew:g} s ahead of "
                             f"the frames pushed ({clock:.3f} s), got {n_sa_total} tokens = {lead:.3f} s ahead; push the "
                             f"frames (motion, emotion or frames=) too")
        if "SA" in self.modalities and -lead > self.max_skew and n:
            raise ValueError(f"sa_tokens ({where}): the LM uses SA, expected the SA stream at most max_skew="
                             f"{self.max_skew:g} s behind the frames pushed ({clock:.3f} s), got {n_sa_total} tokens = "
                             f"{-lead:.3f} s behind; push sa_tokens or audio with the frames")
        return dict(frames=n, emo=emo, words=ws, sa=sa, audio=new_audio)

    def _plan(self, b: int, s: _Stream, p: dict) -> None:
        """Apply chunk ``p`` to ``s`` (a copy of stream b) and build every step it completes, with
        placeholder LR codes: raises what decoding the chunk would raise (a step that does not fit
        the LM context, ...) before the stream changes."""
        self._apply(s, p)
        while self._ready(s):
            ids = self._take_step(s)
            try:
                self._context(s, ids)
            except ValueError as e:   # lm.context_plan: the step does not fit the context
                raise ValueError(f"push (stream {b}): {e}") from e
            held = len(s.hist) + sum(len(x) + 1 for x in s.win)   # context tokens incl. the next LR token
            if held > self.max_len:
                raise ValueError(f"push (stream {b}): step {s.steps - 1} expected a context of at most max_len="
                                 f"{self.max_len} tokens, got {held}")
            s.win_codes.append(0)
            s.codes.append(0)

    # ------------------------------------------------------------------ state updates
    _HOP = 320        # audio samples per SA token at 16 kHz (50/s)
    _AUDIO_CONTEXT = 2  # hops of past audio re-analysed: the built-in tokenizer's frame k sees hops k-1, k (and k-1's delta)

    def _audio_tokens(self, s: _Stream, new: np.ndarray) -> np.ndarray:
        """SA tokens of the complete 20 ms hops in (kept + new) audio, excluding those already made.
        The kept audio starts ``_AUDIO_CONTEXT`` hops before the first new token, so a causal
        tokenizer (``AcousticTokenizer``) gives the same tokens as on the whole recording."""
        hop = int(round(self.sample_rate / self.sa_rate))
        buf = np.concatenate([s.audio, new.astype(np.float64)])
        made = s.sa_base + len(s.sa)                         # tokens produced so far (absolute)
        total = (s.audio_base + len(buf)) // hop
        if total <= made:
            return np.zeros(0, np.int64)
        tok = np.asarray(self.sa_tokenizer.encode(buf.astype(np.float32), self.sample_rate), dtype=np.int64)
        first = s.audio_base // hop                          # absolute index of tok[0]
        return tok[made - first: total - first]

    def _apply(self, s: _Stream, p: dict) -> None:
        s.frames += p["frames"]
        if p["emo"] is not None:
            s.emo = np.concatenate([s.emo, p["emo"]])
        if p["words"]:
            s.words = sorted(s.words + p["words"], key=lambda w: (w.end, w.start))
            s.last_end = max(s.last_end, p["words"][-1].end)
        if p["sa"] is not None and p["sa"].size:
            s.sa = np.concatenate([s.sa, p["sa"]])
        if p["audio"] is not None:
            hop = int(round(self.sample_rate / self.sa_rate))
            buf = np.concatenate([s.audio, p["audio"].astype(np.float64)])
            keep_from = max(0, ((s.sa_base + len(s.sa)) - self._AUDIO_CONTEXT) * hop)   # absolute sample
            cut = max(0, keep_from - s.audio_base)
            s.audio, s.audio_base = buf[cut:], s.audio_base + cut

    def _sa_bound(self, i: int) -> int:
        return sa_bounds(i, self.fps, self.r, self.sa_rate)

    def _ready(self, s: _Stream) -> bool:
        i = s.steps
        if s.frames < self.r * (i + 1):
            return False
        if "SA" in self.modalities and s.sa_base + len(s.sa) < self._sa_bound(i + 1):
            return False
        return True

    def _take_step(self, s: _Stream) -> list[int]:
        """Speaker token ids of the stream's next step (the rules of :mod:`minilisten.tokens`, as
        ``ListenerLM.speaker_steps`` applies them offline); consumes input."""
        i, r = s.steps, self.r
        words = sa = emo = None
        if "W" in self.modalities:
            k = 0
            while k < len(s.words) and self._word_step(s.words[k].end) <= i:
                k += 1
            words, s.words = [self.lm.word_ids(w.text) for w in s.words[:k]], s.words[k:]
        else:
            s.words = []
        if "SA" in self.modalities:
            a, b = self._sa_bound(i) - s.sa_base, self._sa_bound(i + 1) - s.sa_base
            sa, s.sa, s.sa_base = s.sa[a:b], s.sa[b:], s.sa_base + b
        else:
            s.sa, s.sa_base = s.sa[:0], s.sa_base + len(s.sa)
        if "emo" in self.modalities:
            a = r * i - s.emo_base
            emo = int(emotion_tokens(s.emo[a:a + r], r)[0])
        s.emo, s.emo_base = s.emo[r * (i + 1) - s.emo_base:], r * (i + 1)
        s.steps += 1
        return step_ids(self.lm.vocab, words, sa, emo)

    def _context(self, s: _Stream, step: list[int]) -> list[int] | None:
        """Add ``step`` to the stream's LM context; None when it continues the cached context, else
        the whole new context to prefill (the first step, or a jump of ``lm.context_plan``)."""
        if not s.win:
            s.win = [step]
            return s.hist + step
        j = self.lm.context_plan(s.hist, s.win + [step], with_lr=True, max_len=self.max_len)[-1]
        s.win.append(step)
        if j == 0:
            return None
        head = self.lm.context_ids(s.hist, s.win, s.win_codes, j, j)    # [<bos>] + H_j + steps[j]
        s.hist = head[:len(head) - len(s.win[j])]
        s.win, s.win_codes = s.win[j:], s.win_codes[j:]
        return self.lm.context_ids(s.hist, s.win, s.win_codes, len(s.win) - 1, 0)

    @torch.no_grad()
    def _decode(self, streams: list[int]) -> None:
        """Decode every ready step of ``streams``; the streams' k-th new steps share a forward."""
        while True:
            pre, step = {}, {}
            for b in streams:
                s = self.streams[b]
                if self._ready(s):
                    ids = self._take_step(s)
                    ctx = self._context(s, ids)
                    (step.__setitem__(b, ids) if ctx is None else pre.__setitem__(b, ctx))
            if not pre and not step:
                return
            if self.decoder is not None:
                self.decoder.advance(prefill=pre, step=step)
                codes = self.decoder.codes.tolist()
            else:
                codes = [0] * self.n_streams
                for b in list(pre) + list(step):
                    self.hf_decoders[b].advance(prefill={0: pre[b]} if b in pre else None, step={0: step[b]} if b in step else None)
                    codes[b] = int(self.hf_decoders[b].codes[0])
            for b in list(pre) + list(step):
                s = self.streams[b]
                s.win_codes.append(codes[b])
                s.codes.append(codes[b])

    @torch.no_grad()
    def _emit(self, b: int, final: bool) -> np.ndarray:
        s, r = self.streams[b], self.r
        n = s.codes_base + len(s.codes)                      # codes known
        k1 = n if final else n - self.lookahead              # frames of codes [emitted, k1) are returned
        out = np.zeros((0, D_MOTION), np.float32)
        if k1 > s.emitted:
            k0 = s.emitted
            start = max(s.codes_base, k0 - self.vq_context)
            codes = torch.tensor([s.codes[start - s.codes_base:]], dtype=torch.long, device=self.vq_device)
            beta = None if self.betas[b] is None else self.betas[b][None]
            motion = self.vq.decode(codes, beta)[0, (k0 - start) * r:(k1 - start) * r]
            out = motion.float().cpu().numpy()
            s.emitted = k1
        drop = max(0, s.emitted - self.vq_context - s.codes_base)   # keep vq_context codes of left context
        s.codes, s.codes_base = s.codes[drop:], s.codes_base + drop
        return out
