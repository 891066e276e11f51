"""WebSocket server: live listener frames for avatar and robot stacks (``python -m minilisten serve``).

    python -m minilisten serve --vq runs/demo/vq_paper --lm runs/demo/lm_full --max-sessions 8

One :class:`~minilisten.streaming.StreamingListener` with ``n_streams = max_sessions`` serves every
connection: a connection takes a free stream slot (reset on connect and on disconnect), and a
batching loop gathers the waiting messages of all sessions in rounds (round k: each session's
k-th message; a round's pushes are one ``push_many``), so concurrent sessions share the LM's
forward passes. Decoding runs in one worker thread; the asyncio event loop only parses, queues and
sends. Protocol version :data:`PROTOCOL`, JSON text messages: every client message (``push``,
``set_beta``, ``reset``, ``end``/``flush``) gets exactly one reply in order (``frames``, ``ok`` or
``error`` naming the field, expected and actual value; the session goes on); the server opens
with ``hello``. The message table is in the README, section "Streaming server". The cost of the
batched decoder's step grows with ``max_sessions`` (it runs every slot, busy or idle): size
``--max-sessions`` to the expected load.

``python -m minilisten serve --arig DIR`` serves the ARIG-style model instead (hello ``kind:
"arig"``): one :class:`~minilisten.arig.MultiStreamARIG`; a push carries the speaker's ``motion``
(n x 56 frames, the clock) with its words / SA tokens / emotion rows, and its reply holds one
listener frame per speaker frame whose inputs are complete (no lookahead). A round's pushes are one
``push_many``: one batched ``ARIG.step`` per frame tick over the sessions with a frame to make.
A ``reset`` may carry ``seed`` (the session's noise seed; default the server's ``--seed``).

Per session the server holds at most ``max_queue`` unprocessed client messages (then it stops
reading: TCP back-pressure) and ``max_queue`` unsent replies (a client that does not read them is
closed with code 1008), messages of at most ``max_message`` bytes (larger: closed with 1009), and
the StreamingListener's bounded stream state: memory is bounded by ``max_sessions``.

Robot-head angles (``head_rpy_deg``, ``jaw_open_deg``): pose ``[50:53]`` is FLAME's global head
rotation and ``[53:56]`` its jaw rotation, both axis-angle vectors in radians in FLAME's frame
(x: to the subject's left, y: up, z: out of the face). The head rotation is decomposed as
``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)``, which is ROS REP-103's roll-pitch-yaw (``Rz(yaw) Ry(pitch)
Rx(roll)`` with x forward, y left, z up): positive pitch = nose down, positive yaw = turning to the
subject's own left, positive roll = tilting the top of the head to the subject's right (left ear
up). ``jaw_open_deg`` is the pitch of the jaw rotation: positive opens the mouth (not clamped).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

try:
    from websockets.exceptions import ConnectionClosed
except ImportError:   # the optional extra is missing: ListenerServer.run / main say how to install it
    class ConnectionClosed(Exception):
        pass

from .cli_config import ArgumentParser
from .data.segment import D_MOTION, EMOTIONS, N_EXP, N_SHAPE
from .streaming import StreamingListener

#: 2 = 1 + hello ``kind`` / ``min_client_protocol`` / ``input.required`` and the ARIG model kind
#: (push ``motion``, reset ``seed``); every version-1 message and reply of the LR-token kind is unchanged
PROTOCOL = 2
KINDS = ("lr-token", "arig")
CLIENT_TYPES = ("push", "set_beta", "reset", "flush", "end")
PUSH_FIELDS = ("type", "id", "words", "sa_tokens", "emotion", "motion", "frames", "audio", "audio_pcm16", "sample_rate")
ARIG_PUSH_FIELDS = ("type", "id", "words", "sa_tokens", "emotion", "motion")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765


# ----------------------------------------------------------------------------- pose -> robot angles
def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: axis-angle vectors ``(..., 3)`` (radians) -> rotation matrices ``(..., 3, 3)``."""
    aa = np.asarray(aa, np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    k = aa / np.where(theta > 1e-12, theta, 1.0)
    x, y, z = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(x)
    K = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    s, c = np.sin(theta)[..., None], np.cos(theta)[..., None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def matrix_to_rpy(R: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` in FLAME's frame -> ``(..., 3)`` (roll, pitch, yaw) radians
    with ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` (module docstring)."""
    pitch = np.arcsin(np.clip(-R[..., 1, 2], -1.0, 1.0))
    yaw = np.arctan2(R[..., 0, 2], R[..., 2, 2])
    roll = np.arctan2(R[..., 1, 0], R[..., 1, 1])
    return np.stack([roll, pitch, yaw], -1)


def robot_angles(motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Listener frames ``(n, 56)`` -> head ``(n, 3)`` roll/pitch/yaw and jaw opening ``(n,)``, degrees."""
    head = np.degrees(matrix_to_rpy(axis_angle_to_matrix(motion[:, N_EXP:N_EXP + 3])))
    jaw = np.degrees(matrix_to_rpy(axis_angle_to_matrix(motion[:, N_EXP + 3:N_EXP + 6]))[:, 1])
    return head, jaw


# ----------------------------------------------------------------------------- protocol errors
class ProtocolError(ValueError):
    """A client message the server cannot use: ``field``, ``expected`` and ``actual`` value."""

    def __init__(self, field: str, expected: str, actual):
        self.field, self.expected, self.actual = field, expected, _short(actual)
        super().__init__(f"{field}: expected {expected}, got {self.actual}")


def _short(v, n: int = 120) -> str:
    s = v if isinstance(v, str) else json.dumps(v) if _jsonable(v) else repr(v)
    return s if len(s) <= n else s[:n] + f"... ({len(s)} chars)"


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


_STREAM_REF = re.compile(r",\s*stream \d+|\s*\(stream \d+\)")


def error_message(e: ValueError, op: str | None = None, msg_id=None) -> dict:
    """The ``error`` reply for ``e``: a :class:`ProtocolError`, or a StreamingListener ValueError
    (``"FIELD (stream b): expected X, got Y"``; the internal stream slot is removed)."""
    if isinstance(e, ProtocolError):
        fld, exp, act, text = e.field, e.expected, e.actual, str(e)
    else:
        text = _STREAM_REF.sub("", str(e)).strip()
        f = re.match(r"[A-Za-z_][\w\[\]./]*", text.split(":", 1)[0]) if ":" in text else None
        fld = f.group(0) if f else "message"
        m = re.search(r"\bexpected\s+(?P<x>.*?)(?:,\s*got\s+(?P<a>.*))?$", text, re.S)
        exp = m.group("x") if m else None
        act = m.group("a") if m else None
    out = {"type": "error", "op": op, "field": fld, "expected": exp, "actual": act, "message": text}
    if msg_id is not None:
        out["id"] = msg_id
    return out


def _num_array(name: str, v, ndim: int, dtype, width: int | None = None) -> np.ndarray:
    """A JSON list -> numpy array of ``ndim`` dims (ragged / non-numeric -> ProtocolError)."""
    want = "a list of numbers" if ndim == 1 else f"a list of rows of {width} numbers"
    if not isinstance(v, list):
        raise ProtocolError(name, want, type(v).__name__)
    try:
        a = np.asarray(v, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(name, want, v) from None
    if a.size == 0:
        return a.reshape((0,) if ndim == 1 else (0, width))
    if a.ndim != ndim or (width is not None and a.shape[1:] != (width,)):
        raise ProtocolError(name, want, f"an array of shape {list(a.shape)}")
    return a


def parse_push(msg: dict, kind: str = "lr-token") -> dict:
    """A ``push`` message -> ``StreamingListener.push`` keyword arguments (``kind="lr-token"``) or
    ``StreamingARIG.push`` ones (``"arig"``: ``motion`` required, no ``frames`` / audio). ``motion``
    is accepted by both kinds (for the LR-token model only its row count, the clock, counts), so one
    client drives either. Types and shapes are checked here; times, orders and vocabularies by the
    streaming listener."""
    allowed = PUSH_FIELDS if kind == "lr-token" else ARIG_PUSH_FIELDS
    unknown = sorted(set(msg) - set(allowed))
    if unknown:
        raise ProtocolError(unknown[0], f"one of the push fields of the {kind} model " + ", ".join(allowed[1:]),
                            unknown[0])
    kw = {}
    if msg.get("motion") is not None:
        kw["motion"] = _num_array("motion", msg["motion"], 2, np.float32, D_MOTION)
    if msg.get("words") is not None:
        w = msg["words"]
        if not isinstance(w, list):
            raise ProtocolError("words", "a list of [text, start, end] or {text, start, end}", type(w).__name__)
        kw["words"] = w
    if msg.get("sa_tokens") is not None:
        sa = msg["sa_tokens"]
        if not isinstance(sa, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in sa):
            raise ProtocolError("sa_tokens", "a list of integer token ids", sa)
        kw["sa_tokens"] = np.asarray(sa, np.int64).reshape(-1)
    if msg.get("emotion") is not None:
        kw["emotion"] = _num_array("emotion", msg["emotion"], 2, np.float64, len(EMOTIONS))
    if msg.get("frames") is not None:
        fr = msg["frames"]
        if not (isinstance(fr, int) and not isinstance(fr, bool)):
            raise ProtocolError("frames", "an integer number of speaker frames", fr)
        kw["frames"] = fr
    if msg.get("audio") is not None and msg.get("audio_pcm16") is not None:
        raise ProtocolError("audio", "one of audio (floats) and audio_pcm16 (base64), not both", "both")
    if msg.get("audio") is not None:
        kw["audio"] = _num_array("audio", msg["audio"], 1, np.float32)
    if msg.get("audio_pcm16") is not None:
        b = msg["audio_pcm16"]
        try:
            raw = base64.b64decode(b, validate=True) if isinstance(b, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None or len(raw) % 2:
            raise ProtocolError("audio_pcm16", "base64 of little-endian int16 mono samples (an even byte count)",
                                b if raw is None else f"{len(raw)} bytes")
        kw["audio"] = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if "audio" in kw:
        sr = msg.get("sample_rate")
        if not (isinstance(sr, int) and not isinstance(sr, bool)):
            raise ProtocolError("sample_rate", "the audio's sample rate in Hz (an integer, 16000)", sr)
        kw["sample_rate"] = sr
    return kw


def _words(name: str, v) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ProtocolError(name, "a list of [text, start, end] or {text, start, end}", type(v).__name__)
    return v


# ----------------------------------------------------------------------------- the server
@dataclass(eq=False)
class _Session:
    slot: int
    ws: object
    inbox: asyncio.Queue
    outbox: asyncio.Queue
    beta: object = None               # this session's beta (None: the server default)
    history: list = field(default_factory=list)
    sent_frames: int = 0              # frames sent since the stream's start (the next frame's index)
    closed: bool = False


class ListenerServer:
    """Serves one StreamingListener to up to ``max_sessions`` WebSocket clients (module docstring).

    ``lm``, ``vq``: the models; ``beta``: the default listener shape ``(100,)`` (None: zeros, the
    FLAME mean shape, when the VQ needs one); ``fps`` (default the LM's), ``lookahead``, ``sa_tokenizer``,
    ``max_len``: of the StreamingListener. Or ``arig``: an :class:`~minilisten.arig.ARIG` model instead
    of ``lm``/``vq`` (kind ``"arig"``: one :class:`~minilisten.arig.MultiStreamARIG`, one frame out per
    speaker frame in; ``seed`` (every session's seed at connect, a ``reset`` may set another),
    ``sample_steps`` (Euler steps, default the model's), ``temperature``, ``max_skew`` (s));
    ``max_queue``: messages buffered per session each way;
    ``max_message``: bytes per client message; ``token``: a shared secret every client must send
    (``Authorization: Bearer TOKEN`` header or ``?token=TOKEN`` in the URL; else HTTP 401);
    ``web``: answer plain HTTP GETs on the same port (``/``: the web page, ``/clip.json``: a test
    clip, :meth:`clip`; other paths 404; WebSocket upgrades on any path are sessions).
    Use as ``async with server.run(host, port): ...`` or
    :meth:`serve_forever`.
    """

    def __init__(self, lm=None, vq=None, beta=None, *, arig=None, max_sessions: int = 8, fps: float | None = None,
                 lookahead: int | None = None, sa_tokenizer=None, max_len: int | None = None, max_queue: int = 64,
                 max_message: int = 1 << 20, close_timeout: float = 5.0, token: str | None = None,
                 model_info: dict | None = None, seed: int = 0, sample_steps: int | None = None,
                 temperature: float = 1.0, max_skew: float = 2.0, web: bool = True):
        for name, v in (("max_sessions", max_sessions), ("max_queue", max_queue), ("max_message", max_message)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if (arig is None) == (lm is None or vq is None) or (arig is not None and (lm is not None or vq is not None)):
            raise ValueError("models: expected lm and vq (LR-token model) or arig (ARIG model), got "
                             f"lm={type(lm).__name__}, vq={type(vq).__name__}, arig={type(arig).__name__}")
        self.kind = "arig" if arig is not None else "lr-token"
        needs_beta = arig.config.use_beta if arig is not None else vq.needs_beta
        if beta is None and needs_beta:
            beta, self.beta_source = np.zeros(N_SHAPE, np.float32), "zeros (FLAME mean shape)"
        else:
            self.beta_source = ("none (identity-free model)" if beta is None else "given")
        self.default_beta = None if beta is None else np.asarray(beta, np.float32)
        if self.default_beta is not None and self.default_beta.shape != (N_SHAPE,):
            raise ValueError(f"beta: expected shape ({N_SHAPE},), got {self.default_beta.shape}")
        if arig is not None:
            from .arig import MultiStreamARIG
            if fps is not None and abs(fps - arig.config.fps) > 1e-6:
                raise ValueError(f"fps: expected {arig.config.fps:g} (the ARIG model's), got {fps}")
            if sa_tokenizer is not None or lookahead is not None:
                raise ValueError("sa_tokenizer/lookahead: expected None with the arig model (it takes SA tokens and "
                                 "has no lookahead), got " + ("sa_tokenizer" if sa_tokenizer is not None else "lookahead"))
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
            if sample_steps is not None and (isinstance(sample_steps, bool) or not isinstance(sample_steps, int)
                                             or sample_steps < 1):
                raise ValueError(f"sample_steps: expected an int >= 1 or None, got {sample_steps!r}")
            self.seed, self.sample_steps, self.temperature = seed, sample_steps, float(temperature)
            self.listener = MultiStreamARIG(arig, self.default_beta, n_streams=max_sessions, seed=seed,
                                            steps=sample_steps, temperature=temperature, max_skew=max_skew)
        else:
            self.listener = StreamingListener(lm, vq, self.default_beta, n_streams=max_sessions, fps=fps,
                                              lookahead=lookahead, sa_tokenizer=sa_tokenizer, max_len=max_len)
        self.max_sessions, self.max_queue, self.max_message = max_sessions, max_queue, max_message
        self.close_timeout = float(close_timeout)
        if token is not None and not (isinstance(token, str) and token):
            raise ValueError(f"token: expected a non-empty string or None, got {token!r}")
        self.token = token
        self.web = bool(web)
        self._clips: dict = {}                 # (seconds, seed) -> /clip.json body
        self.free = collections.deque(range(max_sessions))
        self.sessions: dict[int, _Session] = {}
        self._release: list[int] = []
        self._releasing = 0                    # slots being reset by the worker right now
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilisten-decode")
        self._wake: asyncio.Event | None = None
        self._closing: set = set()             # close() tasks of slow clients (kept referenced)
        self.host, self.port = None, None      # bound address, once running
        self.stats = collections.Counter()     # ticks, batched pushes, frames, refused, errors
        self.model_info = model_info if model_info is not None else (
            describe_arig(arig) if arig is not None else describe_models(lm, vq))

    # ------------------------------------------------------------------ hello
    def hello(self, session: _Session) -> dict:
        if self.kind == "arig":
            return self._hello_arig(session)
        sl = self.listener
        beta = session.beta if session.beta is not None else self.default_beta
        return {
            "type": "hello", "protocol": PROTOCOL, "kind": self.kind, "min_client_protocol": 1,
            "server": "minilisten " + _version(),
            "fps": sl.fps, "frames_per_step": sl.r, "lookahead_steps": sl.lookahead,
            "max_delay_s": sl.r * (sl.lookahead + 1) / sl.fps,
            "identity": {"beta": None if beta is None else [float(x) for x in beta],
                         "source": "set_beta" if session.beta is not None else self.beta_source},
            "model": self.model_info,
            "input": {"modalities": list(sl.modalities), "sa_rate": sl.sa_rate, "sa_vocab": int(sl.lm.vocab.n_sa),
                      "audio": sl.sa_tokenizer is not None, "sample_rate": sl.sample_rate,
                      "emotions": list(EMOTIONS), "max_skew_s": sl.max_skew},
            "output": {"expression": N_EXP, "pose": D_MOTION - N_EXP, "head_rpy_deg": 3, "jaw_open_deg": 1,
                       "encoding": "json"},
            "limits": {"max_sessions": self.max_sessions, "max_message_bytes": self.max_message,
                       "max_queue": self.max_queue},
        }

    def _hello_arig(self, session: _Session) -> dict:
        ms, c = self.listener, self.listener.cfg
        beta = session.beta if session.beta is not None else self.default_beta
        required = ["motion"] + (["sa_tokens"] if c.n_sa else []) + (["emotion"] if c.use_emotion else [])
        modalities = (["W"] if c.use_words else []) + (["SA"] if c.n_sa else []) + (["E"] if c.use_emotion else [])
        return {
            "type": "hello", "protocol": PROTOCOL, "kind": "arig", "min_client_protocol": 2,
            "server": "minilisten " + _version(), "fps": ms.fps, "frames_per_step": 1, "lookahead_steps": 0,
            "max_delay_s": 0.0,
            "identity": {"beta": None if beta is None else [float(x) for x in beta],
                         "source": "set_beta" if session.beta is not None else self.beta_source},
            "model": self.model_info,
            "sampling": {"seed": ms.streams[session.slot].seed, "steps": int(c.sample_steps if ms.steps is None
                                                                             else ms.steps),
                         "temperature": self.temperature},
            "input": {"required": required, "motion": D_MOTION, "modalities": modalities,
                      "sa_rate": c.sa_rate if c.n_sa else None, "sa_vocab": int(c.n_sa), "audio": False,
                      "sample_rate": None, "emotions": list(EMOTIONS), "max_skew_s": ms.max_skew},
            "output": {"expression": N_EXP, "pose": D_MOTION - N_EXP, "head_rpy_deg": 3, "jaw_open_deg": 1,
                       "encoding": "json"},
            "limits": {"max_sessions": self.max_sessions, "max_message_bytes": self.max_message,
                       "max_queue": self.max_queue},
        }

    # ------------------------------------------------------------------ connection handler
    async def handler(self, ws) -> None:
        """One WebSocket connection = one session (slot); see the protocol in the module docstring."""
        if self._wake is None:
            self._wake = asyncio.Event()
        deadline = time.perf_counter() + 2.0
        while not self.free and (self._release or self._releasing) and time.perf_counter() < deadline:
            self._wake.set()   # a closed session's slot is being reset by the tick loop: wait for it (<= 2 s)
            await asyncio.sleep(0.005)
        if not self.free:
            self.stats["refused"] += 1
            await ws.send(json.dumps({"type": "error", "op": "connect", "field": "session",
                                      "expected": f"at most max_sessions={self.max_sessions} concurrent sessions",
                                      "actual": f"{len(self.sessions) + len(self._release) + 1}",
                                      "message": f"server full: {self.max_sessions} sessions in use; retry later"}))
            await ws.close(1013, "server full")
            return
        s = _Session(self.free.popleft(), ws, asyncio.Queue(self.max_queue), asyncio.Queue(self.max_queue))
        self.sessions[s.slot] = s
        sender = asyncio.create_task(self._sender(ws, s))
        try:
            await s.inbox.put(("open", None, None, time.perf_counter()))
            self._wake.set()
            async for raw in ws:
                t = time.perf_counter()
                try:
                    op, kw, msg_id = self._parse(raw)
                except ProtocolError as e:
                    self.stats["errors"] += 1
                    self._reply(s, error_message(e, None, _msg_id(raw)))
                    continue
                await s.inbox.put((op, kw, msg_id, t))   # full inbox: stop reading (back-pressure)
                self._wake.set()
                if s.closed:   # closed as a slow client
                    break
        except ConnectionClosed:   # abnormal close (reset, oversized or bad frames): the session just ends
            pass
        finally:
            s.closed = True
            self.sessions.pop(s.slot, None)
            self._release.append(s.slot)   # reset and freed by the tick loop, after any decode in flight
            self._wake.set()
            sender.cancel()

    def _reply(self, s: _Session, msg: dict) -> None:
        if s.closed:
            return
        try:
            s.outbox.put_nowait(msg)
            self.stats["max_outbox"] = max(self.stats["max_outbox"], s.outbox.qsize())
        except asyncio.QueueFull:   # a client that does not read its frames: close it, keep the others
            s.closed = True
            self.stats["slow_closed"] += 1
            self._wake.set()
            task = asyncio.ensure_future(s.ws.close(1008, f"slow client: {self.max_queue} replies unread"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _sender(self, ws, s: _Session) -> None:
        try:
            while True:
                msg = await s.outbox.get()
                await ws.send(json.dumps(msg, separators=(",", ":")))
        except ConnectionClosed:
            pass

    def _authorize(self, connection, request):
        """websockets ``process_request``: the shared token, else HTTP 401 (no session is made)."""
        import hmac
        from http import HTTPStatus
        from urllib.parse import parse_qs, urlsplit
        auth = request.headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else (parse_qs(urlsplit(request.path).query).get("token") or [""])[0]
        if hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        self.stats["unauthorized"] += 1
        return connection.respond(HTTPStatus.UNAUTHORIZED, "token: expected the server's shared token "
                                  "(Authorization: Bearer TOKEN or ?token=TOKEN), got none or another\n")

    def _process_request(self, connection, request):
        """websockets ``process_request``: the shared token (if any), then plain HTTP GETs (no
        ``Upgrade: websocket`` header) of the web page and the test clip; upgrades go on to sessions."""
        from http import HTTPStatus
        from urllib.parse import parse_qs, urlsplit
        if self.token:
            refused = self._authorize(connection, request)
            if refused is not None:
                return refused
        if not self.web or request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        url = urlsplit(request.path)
        if url.path in ("/", "/index.html"):
            self.stats["http_page"] += 1
            return _respond(connection, HTTPStatus.OK, web_page(), "text/html; charset=utf-8")
        if url.path == "/clip.json":
            q = parse_qs(url.query)
            try:
                seconds = _query_num(q, "seconds", 10.0, float, 0.5, 120.0)
                seed = _query_num(q, "seed", 0, int, 0, 2 ** 31 - 1)
            except ValueError as e:
                return _respond(connection, HTTPStatus.BAD_REQUEST, f"{e}\n", "text/plain; charset=utf-8")
            key = (seconds, seed)
            if key not in self._clips:
                if len(self._clips) >= 16:   # bounded cache
                    self._clips.pop(next(iter(self._clips)))
                self._clips[key] = json.dumps(self.clip(seconds, seed), separators=(",", ":"))
            self.stats["http_clip"] += 1
            return _respond(connection, HTTPStatus.OK, self._clips[key], "application/json")
        return _respond(connection, HTTPStatus.NOT_FOUND, f"path: expected /, /clip.json or a WebSocket upgrade, "
                        f"got {url.path[:200]}\n", "text/plain; charset=utf-8")

    def clip(self, seconds: float = 10.0, seed: int = 0) -> dict:
        """A test clip of speaker input for this server's model (the web page replays it): a random
        speaker stream (:func:`minilisten.data.synthetic.speaker_segment`, ``seconds`` long) cut into pushes
        of one decode step (``frames_per_step`` frames; ARIG: 0.1 s). Returns ``{"fps", "seconds",
        "seed", "kind", "history_words": [[text, start, end]], "words": [...], "pushes": [{"t",
        "msg"}]}``: ``msg`` is the protocol's ``push`` message, to be sent at clip time ``t`` (s)
        = the end of its frames; only the fields of the model's modalities are present."""
        from .data.synthetic import speaker_segment
        sl = self.listener
        if self.kind == "arig":
            c = sl.cfg
            fps, step, sa_rate, n_sa = float(sl.fps), max(1, int(round(sl.fps / 10))), float(c.sa_rate), int(c.n_sa)
            use_w, use_sa, use_e = bool(c.use_words), n_sa > 0, bool(c.use_emotion)
        else:
            fps, step, sa_rate, n_sa = float(sl.fps), int(sl.r), float(sl.sa_rate), int(sl.lm.vocab.n_sa)
            use_w, use_sa, use_e = "W" in sl.modalities, "SA" in sl.modalities, "emo" in sl.modalities
        seg = speaker_segment(seconds, fps=fps, seed=seed, n_sa=max(n_sa, 1))
        wl = lambda ws: [[w.text, round(w.start, 4), round(w.end, 4)] for w in ws]   # noqa: E731
        pushes, f, sa_done, T = [], 0, 0, seg.T
        while f < T:
            n = min(step, T - f)
            t0, t1 = f / fps, (f + n) / fps
            msg = {"type": "push", "id": len(pushes)}
            if use_w:
                msg["words"] = wl([w for w in seg.words if t0 < w.end <= t1 + 1e-9])
            if use_sa:
                sa_to = seg.sa_tokens.size if f + n == T else min(seg.sa_tokens.size, int(t1 * sa_rate))
                msg["sa_tokens"] = [int(t) for t in seg.sa_tokens[sa_done:sa_to]]
                sa_done = sa_to
            if use_e:
                msg["emotion"] = np.round(seg.emotion[f:f + n], 5).tolist()
            if self.kind == "arig":
                msg["motion"] = seg.speaker_motion[f:f + n].tolist()
            elif not use_e:
                msg["frames"] = n
            pushes.append({"t": t1, "msg": msg})
            f += n
        return {"fps": fps, "seconds": T / fps, "seed": seed, "kind": self.kind,
                "history_words": wl(seg.history_words) if use_w else [], "words": wl(seg.words), "pushes": pushes}

    def _parse(self, raw) -> tuple[str, dict | None, object]:
        if isinstance(raw, (bytes, bytearray)):
            raise ProtocolError("message", "a JSON text message", f"a binary message of {len(raw)} bytes")
        try:
            msg = json.loads(raw)
        except ValueError:
            raise ProtocolError("message", "a JSON object", raw) from None
        if not isinstance(msg, dict):
            raise ProtocolError("message", "a JSON object", raw)
        op = msg.get("type")
        if op not in CLIENT_TYPES:
            raise ProtocolError("type", "one of " + ", ".join(CLIENT_TYPES), op)
        msg_id = msg.get("id")
        if op == "push":
            return op, parse_push(msg, self.kind), msg_id
        allowed = {"set_beta": ("beta",), "reset": ("history_words", "seed") if self.kind == "arig"
                   else ("history_words",)}.get(op, ())
        extra = sorted(set(msg) - {"type", "id", *allowed})
        if extra:
            raise ProtocolError(extra[0], f"only the fields type, id{''.join(', ' + a for a in allowed)} in {op}",
                                extra[0])
        if op == "set_beta":
            b = msg.get("beta")
            if b is not None:
                b = _num_array("beta", b, 1, np.float64)
                if b.shape != (N_SHAPE,) or not np.isfinite(b).all():
                    raise ProtocolError("beta", f"{N_SHAPE} finite numbers (FLAME shape) or null (the default)",
                                        f"{b.size} numbers" if b.shape != (N_SHAPE,) else "NaN/inf")
            return op, {"beta": b}, msg_id
        if op == "reset":
            kw = {"history_words": _words("history_words", msg.get("history_words"))}
            if msg.get("seed") is not None:
                sd = msg["seed"]
                if not (isinstance(sd, int) and not isinstance(sd, bool) and 0 <= sd < 2 ** 63):
                    raise ProtocolError("seed", "an integer in [0, 2**63) (the session's noise seed)", sd)
                kw["seed"] = sd
            return op, kw, msg_id
        return "end", None, msg_id

    # ------------------------------------------------------------------ batching loop
    async def _tick_loop(self) -> None:
        """Take every waiting message, in rounds (round k: each session's k-th message; all pushes
        of a round are one ``push_many``), run them in the worker thread, send the replies; repeat
        while messages wait."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            release, self._release = self._release, []
            rounds: list[dict] = []
            for slot, s in list(self.sessions.items()):
                if s.closed:   # slow client being closed: drop its input (unblocks its handler)
                    while not s.inbox.empty():
                        s.inbox.get_nowait()
                    continue
                k = 0
                while not s.inbox.empty():
                    if k == len(rounds):
                        rounds.append({})
                    rounds[k][slot] = (s, s.inbox.get_nowait())
                    k += 1
            if not rounds and not release:
                continue
            self._releasing = len(release)
            try:
                results = await loop.run_in_executor(self._executor, self._run_rounds, rounds, release)
            finally:
                self._releasing = 0
            self.free.extend(release)
            for s, msg in results:
                self._reply(s, msg)
            if any(not s.inbox.empty() for s in self.sessions.values()) or self._release:
                self._wake.set()

    def _run_rounds(self, rounds: list, release: list) -> list:
        """Worker thread: the rounds in order; returns [(session, reply)] in order."""
        out = []
        for k, work in enumerate(rounds or [{}]):
            res = self._run_tick(work, release if k == 0 else [])
            out += [(work[slot][0], msg) for slot in work for msg in res.get(slot, [])]
        return out

    def _run_tick(self, work: dict, release: list) -> dict:
        """Worker thread: everything that touches the StreamingListener. Returns {slot: [replies]}."""
        sl = self.listener
        arig = self.kind == "arig"
        for slot in release:
            sl.reset(slot, history_words=(), **({"seed": self.seed} if arig else {}))
        out, pushes = {}, {}
        for slot, (s, (op, kw, msg_id, t)) in work.items():
            try:
                if op == "push":
                    pushes[slot] = (kw, msg_id)
                    continue
                if op == "open":
                    sl.reset(slot, history_words=(), **({"seed": self.seed} if arig else {}))
                    sl.set_beta(self.default_beta, slot) if self.default_beta is not None else None
                    s.sent_frames = 0
                    out[slot] = [self.hello(s)]
                elif op == "set_beta":
                    s.beta = kw["beta"]
                    sl.set_beta(self.default_beta if s.beta is None else s.beta, slot)
                    out[slot] = [{"type": "ok", "op": op, "id": msg_id}]
                elif op == "reset":
                    if arig:
                        sl.reset(slot, history_words=kw["history_words"], seed=kw.get("seed"))
                    else:
                        sl.reset(slot, history_words=kw["history_words"])
                    s.history, s.sent_frames = kw["history_words"], 0
                    out[slot] = [{"type": "ok", "op": op, "id": msg_id}]
                else:   # end / flush: the held-back frames, then a fresh stream (same identity, history)
                    frames = sl.flush(slot)
                    out[slot] = [self._frames(s, frames, msg_id, final=True)]
                    sl.reset(slot, history_words=s.history)
                    s.sent_frames = 0
            except ValueError as e:
                out[slot] = [error_message(e, op, msg_id)]
            except Exception as e:   # a bug: log it, answer, keep serving
                out[slot] = [self._internal(e, op, msg_id)]
        if pushes:
            self.stats["ticks"] += 1
            self.stats["pushes"] += len(pushes)
            self.stats["max_batch"] = max(self.stats["max_batch"], len(pushes))
            try:
                res = {b: (r, None) for b, r in sl.push_many({b: kw for b, (kw, _) in pushes.items()}).items()}
            except ValueError:   # transactional: nothing changed; find the bad chunk(s) one by one
                res = {}
                for b, (kw, _) in pushes.items():
                    try:
                        res[b] = (sl.push_many({b: kw})[b], None)
                    except ValueError as e:
                        res[b] = (None, e)
            except Exception as e:   # a bug (push_many restored the streams): log it, answer, keep serving
                res = {b: (None, e) for b in pushes}
            for b, (frames, err) in res.items():
                s, msg_id = work[b][0], pushes[b][1]
                out[b] = [self._frames(s, frames, msg_id) if err is None else error_message(err, "push", msg_id)
                          if isinstance(err, ValueError) else self._internal(err, "push", msg_id)]
        return out

    def _internal(self, e: Exception, op: str, msg_id) -> dict:
        logging.getLogger(__name__).exception("minilisten serve: internal error in %s", op)
        self.stats["internal_errors"] += 1
        return {"type": "error", "op": op, "id": msg_id, "field": "server", "expected": "no internal error",
                "actual": type(e).__name__, "message": f"internal server error ({type(e).__name__}: {e}); "
                "the session's stream is unchanged"}

    def _frames(self, s: _Session, frames: np.ndarray, msg_id, final: bool = False) -> dict:
        head, jaw = robot_angles(frames)
        msg = {"type": "frames", "id": msg_id, "start": s.sent_frames, "n": int(frames.shape[0]),
               "t0": s.sent_frames / self.listener.fps, "final": final,
               "expression": frames[:, :N_EXP].tolist(), "pose": frames[:, N_EXP:].tolist(),
               "head_rpy_deg": head.tolist(), "jaw_open_deg": jaw.tolist()}
        s.sent_frames += int(frames.shape[0])
        self.stats["frames"] += int(frames.shape[0])
        return msg

    # ------------------------------------------------------------------ running
    def run(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        """``async with server.run(host, port) as ws_server:`` (port 0: ephemeral, see ``.port``)."""
        return _Running(self, host, port)

    async def serve_forever(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        async with self.run(host, port) as srv:
            page = f"; web page http://{host}:{self.port}/" if self.web else ""
            print(f"minilisten serve: ws://{host}:{self.port}{page} ({self.kind} model, protocol {PROTOCOL}, "
                  f"{self.max_sessions} sessions, "
                  f"{self.listener.fps:g} fps); Ctrl-C stops", flush=True)
            await srv.serve_forever()


class _Running:
    def __init__(self, server: ListenerServer, host: str, port: int):
        self.server, self.host, self.port = server, host, port

    async def __aenter__(self):
        serve = _websockets_serve()
        srv = self.server
        srv._wake = asyncio.Event()
        self.loop_task = asyncio.create_task(srv._tick_loop())
        self.ws = await serve(srv.handler, self.host, self.port, max_size=srv.max_message, max_queue=srv.max_queue,
                              close_timeout=srv.close_timeout, compression=None,
                              process_request=srv._process_request if (srv.token or srv.web) else None).__aenter__()
        srv.port = self.ws.sockets[0].getsockname()[1]
        srv.host = self.ws.sockets[0].getsockname()[0]
        return self.ws

    async def __aexit__(self, *exc):
        await self.ws.__aexit__(*exc)
        self.loop_task.cancel()
        try:
            await self.loop_task
        except asyncio.CancelledError:
            pass
        return False


def _websockets_serve():
    try:
        from websockets.asyncio.server import serve
    except ImportError as e:
        raise ValueError("serve: expected the websockets package (>= 13), got none installed; "
                         "pip install 'minilisten[serve]' (or pip install websockets)") from e
    return serve


def web_page() -> str:
    """The web page (``minilisten/web/index.html``, installed as package data)."""
    from importlib.resources import files
    return files("minilisten").joinpath("web", "index.html").read_text(encoding="utf-8")


def _respond(connection, status, body: str, content_type: str):
    """A plain HTTP response (websockets ``connection.respond``, with this content type)."""
    r = connection.respond(status, body)
    del r.headers["Content-Type"]
    r.headers["Content-Type"] = content_type
    r.headers["Cache-Control"] = "no-store"
    return r


def _query_num(q: dict, name: str, default, kind, lo, hi):
    """A number from a parsed query string (``?name=value``) in ``[lo, hi]``, else ValueError."""
    if name not in q:
        return default
    v = q[name][-1]
    try:
        x = kind(v)
    except ValueError:
        x = None
    if x is None or not (lo <= x <= hi) or (kind is float and not np.isfinite(x)):
        raise ValueError(f"{name}: expected {'an integer' if kind is int else 'a number'} in [{lo:g}, {hi:g}], got {v[:60]!r}")
    return x


def _msg_id(raw):
    try:
        m = json.loads(raw)
        return m.get("id") if isinstance(m, dict) else None
    except (ValueError, TypeError):
        return None


def _version() -> str:
    from . import __version__
    return __version__


def describe_models(lm, vq) -> dict:
    """The ``hello`` message's model info: modalities and sizes."""
    bb = lm.backbone.config
    return {
        "modalities": list(lm.modalities),
        "lm": {"backbone": bb.model_type, "parameters": int(sum(p.numel() for p in lm.parameters())),
               "layers": getattr(bb, "num_hidden_layers", getattr(bb, "n_layer", None)),
               "hidden": getattr(bb, "hidden_size", getattr(bb, "n_embd", None)),
               "max_len": int(lm.max_len), "lr_vocab": int(lm.config.n_lr), "frames_per_code": int(lm.config.r)},
        "vq": {"parameters": int(sum(p.numel() for p in vq.parameters())), "width": vq.config.width,
               "codebook": vq.config.codebook_size, "dec_norm": vq.config.dec_norm, "needs_beta": bool(vq.needs_beta),
               "receptive_field_codes": int(vq.receptive_field)},
    }


def describe_arig(model) -> dict:
    """The ``hello`` message's model info for an ARIG model: config and size."""
    c = model.config
    return {"modalities": (["W"] if c.use_words else []) + (["SA"] if c.n_sa else []) + (["E"] if c.use_emotion else []),
            "arig": {"parameters": int(sum(p.numel() for p in model.parameters())), "d_model": c.d_model,
                     "d_ff": c.d_ff, "depth": c.depth, "window": c.window, "head": c.head, "ibu": c.ibu,
                     "sample_steps": c.sample_steps, "use_beta": bool(c.use_beta), "states": list(_arig_states())}}


def _arig_states():
    from .arig import STATES
    return STATES


# ----------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    """The ``serve`` command line."""
    p = ArgumentParser(prog="python -m minilisten serve",
                                description="WebSocket server streaming listener frames (expression, pose, head "
                                            "roll/pitch/yaw, jaw) to avatar and robot clients; JSON protocol "
                                            f"version {PROTOCOL} (README, 'Streaming server').")
    p.add_argument("--vq", help="VQ-VAE checkpoint directory (save_pretrained); with --lm")
    p.add_argument("--lm", help="ListenerLM checkpoint directory (save_pretrained); with --vq")
    p.add_argument("--arig", help="ARIG checkpoint directory (train-arig --out) instead of --vq/--lm: one frame out "
                   "per speaker frame in; clients push the speaker's motion")
    p.add_argument("--seed", type=int, default=0, help="ARIG: every session's noise seed at connect (default 0)")
    p.add_argument("--sample-steps", type=int, help="ARIG: Euler steps per frame (default: the model's)")
    p.add_argument("--max-skew", type=float, default=2.0, help="ARIG: seconds SA tokens may lead or lag the motion")
    p.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free port)")
    p.add_argument("--max-sessions", type=int, default=8, help="concurrent sessions (decoded as one batch)")
    p.add_argument("--beta", help="default listener shape: .npy file of 100 floats (default: zeros)")
    p.add_argument("--sa-tokenizer", help="AcousticTokenizer directory: lets clients send 16 kHz audio")
    p.add_argument("--fps", type=float, help="frame rate of the speaker stream (default and only accepted value: the "
                   "LM's, lm.config.fps)")
    p.add_argument("--lookahead", type=int, help="VQ lookahead in codes (default: exact, the receptive field)")
    p.add_argument("--max-message", type=int, default=1 << 20, help="bytes per client message (default 1 MiB)")
    p.add_argument("--max-queue", type=int, default=64, help="messages buffered per session each way")
    p.add_argument("--no-web", action="store_true", help="do not serve the web page (/) and test clip (/clip.json) "
                   "on the same port")
    p.add_argument("--token-file", help="file holding a shared token clients must send (Authorization: Bearer "
                   "TOKEN or ?token=TOKEN); default: no authentication")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    if bool(a.arig) == bool(a.vq or a.lm) or (not a.arig and not (a.vq and a.lm)):
        p.error("expected --vq DIR --lm DIR (LR-token model) or --arig DIR (ARIG model)")
    _websockets_serve()
    if not 0 <= a.port <= 65535:
        raise ValueError(f"--port: expected 0..65535, got {a.port}")
    from .lm import ListenerLM
    from .vqvae import VQVAE
    beta = None
    if a.beta:
        from .safe_pickle import load_npy
        beta = np.asarray(load_npy(a.beta), np.float32).reshape(-1)
        if beta.shape != (N_SHAPE,):
            raise ValueError(f"--beta {a.beta}: expected {N_SHAPE} floats, got shape {beta.shape}")
    tok = None
    if a.sa_tokenizer:
        from .speaker import AcousticTokenizer
        tok = AcousticTokenizer.load(a.sa_tokenizer)
    token = None
    if a.token_file:
        with open(a.token_file, encoding="utf-8") as f:
            token = f.read().strip()
        if not token:
            raise ValueError(f"--token-file {a.token_file}: expected a non-empty token, got an empty file")
    if a.arig:
        from .arig import ARIG
        arig = ARIG.from_pretrained(a.arig).eval()
        server = ListenerServer(beta=beta, arig=arig, max_sessions=a.max_sessions, fps=a.fps, lookahead=a.lookahead,
                                sa_tokenizer=tok, max_queue=a.max_queue, max_message=a.max_message, token=token,
                                seed=a.seed, sample_steps=a.sample_steps, max_skew=a.max_skew, web=not a.no_web)
    else:
        vq, lm = VQVAE.from_pretrained(a.vq).eval(), ListenerLM.from_pretrained(a.lm).eval()
        server = ListenerServer(lm, vq, beta, max_sessions=a.max_sessions, fps=a.fps, lookahead=a.lookahead,
                                sa_tokenizer=tok, max_queue=a.max_queue, max_message=a.max_message, token=token,
                                web=not a.no_web)
    if beta is not None:
        server.beta_source = f"--beta {a.beta}"
    try:
        asyncio.run(server.serve_forever(a.host, a.port))
    except KeyboardInterrupt:
        pass
    return 0
