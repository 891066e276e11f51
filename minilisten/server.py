"""WebSocket server: live listener frames for avatar and robot stacks (``python -m minilisten serve``).

Per worker process, one streaming listener with ``n_streams = max_sessions`` (the LR-token model, or ARIG with
``--arig``) serves every connection: a batching loop makes each round of waiting pushes one ``push_many`` in a
decode thread. JSON protocol :data:`PROTOCOL`; messages, limits, faults and robot angles: docs/server.md.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hmac
import importlib.resources
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

try:
    from websockets.exceptions import ConnectionClosed
except ImportError:   # the optional extra is missing: ListenerServer.run / main say how to install it
    class ConnectionClosed(Exception):
        pass

from .cli_config import ArgumentParser
from .data.segment import D_MOTION, EMOTIONS, N_EXP, N_SHAPE
from .errors import UserError
from .streaming import ProtocolError, StreamingARIG, StreamingListener, parse_push, parse_words
from .tokens import SA_RATE

PROTOCOL = 2   # 2 = 1 + the ARIG model kind (hello kind / min_client_protocol / input.required)
CLIENT_TYPES = ("push", "set_beta", "reset", "flush", "end")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
MAX_DEPTH = 32   # nesting of a client message's arrays and objects (a push needs 4)


def robot_angles(motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(n, 56)`` -> head roll/pitch/yaw ``(n, 3)`` and jaw opening (its pitch) ``(n,)``, degrees, from the
    axis-angle pose dims 50:56 as ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` (ROS REP-103, docs/server.md)."""
    from scipy.spatial.transform import Rotation
    head, jaw = (Rotation.from_rotvec(motion[:, i:i + 3].astype(np.float64)).as_euler("YXZ", degrees=True)
                 for i in (N_EXP, N_EXP + 3))
    return head[:, ::-1].copy(), jaw[:, 1]


_STREAM_REF = re.compile(r",\s*stream \d+|\s*\(stream \d+\)")
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")


def load_message(raw) -> dict:
    """A client message -> dict: a JSON text object, strict (no NaN / Infinity), its arrays and objects nested at
    most :data:`MAX_DEPTH` deep (counted before parsing), else ProtocolError."""
    if isinstance(raw, (bytes, bytearray)):
        raise ProtocolError("message", "a JSON text message", f"a binary message of {len(raw)} bytes")
    brackets = np.frombuffer(_NOT_BRACKET.sub("", _JSON_STRING.sub("", raw)).encode(), np.uint8)
    depth = int(np.cumsum(np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)).max(initial=0))
    if depth > MAX_DEPTH:
        raise ProtocolError("message", f"JSON nested at most {MAX_DEPTH} deep", f"{depth} levels")
    try:
        msg = json.loads(raw, parse_constant=_not_json)
    except ValueError:
        raise ProtocolError("message", "a JSON object (strict JSON: no NaN or Infinity)", raw) from None
    if not isinstance(msg, dict):
        raise ProtocolError("message", "a JSON object", raw)
    return msg


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


def error_message(e: ValueError, op: str | None = None, msg_id=None) -> dict:
    """The ``error`` reply for a UserError ``"FIELD (stream b): expected X, got Y"`` (the internal slot left out)."""
    text = _STREAM_REF.sub("", str(e)).strip()
    f = re.match(r"([A-Za-z_][\w\[\]./]*)[^:]*:", text)
    m = re.search(r"\bexpected\s+(.*?)(?:,\s*got\s+(.*))?$", text, re.S)
    fld, (exp, act) = f[1] if f else "message", m.groups() if m else (None, None)
    return {"type": "error", "op": op, "id": msg_id, "field": fld, "expected": exp, "actual": act, "message": text}


@dataclasses.dataclass(eq=False)
class _Session:
    slot: int
    ws: object
    inbox: asyncio.Queue
    outbox: asyncio.Queue
    sent_frames: int = 0              # frames sent since the stream's start (the next frame's index)
    closed: bool = False


