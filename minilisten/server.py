"""WebSocket server: live listener frames for avatar and robot stacks (``python -m minilisten serve``).

Per worker process, one streaming listener with ``n_streams = max_sessions`` (the LR-token model, or ARIG with
``--arig``) serves every connection: each round of waiting pushes is one ``push_many`` in a decode thread.
JSON protocol :data:`PROTOCOL`; messages, limits, faults and robot angles: docs/server.md.
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
import math
import os
import re
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

try:
    from websockets.asyncio.server import serve as ws_serve
    from websockets.exceptions import ConnectionClosed
except ImportError:   # the optional extra is missing: need_websockets() says how to install it
    ws_serve, ConnectionClosed = None, ()

from .cli_config import ArgumentParser
from .data.segment import D_MOTION, EMOTIONS, N_EXP, N_SHAPE
from .errors import UserError
from .streaming import ProtocolError, StreamingARIG, StreamingListener, parse_push, parse_words
from .tokens import SA_RATE

PROTOCOL = 2   # 2 = 1 + the ARIG model kind (hello kind / min_client_protocol / input.required)
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
MAX_DEPTH = 32   # nesting of a client message's arrays and objects (a push needs 4)
_STREAM_REF = re.compile(r",\s*stream \d+|\s*\(stream \d+\)")
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")


def robot_angles(motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(n, 56)`` -> head roll/pitch/yaw ``(n, 3)`` and jaw opening (its pitch) ``(n,)``, degrees, from the
    axis-angle pose dims 50:56 as ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` (ROS REP-103, docs/server.md)."""
    from scipy.spatial.transform import Rotation
    head, jaw = (Rotation.from_rotvec(motion[:, i:i + 3].astype(np.float64)).as_euler("YXZ", degrees=True)
                 for i in (N_EXP, N_EXP + 3))
    return head[:, ::-1].copy(), jaw[:, 1]


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


def need_websockets() -> None:
    if ws_serve is None:
        raise UserError("serve: expected the websockets package (>= 13), got none installed; "
                        "pip install 'minilisten[serve]' (or pip install websockets)")


@dataclasses.dataclass(eq=False)
class _Session:
    slot: int
    ws: object
    outbox: asyncio.Queue
    reply: asyncio.Future | None = None   # of the message in the decode round
    sent_frames: int = 0              # frames sent since the stream's start (the next frame's index)
    closed: bool = False