class ListenerServer:
    """Serves ``listener`` (a StreamingListener or StreamingARIG; its ``n_streams`` are the session slots) to
    WebSocket clients: ``beta`` is every session's identity at connect (None: the model has none); ``max_queue``
    messages buffered per session each way, of ``max_message`` bytes; ``token``: a shared secret; ``web``: answer
    plain HTTP GET/HEAD (the page, :meth:`clip`). Run as ``async with server.run(host, port)`` (docs/server.md)."""

    def __init__(self, listener, beta=None, *, beta_source: str = "given", max_queue: int = 64,
                 max_message: int = 1 << 20, close_timeout: float = 5.0, token: str | None = None, web: bool = True,
                 worker: int = 0):
        if not isinstance(listener, (StreamingListener, StreamingARIG)):
            raise UserError(f"listener: expected a StreamingListener or StreamingARIG, got {type(listener).__name__}")
        for name, v in (("max_queue", max_queue), ("max_message", max_message)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise UserError(f"{name}: expected an int >= 1, got {v!r}")
        if token is not None and not (isinstance(token, str) and token):
            raise UserError(f"token: expected a non-empty string or None, got {token!r}")
        self.listener, self.kind = listener, "arig" if isinstance(listener, StreamingARIG) else "lr-token"
        self.default_beta, self.beta_source = None if beta is None else np.asarray(beta, np.float32), beta_source
        self.seeds = [st.seed for st in listener.streams]   # each slot's seed at connect
        for slot in range(listener.n_streams):   # and its identity
            listener.set_beta(self.default_beta, slot)
        self.model_info = _describe_arig(listener.model) if self.kind == "arig" else _describe_lr(listener.lm,
                                                                                                 listener.vq)
        self.max_sessions, self.max_queue, self.max_message = listener.n_streams, max_queue, max_message
        self.close_timeout, self.token, self.web, self.worker = float(close_timeout), token, bool(web), worker
        self.free = collections.deque(range(self.max_sessions))
        self.sessions: dict[int, _Session] = {}
        self._release: list[int] = []          # slots of closed sessions, reset and freed by the tick loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilisten-decode")
        self._http_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilisten-http")
        self._clips: dict = {}                 # (seconds, seed) -> future of the /clip.json body
        self._closing: set = set()             # close() tasks of slow clients (kept referenced)
        self.stats = collections.Counter()     # ticks, batched pushes, frames, refused, errors

    def hello(self, session: _Session) -> dict:
        """A session's first message: protocol, model, the input it takes, output and limits."""
        from . import __version__
        sl, arig = self.listener, self.kind == "arig"
        if arig:
            c = sl.cfg
            inp = {"required": ["motion"] + ["sa_tokens"] * bool(c.n_sa) + ["emotion"] * c.use_emotion,
                   "motion": D_MOTION, "modalities": self.model_info["modalities"],
                   "sa_rate": c.sa_rate if c.n_sa else None, "sa_vocab": int(c.n_sa), "audio": False,
                   "sample_rate": None}
        else:
            inp = {"modalities": list(sl.modalities), "sa_rate": SA_RATE, "sa_vocab": int(sl.lm.vocab.n_sa),
                   "audio": sl.sa_tokenizer is not None, "sample_rate": sl.sample_rate}
        beta = self.default_beta
        msg = {"type": "hello", "protocol": PROTOCOL, "kind": self.kind, "min_client_protocol": 2 if arig else 1,
               "server": f"minilisten {__version__}", "worker": self.worker, "fps": sl.fps,
               "frames_per_step": 1 if arig else sl.r, "lookahead_steps": 0 if arig else sl.lookahead,
               "max_delay_s": 0.0 if arig else sl.r * (sl.lookahead + 1) / sl.fps,
               "identity": {"beta": None if beta is None else beta.tolist(), "source": self.beta_source},
               "model": self.model_info, "input": {**inp, "emotions": list(EMOTIONS), "max_skew_s": sl.max_skew},
               "output": {"expression": N_EXP, "pose": D_MOTION - N_EXP, "head_rpy_deg": 3, "jaw_open_deg": 1,
                          "encoding": "json"},
               "limits": {"max_sessions": self.max_sessions, "max_message_bytes": self.max_message,
                          "max_queue": self.max_queue, "max_push_frames": sl.max_push_frames}}
        if arig:
            msg["sampling"] = {"seed": sl.streams[session.slot].seed, "steps": sl.steps, "temperature": sl.temperature}
        return msg

    async def handler(self, ws) -> None:
        """One WebSocket connection = one session on a free stream slot."""
        for _ in range(400):   # a closed session's slot is free after the round in flight: wait for it (<= 2 s)
            if self.free or len(self.sessions) == self.max_sessions:
                break
            await asyncio.sleep(0.005)
        if not self.free:
            self.stats["refused"] += 1
            err = ProtocolError("session", f"at most max_sessions={self.max_sessions} concurrent sessions (server "
                                "full: retry later)", str(len(self.sessions) + len(self._release) + 1))
            await ws.send(json.dumps(error_message(err, "connect")))
            await ws.close(1013, "server full")
            return
        s = _Session(self.free.popleft(), ws, asyncio.Queue(self.max_queue), asyncio.Queue(self.max_queue))
        self.sessions[s.slot] = s
        sender = asyncio.create_task(self._sender(s))
        try:
            await s.inbox.put(("open", None, None))
            self._wake.set()
            async for raw in ws:
                msg = None
                try:
                    msg = load_message(raw)
                    op, kw = self._parse(msg)
                except ProtocolError as e:
                    self.stats["errors"] += 1
                    self._reply(s, error_message(e, None, msg.get("id") if msg else None))
                    continue
                await s.inbox.put((op, kw, msg.get("id")))   # full inbox: stop reading (back-pressure)
                self._wake.set()
                if s.closed:   # closed as a slow client
                    break
        except ConnectionClosed:   # abnormal close (reset, oversized or bad frames): the session just ends
            pass
        finally:
            s.closed = True
            self.sessions.pop(s.slot, None)
            self._release.append(s.slot)
            self._wake.set()
            sender.cancel()

    def _parse(self, msg: dict) -> tuple[str, dict | None]:
        """A client message -> (op, keyword arguments), or ProtocolError."""
        op = msg.get("type")
        if op not in CLIENT_TYPES:
            raise ProtocolError("type", "one of " + ", ".join(CLIENT_TYPES), op)
        if op == "push":
            return op, parse_push(msg, self.kind)
        own = {"set_beta": ("beta",), "reset": ("history_words",) + ("seed",) * (self.kind == "arig")}.get(op, ())
        allowed = ("type", "id", *own)
        extra = sorted(set(msg) - set(allowed))
        if extra:
            raise ProtocolError(extra[0], f"only the fields {', '.join(allowed)} in {op}", extra[0])
        if op == "set_beta":
            return op, {"beta": msg.get("beta")}   # checked by the stream's set_beta
        if op == "reset":   # the seed is checked by the stream's reset
            return op, {"history_words": parse_words("history_words", msg.get("history_words")),
                        "seed": msg.get("seed")}
        return "end", None

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

    async def _sender(self, s: _Session) -> None:
        """Strict JSON out: a reply holding a non-finite number is a bug, answered as one and never sent."""
        try:
            while True:
                msg = await s.outbox.get()
                try:
                    text = json.dumps(msg, separators=(",", ":"), allow_nan=False)
                except ValueError as e:
                    text = json.dumps(self._internal(e, msg.get("op", msg["type"]), msg.get("id")))
                await s.ws.send(text)
        except ConnectionClosed:
            pass

    async def _tick_loop(self) -> None:
        """Each round: every session's next message, run in the decode thread (the round's pushes are one
        ``push_many``), then the replies; repeat while messages wait."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            release, self._release = self._release, []
            for s in self.sessions.values():
                while s.closed and not s.inbox.empty():   # a slow client being closed: its input is dropped
                    s.inbox.get_nowait()
            work = {slot: (s, s.inbox.get_nowait()) for slot, s in self.sessions.items() if not s.inbox.empty()}
            if not work and not release:
                continue
            replies = await loop.run_in_executor(self._executor, self._run_tick, work, release)
            self.free.extend(release)
            for slot, msg in replies.items():
                self._reply(work[slot][0], msg)
            if any(not s.inbox.empty() for s in self.sessions.values()) or self._release:
                self._wake.set()

    @torch.no_grad()
    def _run_tick(self, work: dict, release=()) -> dict:
        """Decode thread (no autograd): reset the ``release``d slots, then one round ``{slot: (session, (op, kwargs,
        id))}`` -> ``{slot: reply}``; each session's exception goes to that session alone."""
        sl, out, pushes = self.listener, {}, {}
        for slot in release:   # a closed session's slot: a fresh stream with the default identity
            sl.reset(slot, history_words=(), seed=self.seeds[slot])
            sl.set_beta(self.default_beta, slot)
        for slot, (s, (op, kw, msg_id)) in work.items():
            try:
                if op == "push":
                    pushes[slot] = (kw, msg_id)
                elif op == "open":   # the slot is fresh (at start, or reset when its last session closed)
                    out[slot] = self.hello(s)
                elif op == "set_beta":
                    sl.set_beta(self.default_beta if kw["beta"] is None else kw["beta"], slot)
                    out[slot] = {"type": "ok", "op": op, "id": msg_id}
                elif op == "reset":
                    sl.reset(slot, **kw)
                    s.sent_frames = 0
                    out[slot] = {"type": "ok", "op": op, "id": msg_id}
                else:   # end / flush: the held-back frames, then a fresh stream (same identity, history)
                    out[slot] = self._frames(s, sl.flush(slot), msg_id, final=True)
                    sl.reset(slot)
                    s.sent_frames = 0
            except ValueError as e:
                out[slot] = error_message(e, op, msg_id)
            except Exception as e:   # a bug: log it, answer, keep serving
                out[slot] = self._internal(e, op, msg_id)
        if pushes:
            self.stats["ticks"] += 1
            self.stats["pushes"] += len(pushes)
            self.stats["max_batch"] = max(self.stats["max_batch"], len(pushes))
            try:
                res = sl.push_many({b: kw for b, (kw, _) in pushes.items()})
            except Exception as e:   # a bug outside any one stream (each stream's own error is in its result)
                res = {b: e for b in pushes}
            for b, r in res.items():
                msg_id = pushes[b][1]
                out[b] = (self._frames(work[b][0], r, msg_id) if isinstance(r, np.ndarray) else
                          error_message(r, "push", msg_id) if isinstance(r, ValueError) else
                          self._internal(r, "push", msg_id))
        return out

    def _internal(self, e: Exception, op: str | None, msg_id) -> dict:
        logging.getLogger(__name__).error("minilisten serve: internal error in %s", op, exc_info=e)
        self.stats["internal_errors"] += 1
        return {"type": "error", "op": op, "id": msg_id, "field": "server", "expected": "no internal error",
                "actual": type(e).__name__, "message": f"internal server error ({type(e).__name__}: {e}); "
                "the session's stream is unchanged"}

    def _frames(self, s: _Session, frames: np.ndarray, msg_id, final: bool = False) -> dict:
        head, jaw = robot_angles(frames)
        msg = {"type": "frames", "id": msg_id, "start": s.sent_frames, "n": len(frames),
               "t0": s.sent_frames / self.listener.fps, "final": final,
               "expression": frames[:, :N_EXP].tolist(), "pose": frames[:, N_EXP:].tolist(),
               "head_rpy_deg": head.tolist(), "jaw_open_deg": jaw.tolist()}
        s.sent_frames += len(frames)
        self.stats["frames"] += len(frames)
        return msg

    async def _process_request(self, connection, request):
        """websockets ``process_request``: at most one Authorization / Upgrade header (else 400), the shared token
        (else 401), then plain GET / HEAD of the page and the clip (other methods 405); upgrades become sessions."""
        for name in ("Authorization", "Upgrade"):
            if len(request.headers.get_all(name)) > 1:
                return _respond(connection, HTTPStatus.BAD_REQUEST, f"{name}: expected at most one header, got "
                                f"{len(request.headers.get_all(name))}\n")
        if self.token and not self._authorized(request):
            self.stats["unauthorized"] += 1
            return _respond(connection, HTTPStatus.UNAUTHORIZED, "token: expected the server's shared token "
                            "(Authorization: Bearer TOKEN or ?token=TOKEN), got none or another\n")
        if not self.web or request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        if request.method not in ("GET", "HEAD"):
            r = _respond(connection, HTTPStatus.METHOD_NOT_ALLOWED,
                         f"method: expected GET or HEAD, got {request.method[:20]}\n")
            r.headers["Allow"] = "GET, HEAD"
            return r
        r = await self._get(connection, urlsplit(request.path))
        return dataclasses.replace(r, body=b"") if request.method == "HEAD" else r

    def _authorized(self, request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":   # RFC 7235: the scheme is case-insensitive
            given = (parse_qs(urlsplit(request.path).query).get("token") or [""])[0]
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    async def _get(self, connection, url):
        if url.path in ("/", "/index.html"):
            self.stats["http_page"] += 1
            page = importlib.resources.files(__package__).joinpath("web", "index.html")   # package data
            return _respond(connection, HTTPStatus.OK, page.read_text(encoding="utf-8"), "text/html; charset=utf-8")
        if url.path != "/clip.json":
            return _respond(connection, HTTPStatus.NOT_FOUND, f"path: expected /, /clip.json or a WebSocket "
                            f"upgrade, got {url.path[:200]}\n")
        q = parse_qs(url.query)
        try:
            key = (_query_num(q, "seconds", 10.0, float, 0.5, 120.0), _query_num(q, "seed", 0, int, 0, 2 ** 31 - 1))
        except UserError as e:
            return _respond(connection, HTTPStatus.BAD_REQUEST, f"{e}\n")
        if key not in self._clips:   # built in a thread, off the event loop; a bounded cache
            if len(self._clips) >= 16:
                self._clips.pop(next(iter(self._clips)))
            self._clips[key] = asyncio.get_running_loop().run_in_executor(
                self._http_executor, lambda: json.dumps(self.clip(*key), separators=(",", ":")))
        body = await asyncio.shield(self._clips[key])
        self.stats["http_clip"] += 1
        return _respond(connection, HTTPStatus.OK, body, "application/json")

    def clip(self, seconds: float = 10.0, seed: int = 0) -> dict:
        """A test clip for the web page: a random speaker stream (``speaker_segment``) cut into ``push`` messages
        of one decode step (ARIG: 0.1 s), each with the clip time ``t`` it is due; only the model's modalities.
        ``{"fps", "seconds", "seed", "kind", "history_words", "words", "pushes": [{"t", "msg"}]}``."""
        from .data.synthetic import speaker_segment
        sl, arig = self.listener, self.kind == "arig"
        fps, mods = float(sl.fps), self.model_info["modalities"]
        step, n_sa, sa_rate = (max(1, round(fps / 10)), int(sl.cfg.n_sa), sl.cfg.sa_rate) if arig else \
            (sl.r, int(sl.lm.vocab.n_sa), SA_RATE)
        use_w, use_sa, use_e = "W" in mods, "SA" in mods, "E" in mods or "emo" in mods
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
            if arig:
                msg["motion"] = seg.speaker_motion[f:f + n].tolist()
            elif not use_e:
                msg["frames"] = n
            pushes.append({"t": t1, "msg": msg})
            f += n
        return {"fps": fps, "seconds": T / fps, "seed": seed, "kind": self.kind,
                "history_words": wl(seg.history_words) if use_w else [], "words": wl(seg.words), "pushes": pushes}

    @contextlib.asynccontextmanager
    async def run(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, reuse_port: bool = False):
        """``async with server.run(host, port) as ws_server:`` (port 0: any free one, see ``.port``)."""
        self._wake = asyncio.Event()
        ticks = asyncio.create_task(self._tick_loop())
        try:
            async with _websockets_serve()(self.handler, host, port, max_size=self.max_message,
                                           max_queue=self.max_queue, close_timeout=self.close_timeout,
                                           compression=None, reuse_port=reuse_port,
                                           process_request=self._process_request) as ws_server:
                self.host, self.port = ws_server.sockets[0].getsockname()[:2]
                yield ws_server
        finally:
            ticks.cancel()

    async def serve_forever(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, reuse_port: bool = False):
        async with self.run(host, port, reuse_port) as srv:
            page = f"; web page http://{host}:{self.port}/" if self.web else ""
            print(f"minilisten serve (worker {self.worker}): ws://{host}:{self.port}{page} ({self.kind} model, "
                  f"protocol {PROTOCOL}, {self.max_sessions} sessions, {self.listener.fps:g} fps); Ctrl-C stops",
                  flush=True)
            await srv.serve_forever()


def _websockets_serve():
    try:
        from websockets.asyncio.server import serve
    except ImportError as e:
        raise UserError("serve: expected the websockets package (>= 13), got none installed; "
                        "pip install 'minilisten[serve]' (or pip install websockets)") from e
    return serve


def _respond(connection, status, body: str, content_type: str = "text/plain; charset=utf-8"):
    """A plain HTTP response (websockets ``connection.respond``) with this content type, not cached."""
    r = connection.respond(status, body)
    del r.headers["Content-Type"]
    r.headers["Content-Type"] = content_type
    r.headers["Cache-Control"] = "no-store"
    return r


def _query_num(q: dict, name: str, default, kind, lo, hi):
    """A number from a parsed query string (``?name=value``) in ``[lo, hi]``, else UserError."""
    v = q.get(name, [str(default)])[-1]
    with contextlib.suppress(ValueError):
        if lo <= kind(v) <= hi:   # NaN fails the comparison
            return kind(v)
    raise UserError(f"{name}: expected {'an integer' if kind is int else 'a number'} in [{lo:g}, {hi:g}], "
                    f"got {v[:60]!r}")


def _describe_lr(lm, vq) -> dict:
    """The ``hello`` message's model info for the LR-token model: modalities and sizes."""
    bb = lm.backbone.config   # transformers configs alias num_hidden_layers / hidden_size (GPT-2: n_layer / n_embd)
    return {"modalities": list(lm.modalities),
            "lm": {"backbone": bb.model_type, "parameters": sum(p.numel() for p in lm.parameters()),
                   "layers": bb.num_hidden_layers, "hidden": bb.hidden_size, "max_len": int(lm.max_len),
                   "lr_vocab": int(lm.config.n_lr), "frames_per_code": int(lm.config.r)},
            "vq": {"parameters": sum(p.numel() for p in vq.parameters()), "width": vq.config.width,
                   "codebook": vq.config.codebook_size, "dec_norm": vq.config.dec_norm,
                   "needs_beta": bool(vq.needs_beta), "receptive_field_codes": int(vq.receptive_field)}}


def _describe_arig(model) -> dict:
    """The ``hello`` message's model info for an ARIG model: config and size."""
    from .arig import STATES
    c = model.config
    return {"modalities": ["W"] * c.use_words + ["SA"] * bool(c.n_sa) + ["E"] * c.use_emotion,
            "arig": {"parameters": sum(p.numel() for p in model.parameters()), "d_model": c.d_model,
                     "d_ff": c.d_ff, "depth": c.depth, "window": c.window, "head": c.head, "ibu": c.ibu,
                     "sample_steps": c.sample_steps, "use_beta": bool(c.use_beta), "states": list(STATES)}}


def parser() -> argparse.ArgumentParser:
    """The ``serve`` command line."""
    p = ArgumentParser(prog="python -m minilisten serve", description="WebSocket server streaming "
                                "listener frames (expression, pose, head roll/pitch/yaw, jaw) to avatar and robot "
                                f"clients; JSON protocol version {PROTOCOL} (docs/server.md).")
    p.add_argument("--vq", help="VQ-VAE checkpoint directory (save_pretrained); with --lm")
    p.add_argument("--lm", help="ListenerLM checkpoint directory (save_pretrained); with --vq")
    p.add_argument("--arig", help="ARIG checkpoint directory (train-arig --out) instead of --vq/--lm")
    p.add_argument("--seed", type=int, default=0, help="ARIG: every session's noise seed at connect (default 0)")
    p.add_argument("--sample-steps", type=int, help="ARIG: Euler steps per frame (default: the model's)")
    p.add_argument("--max-skew", type=float, default=2.0, help="ARIG: seconds SA tokens may lead or lag the motion")
    p.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free port)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port, each with its own models, "
                   "--max-sessions slots and cores/N torch threads (default 1)")
    p.add_argument("--max-sessions", type=int, default=8, help="concurrent sessions per worker (decoded as one batch)")
    p.add_argument("--max-push-seconds", type=float, default=10.0, help="speaker seconds one push may carry")
    p.add_argument("--beta", help="default listener shape: .npy file of 100 floats (default: zeros)")
    p.add_argument("--sa-tokenizer", help="AcousticTokenizer directory: lets clients send 16 kHz audio")
    p.add_argument("--lookahead", type=int, help="VQ lookahead in codes (default: exact, the receptive field)")
    p.add_argument("--max-message", type=int, default=1 << 20, help="bytes per client message (default 1 MiB)")
    p.add_argument("--max-queue", type=int, default=64, help="messages buffered per session each way")
    p.add_argument("--no-web", action="store_true", help="no web page (/) and test clip (/clip.json) on the port")
    p.add_argument("--token-file", help="file of a shared token clients must send (default: no authentication)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    if bool(a.arig) == bool(a.vq or a.lm) or (not a.arig and not (a.vq and a.lm)):
        p.error("expected --vq DIR --lm DIR (LR-token model) or --arig DIR (ARIG model)")
    if a.arig and (a.lookahead is not None or a.sa_tokenizer):
        p.error("--lookahead, --sa-tokenizer: expected neither with --arig (it takes SA tokens, no lookahead)")
    _websockets_serve()
    for flag, v, lo, hi in (("--port", a.port, 0, 65535), ("--workers", a.workers, 1, 256), ("--seed", a.seed, 0,
                             2 ** 63 - 1), ("--max-push-seconds", a.max_push_seconds, 0.01, 3600)):
        if not lo <= v <= hi:
            raise UserError(f"{flag}: expected a number in [{lo}, {hi}], got {v}")
    a.beta_array, a.token = None, None
    if a.beta:
        from .safe_pickle import load_npy
        a.beta_array = np.asarray(load_npy(a.beta), np.float32).reshape(-1)
        if a.beta_array.shape != (N_SHAPE,):
            raise UserError(f"--beta {a.beta}: expected {N_SHAPE} floats, got shape {a.beta_array.shape}")
    if a.token_file:
        with open(a.token_file, encoding="utf-8") as f:
            a.token = f.read().strip()
        if not a.token:
            raise UserError(f"--token-file {a.token_file}: expected a non-empty token, got an empty file")
    if a.workers == 1:
        _serve(a, a.port)
        return 0
    return _serve_workers(a)


def _serve(a: argparse.Namespace, port: int, worker: int = 0) -> None:
    """Load the model and serve until Ctrl-C (``worker``: this process' index among ``--workers``)."""
    from .lm import ListenerLM
    from .vqvae import VQVAE
    if a.workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // a.workers))
    if a.arig:
        from .arig import ARIG
        model = ARIG.from_pretrained(a.arig).eval()
        fps, needs_beta = model.config.fps, model.config.use_beta
    else:
        vq, lm = VQVAE.from_pretrained(a.vq).eval(), ListenerLM.from_pretrained(a.lm).eval()
        fps, needs_beta = lm.config.fps, vq.needs_beta
    beta, source = ((a.beta_array, f"--beta {a.beta}") if a.beta else (None, "none (identity-free model)")
                    if not needs_beta else (np.zeros(N_SHAPE, np.float32), "zeros (FLAME mean shape)"))
    kw = dict(n_streams=a.max_sessions, max_push_frames=max(1, round(a.max_push_seconds * fps)))
    if a.arig:
        listener = StreamingARIG(model, beta, seed=a.seed, steps=a.sample_steps, max_skew=a.max_skew, **kw)
    else:
        from .speaker import AcousticTokenizer
        tok = AcousticTokenizer.load(a.sa_tokenizer) if a.sa_tokenizer else None
        listener = StreamingListener(lm, vq, beta, lookahead=a.lookahead, sa_tokenizer=tok, **kw)
    server = ListenerServer(listener, beta, beta_source=source, max_queue=a.max_queue, max_message=a.max_message,
                            token=a.token, web=not a.no_web, worker=worker)
    try:
        asyncio.run(server.serve_forever(a.host, port, reuse_port=a.workers > 1))
    except KeyboardInterrupt:
        pass


def _serve_workers(a: argparse.Namespace) -> int:
    """``--workers N``: N spawned processes serving one port (SO_REUSEPORT: the kernel spreads connections)."""
    import multiprocessing
    import socket
    family, _, _, _, addr = socket.getaddrinfo(a.host, a.port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as hold:   # reserves the port (0: picks one); never listens
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        hold.bind(addr)
        procs = [multiprocessing.get_context("spawn").Process(target=_serve, args=(a, hold.getsockname()[1], k))
                 for k in range(a.workers)]
        for pr in procs:
            pr.start()
        print(f"minilisten serve: {a.workers} workers on port {hold.getsockname()[1]}", flush=True)
        for pr in procs:
            while pr.exitcode is None:
                with contextlib.suppress(KeyboardInterrupt):   # a terminal's Ctrl-C reaches the workers too
                    pr.join()
    return 0 if all(pr.exitcode == 0 for pr in procs) else 1