class ListenerServer:
    """Serves ``listener`` (a StreamingListener or StreamingARIG; its ``n_streams`` are the session slots) to
    WebSocket clients; ``beta``: every session's identity at connect (None: the model has none). Run as
    ``async with server.run(host, port)``; the options: docs/server.md."""

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
        self.default_beta = None if beta is None else np.asarray(beta, np.float32)
        self.seeds = [st.seed for st in listener.streams]   # each slot's seed at connect
        for slot in range(listener.n_streams):   # and its identity
            listener.set_beta(self.default_beta, slot)
        self.max_sessions, self.max_queue, self.max_message = listener.n_streams, max_queue, max_message
        self.close_timeout, self.token, self.web, self.worker = float(close_timeout), token, bool(web), worker
        self.info = self._hello(beta_source)
        self.free = collections.deque(range(self.max_sessions))
        self.sessions: dict[int, _Session] = {}
        self._release: list[int] = []          # slots of closed sessions, reset and freed by the tick loop
        self._work: dict = {}                  # slot -> (session, (op, kwargs, id)) for the next decode round
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilisten-decode")
        self._http_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilisten-http")
        self._clips: dict = {}                 # (seconds, seed) -> future of the /clip.json body
        self.stats = collections.Counter()     # ticks, pushes, frames, refused, slow_closed, internal_errors, ...

    def _hello(self, beta_source: str) -> dict:
        """The ``hello`` message (a session's first): protocol, model, the input it takes, output and limits."""
        from . import __version__
        sl, beta = self.listener, self.default_beta
        if self.kind == "arig":
            from .arig import STATES
            c = sl.cfg
            mods = ["W"] * c.use_words + ["SA"] * bool(c.n_sa) + ["E"] * c.use_emotion
            model = {"arig": {"parameters": _n_params(sl.model), "d_model": c.d_model, "d_ff": c.d_ff,
                              "depth": c.depth, "window": c.window, "head": c.head, "ibu": c.ibu,
                              "sample_steps": c.sample_steps, "use_beta": bool(c.use_beta), "states": list(STATES)}}
            inp = {"required": ["motion"] + ["sa_tokens"] * bool(c.n_sa) + ["emotion"] * c.use_emotion,
                   "motion": D_MOTION, "modalities": mods, "sa_rate": c.sa_rate if c.n_sa else None,
                   "sa_vocab": int(c.n_sa), "audio": False, "sample_rate": None}
            step, lookahead, delay = 1, 0, 0.0
            sampling = {"steps": sl.steps, "temperature": sl.temperature}
        else:
            lm, vq, bb = sl.lm, sl.vq, sl.lm.backbone.config   # transformers configs alias num_hidden_layers
            mods = list(lm.modalities)
            model = {"lm": {"backbone": bb.model_type, "parameters": _n_params(lm), "layers": bb.num_hidden_layers,
                            "hidden": bb.hidden_size, "max_len": int(lm.max_len), "lr_vocab": int(lm.config.n_lr),
                            "frames_per_code": int(lm.config.r)},
                     "vq": {"parameters": _n_params(vq), "width": vq.config.width, "codebook": vq.config.codebook_size,
                            "dec_norm": vq.config.dec_norm, "needs_beta": bool(vq.needs_beta),
                            "receptive_field_codes": int(vq.receptive_field)}}
            inp = {"modalities": mods, "sa_rate": SA_RATE, "sa_vocab": int(lm.vocab.n_sa),
                   "audio": sl.sa_tokenizer is not None, "sample_rate": sl.sample_rate}
            step, lookahead, delay = sl.r, sl.lookahead, sl.r * (sl.lookahead + 1) / sl.fps
            sampling = {k: getattr(sl.sampling, k) for k in ("temperature", "top_k", "top_p")}   # temperature 0: greedy
        return {"type": "hello", "protocol": PROTOCOL, "kind": self.kind,
                "min_client_protocol": 2 if self.kind == "arig" else 1, "server": f"minilisten {__version__}",
                "worker": self.worker, "fps": sl.fps, "frames_per_step": step, "lookahead_steps": lookahead,
                "max_delay_s": delay,
                "identity": {"beta": None if beta is None else beta.tolist(), "source": beta_source},
                "model": {"modalities": mods, **model},
                "input": {**inp, "emotions": list(EMOTIONS), "max_skew_s": sl.max_skew},
                "output": {"expression": N_EXP, "pose": D_MOTION - N_EXP, "head_rpy_deg": 3, "jaw_open_deg": 1,
                           "encoding": "json"},
                "limits": {"max_sessions": self.max_sessions, "max_message_bytes": self.max_message,
                           "max_queue": self.max_queue, "max_push_frames": sl.max_push_frames}, "sampling": sampling}

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
            await ws.send(json.dumps(self._error(err, "connect", None)))
            await ws.close(1013, "server full")
            return
        s = _Session(self.free.popleft(), ws, asyncio.Queue(self.max_queue))
        self.sessions[s.slot] = s
        await self._reply(s, {**self.info, "sampling": {"seed": self.seeds[s.slot], **self.info["sampling"]}})
        sender = asyncio.create_task(self._sender(s))
        try:
            async for raw in ws:
                msg = None
                try:
                    msg = load_message(raw)
                    item = (*self._parse(msg), msg.get("id"))
                    s.reply = asyncio.get_running_loop().create_future()   # one message at a time: replies in order
                    self._work[s.slot] = (s, item)
                    self._wake.set()
                    reply = await s.reply
                except ProtocolError as e:
                    reply = self._error(e, None, msg.get("id") if msg else None)
                await self._reply(s, reply)
                if s.closed:   # closed as a slow client
                    break
        except ConnectionClosed:   # abnormal close (reset, oversized or bad frames): the session just ends
            pass
        finally:
            s.closed = True
            self.sessions.pop(s.slot, None)
            self._work.pop(s.slot, None)   # a message still waiting never reaches the slot's next session
            self._release.append(s.slot)
            self._wake.set()
            sender.cancel()

    def _parse(self, msg: dict) -> tuple[str, dict]:
        """A client message -> (op, keyword arguments), or ProtocolError."""
        op = msg.get("type")
        own = {"push": (), "set_beta": ("beta",), "reset": ("history_words", "seed"), "end": (), "flush": ()}
        if not isinstance(op, str) or op not in own:
            raise ProtocolError("type", "one of " + ", ".join(own), op)
        if op == "push":
            return op, parse_push(msg, self.kind)
        allowed = ("type", "id", *own[op])
        extra = sorted(set(msg) - set(allowed))
        if extra:
            raise ProtocolError(extra[0], f"only the fields {', '.join(allowed)} in {op}", extra[0])
        kw = {k: msg.get(k) for k in own[op]}   # the seed and beta are checked by the stream
        if op == "reset":
            kw["history_words"] = parse_words("history_words", kw["history_words"])
        return ("end" if op == "flush" else op), kw

    async def _reply(self, s: _Session, msg: dict) -> None:
        try:
            s.outbox.put_nowait(msg)
            self.stats["max_outbox"] = max(self.stats["max_outbox"], s.outbox.qsize())
        except asyncio.QueueFull:   # a client that does not read its frames: close it, keep the others
            s.closed = True
            self.stats["slow_closed"] += 1
            try:   # close() drains first: a client that reads nothing is cut off after close_timeout
                await asyncio.wait_for(s.ws.close(1008, f"slow client: {self.max_queue} replies unread"),
                                       self.close_timeout)
            except asyncio.TimeoutError:
                s.ws.transport.abort()

    async def _sender(self, s: _Session) -> None:
        """Strict JSON out: a reply holding a non-finite number is a bug, answered as one and never sent."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                msg = await s.outbox.get()
                try:
                    text = json.dumps(msg, separators=(",", ":"), allow_nan=False)
                except ValueError as e:
                    text = json.dumps(self._error(e, msg.get("op", msg["type"]), msg.get("id"), bug=True))
                await s.ws.send(text)

    async def _tick_loop(self) -> None:
        """Each round: the waiting message of every session, run in the decode thread (the round's pushes are one
        ``push_many``), then the replies."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            (work, self._work), (release, self._release) = (self._work, {}), (self._release, [])
            try:
                replies = await loop.run_in_executor(self._executor, self._run_tick, work, release)
            except Exception as e:   # a bug outside every session's own try: answer each, keep serving
                replies = {slot: self._error(e, item[0], item[2]) for slot, (_, item) in work.items()}
            self.free.extend(release)
            for slot, msg in replies.items():
                if not work[slot][0].reply.cancelled():
                    work[slot][0].reply.set_result(msg)

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
                    pushes[slot] = kw
                    continue
                out[slot] = {"type": "ok", "op": op, "id": msg_id}
                if op == "set_beta":
                    sl.set_beta(self.default_beta if kw["beta"] is None else kw["beta"], slot)
                    continue
                if op == "end":   # the held-back frames, then a fresh stream (same identity, history)
                    out[slot] = self._frames(s, sl.flush(slot), msg_id, final=True)
                sl.reset(slot, **kw)
                s.sent_frames = 0
            except Exception as e:
                out[slot] = self._error(e, op, msg_id)
        if pushes:
            self.stats.update(ticks=1, pushes=len(pushes))
            self.stats["max_batch"] = max(self.stats["max_batch"], len(pushes))
            try:
                res = sl.push_many(pushes)
            except Exception as e:   # a bug outside any one stream (each stream's own error is in its result)
                res = {b: e for b in pushes}
            for b, r in res.items():
                s, (_, _, msg_id) = work[b]
                out[b] = self._frames(s, r, msg_id) if isinstance(r, np.ndarray) else self._error(r, "push", msg_id)
        return out

    def _error(self, e: Exception, op: str | None, msg_id, bug: bool = False) -> dict:
        """The ``error`` reply: a ValueError ``"FIELD (stream b): expected X, got Y"`` is the client's (the slot left
        out); anything else (or ``bug``) is an internal error, logged with its traceback."""
        if isinstance(e, ValueError) and not bug:
            text = _STREAM_REF.sub("", str(e)).strip()
            f = re.match(r"([A-Za-z_][\w\[\]./]*)[^:]*:", text)
            m = re.search(r"\bexpected\s+(.*?)(?:,\s*got\s+(.*))?$", text, re.S)
            fld, (exp, act) = f[1] if f else "message", m.groups() if m else (None, None)
            return {"type": "error", "op": op, "id": msg_id, "field": fld, "expected": exp, "actual": act,
                    "message": text}
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
            if (n := len(request.headers.get_all(name))) > 1:
                return _respond(connection, HTTPStatus.BAD_REQUEST, f"{name}: expected at most one header, got {n}\n")
        url = urlsplit(request.path)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":   # RFC 7235: the scheme is case-insensitive
            given = (parse_qs(url.query).get("token") or [""])[0]
        if self.token and not hmac.compare_digest(given.strip().encode(), self.token.encode()):
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
        if url.path in ("/", "/index.html"):
            page = importlib.resources.files(__package__).joinpath("web", "index.html")   # package data
            r = _respond(connection, HTTPStatus.OK, page.read_text(encoding="utf-8"), "text/html; charset=utf-8")
        elif url.path == "/clip.json":
            r = await self._clip_json(connection, parse_qs(url.query))
        else:
            r = _respond(connection, HTTPStatus.NOT_FOUND, f"path: expected /, /clip.json or a WebSocket "
                         f"upgrade, got {url.path[:200]}\n")
        return dataclasses.replace(r, body=b"") if request.method == "HEAD" else r

    async def _clip_json(self, connection, q: dict):
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
        return _respond(connection, HTTPStatus.OK, body, "application/json")

    def clip(self, seconds: float = 10.0, seed: int = 0) -> dict:
        """A test clip for the web page: a random speaker stream (``speaker_segment``) cut into ``push`` messages
        of one decode step (ARIG: 0.1 s), each with the clip time ``t`` it is due; only the model's modalities.
        ``{"fps", "seconds", "seed", "kind", "history_words", "words", "pushes": [{"t", "msg"}]}``."""
        from .data.synthetic import speaker_segment
        inp, fps = self.info["input"], float(self.listener.fps)
        mods, step = inp["modalities"], max(1, round(fps / 10)) if self.kind == "arig" else self.listener.r
        use_e = "E" in mods or "emo" in mods
        seg = speaker_segment(seconds, fps=fps, seed=seed, n_sa=max(inp["sa_vocab"], 1))

        def word_list(words):
            return [[w.text, round(w.start, 4), round(w.end, 4)] for w in words]
        pushes = []
        for f in range(0, seg.T, step):
            n = min(step, seg.T - f)
            t0, t1 = f / fps, (f + n) / fps
            msg = {"type": "push", "id": len(pushes)}
            if "W" in mods:
                msg["words"] = word_list([w for w in seg.words if t0 < w.end <= t1 + 1e-9])
            if "SA" in mods:   # the tokens that start in the push's time, the rest with the last push
                a, z = (min(seg.sa_tokens.size, int(t * inp["sa_rate"])) for t in (t0, t1))
                msg["sa_tokens"] = seg.sa_tokens[a:z if f + n < seg.T else None].tolist()
            if use_e:
                msg["emotion"] = np.round(seg.emotion[f:f + n], 5).tolist()
            if self.kind == "arig":
                msg["motion"] = seg.speaker_motion[f:f + n].tolist()
            elif not use_e:
                msg["frames"] = n
            pushes.append({"t": t1, "msg": msg})
        return {"fps": fps, "seconds": seg.T / fps, "seed": seed, "kind": self.kind,
                "history_words": word_list(seg.history_words) if "W" in mods else [], "words": word_list(seg.words),
                "pushes": pushes}

    @contextlib.asynccontextmanager
    async def run(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, reuse_port: bool = False):
        """``async with server.run(host, port) as ws_server:`` (port 0: any free one, see ``.port``)."""
        need_websockets()
        self._wake = asyncio.Event()
        ticks = asyncio.create_task(self._tick_loop())
        try:
            async with ws_serve(self.handler, host, port, max_size=self.max_message, max_queue=self.max_queue,
                                close_timeout=self.close_timeout, compression=None, reuse_port=reuse_port,
                                process_request=self._process_request) as ws_server:
                self.host, self.port = ws_server.sockets[0].getsockname()[:2]
                yield ws_server
        finally:
            ticks.cancel()


def _respond(connection, status, body: str, content_type: str = "text/plain; charset=utf-8"):
    """A plain HTTP response (websockets ``connection.respond``) with this content type, not cached."""
    r = connection.respond(status, body)
    del r.headers["Content-Type"]
    r.headers["Content-Type"] = content_type
    r.headers["Cache-Control"] = "no-store"
    return r


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _query_num(q: dict, name: str, default, kind, lo, hi):
    """A number from a parsed query string (``?name=value``) in ``[lo, hi]``, else UserError."""
    v = q.get(name, [str(default)])[-1]
    with contextlib.suppress(ValueError):
        if lo <= kind(v) <= hi:   # NaN fails the comparison
            return kind(v)
    raise UserError(f"{name}: expected {'an integer' if kind is int else 'a number'} in [{lo:g}, {hi:g}], "
                    f"got {v[:60]!r}")


def parser() -> argparse.ArgumentParser:
    """The ``serve`` command line."""
    p = ArgumentParser(prog="python -m minilisten serve", description="WebSocket server streaming "
                                "listener frames (expression, pose, head roll/pitch/yaw, jaw) to avatar and robot "
                                f"clients; JSON protocol version {PROTOCOL} (docs/server.md).")
    p.add_argument("--vq", help="VQ-VAE checkpoint directory (save_pretrained); with --lm")
    p.add_argument("--lm", help="ListenerLM checkpoint directory (save_pretrained); with --vq")
    p.add_argument("--arig", help="ARIG checkpoint directory (train-arig --out) instead of --vq/--lm")
    p.add_argument("--seed", type=int, default=0, help="every session's sampling seed at connect (default 0)")
    p.add_argument("--temperature", type=float, help="LR codes: sampling temperature (default 0: greedy); ARIG: "
                   "noise scale (default: the model's, chosen on validation by train-arig)")
    p.add_argument("--top-k", type=int, default=0, help="LR codes: sample from the k best (default 0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="LR codes: sample from the top-p mass (default 1)")
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
    if (a.vq, a.lm, a.arig).count(None) != (2 if a.arig else 1):
        p.error("expected --vq DIR --lm DIR (LR-token model) or --arig DIR (ARIG model)")
    if a.arig and (a.lookahead is not None or a.sa_tokenizer or a.top_k or a.top_p != 1.0):
        p.error("--lookahead, --sa-tokenizer, --top-k, --top-p: expected none with --arig (SA tokens, no lookahead, "
                "Gaussian noise)")
    if a.arig and a.temperature is not None and not 0 <= a.temperature < math.inf:
        raise UserError(f"--temperature: expected a finite number >= 0, got {a.temperature}")
    if not a.arig:   # checked here, before any worker starts
        from .generate import Sampling
        try:
            a.sampling = Sampling(a.temperature or 0.0, a.top_k, a.top_p)
        except UserError as e:
            raise UserError(f"--temperature/--top-k/--top-p: {e}") from None
    need_websockets()
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
    return _serve_workers(a) if a.workers > 1 else _serve(a, a.port)


def _on_sigterm(handler) -> None:
    """A supervisor's SIGTERM (systemd, docker stop, Kubernetes) stops the server as Ctrl-C does; only the main
    thread takes signals, so a server started from another thread keeps the default."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _serve(a: argparse.Namespace, port: int, worker: int = 0) -> int:
    """Load the model and serve until Ctrl-C or SIGTERM (``worker``: this process' index among ``--workers``)."""
    _on_sigterm(signal.default_int_handler)
    if a.workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // a.workers))
    if a.arig:
        from .arig import ARIG
        model = ARIG.from_pretrained(a.arig).eval()
        fps, needs_beta = model.config.fps, model.config.use_beta
    else:
        from .lm import ListenerLM
        from .vqvae import VQVAE
        vq, lm = VQVAE.from_pretrained(a.vq).eval(), ListenerLM.from_pretrained(a.lm).eval()
        fps, needs_beta = lm.config.fps, vq.needs_beta
    beta, source = ((a.beta_array, f"--beta {a.beta}") if a.beta else (None, "none (identity-free model)")
                    if not needs_beta else (np.zeros(N_SHAPE, np.float32), "zeros (FLAME mean shape)"))
    kw = dict(n_streams=a.max_sessions, max_push_frames=max(1, round(a.max_push_seconds * fps)))
    if a.arig:
        listener = StreamingARIG(model, beta, seed=a.seed, steps=a.sample_steps, max_skew=a.max_skew,
                                 temperature=a.temperature, **kw)
    else:
        from .speaker import AcousticTokenizer
        tok = AcousticTokenizer.load(a.sa_tokenizer) if a.sa_tokenizer else None
        listener = StreamingListener(lm, vq, beta, lookahead=a.lookahead, sa_tokenizer=tok, sampling=a.sampling,
                                     seed=a.seed, **kw)
    server = ListenerServer(listener, beta, beta_source=source, max_queue=a.max_queue, max_message=a.max_message,
                            token=a.token, web=not a.no_web, worker=worker)

    async def serve_forever():
        async with server.run(a.host, port, reuse_port=a.workers > 1) as srv:
            page = f"; web page http://{a.host}:{server.port}/" if server.web else ""
            # one write with its newline: print() writes the text and the newline apart, and the workers share stdout
            sys.stdout.write(f"minilisten serve (worker {worker}): ws://{a.host}:{server.port}{page} ({server.kind} "
                             f"model, protocol {PROTOCOL}, {a.max_sessions} sessions, {listener.fps:g} fps); Ctrl-C "
                             "stops\n")
            sys.stdout.flush()
            await srv.serve_forever()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever())
    return 0


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
        _on_sigterm(lambda *_: [pr.terminate() for pr in procs if pr.exitcode is None])   # passed on to each worker
        print(f"minilisten serve: {a.workers} workers on port {hold.getsockname()[1]}", flush=True)
        for pr in procs:
            while pr.exitcode is None:
                with contextlib.suppress(KeyboardInterrupt):   # a terminal's Ctrl-C reaches the workers too
                    pr.join()
    return 0 if all(pr.exitcode == 0 for pr in procs) else 1
