"""minilisten.server: the WebSocket protocol against direct StreamingListener runs (tiny random models)."""
import asyncio
import collections
import contextlib
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

pytest.importorskip("websockets")
from conftest import chunks, tiny_lm, tiny_vq  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from minilisten.data.segment import N_SHAPE  # noqa: E402
from minilisten.data.synthetic import speaker_segment  # noqa: E402
from minilisten.server import PROTOCOL, ListenerServer, parser, robot_angles  # noqa: E402
from minilisten.streaming import StreamingListener  # noqa: E402

R, LOOKAHEAD = 8, 4


@pytest.fixture(scope="module")
def models():
    return tiny_lm("gpt2"), tiny_vq("adaln")


def wire(push: dict) -> dict:
    """A StreamingListener push (test_streaming.chunks) as a protocol message."""
    return {"type": "push", "words": [[w.text, w.start, w.end] for w in push["words"]],
            "sa_tokens": [int(t) for t in push["sa_tokens"]], "emotion": push["emotion"].tolist()}


def direct(lm, vq, seg, pushes, beta=None):
    """Reference: a solo StreamingListener; per push frames (n, 56), then flush."""
    sl = StreamingListener(lm, vq, np.zeros(N_SHAPE) if beta is None else beta, history_words=seg.history_words)
    return [sl.push(**p) for p in pushes] + [sl.flush()]


def motion_of(msg) -> np.ndarray:
    assert msg["type"] == "frames", msg
    if msg["n"] == 0:
        return np.zeros((0, 56), np.float32)
    return np.concatenate([np.array(msg["expression"], np.float32), np.array(msg["pose"], np.float32)], 1)


def strict_json(text: str):
    """json.loads refusing NaN / Infinity (a browser's JSON.parse does): every reply must pass."""
    def refuse(name):
        raise AssertionError(f"{name} on the wire: {text[:200]}")
    return json.loads(text, parse_constant=refuse)


async def recv(ws):
    return strict_json(await asyncio.wait_for(ws.recv(), 60))


async def stream_session(ws, seg, pushes, beta=None):
    """reset with the segment's history words (+ set_beta), every push, end: the replies."""
    return await session(ws, seg.history_words, pushes, beta)


async def session(ws, history, pushes, beta=None, seed=None, encode=None):
    """set_beta (when ``beta``), reset with ``history`` (+ ``seed``), every push (``encode``d for the
    wire; default :func:`wire`), end: the replies in order."""
    encode = encode or wire
    out = []
    if beta is not None:
        await ws.send(json.dumps({"type": "set_beta", "beta": [float(x) for x in beta], "id": "b"}))
        out.append(await recv(ws))
    await ws.send(json.dumps({"type": "reset", "id": "r", "history_words": [[w.text, w.start, w.end] for w in history],
                              **({} if seed is None else {"seed": seed})}))
    out.append(await recv(ws))
    for k, p in enumerate(pushes):
        await ws.send(json.dumps({**encode(p), "id": k}))
        out.append(await recv(ws))
    await ws.send(json.dumps({"type": "end", "id": "end"}))
    out.append(await recv(ws))
    return out


def lr_server(lm, vq, max_sessions=8, lookahead=None, sa_tokenizer=None, max_push_seconds=10.0, **kw):
    """A ListenerServer over a StreamingListener as ``serve`` makes it (the zeros identity; ``kw``: the server's)."""
    sl = StreamingListener(lm, vq, np.zeros(N_SHAPE), n_streams=max_sessions, lookahead=lookahead,
                           sa_tokenizer=sa_tokenizer, max_push_frames=round(30 * max_push_seconds))
    return ListenerServer(sl, np.zeros(N_SHAPE), beta_source="zeros (FLAME mean shape)", **kw)


def run_server(models, body, **kw):
    """Start a server (:func:`lr_server`) on an ephemeral port, run ``await body(server, url)``, stop it."""
    lm, vq = models

    async def main():
        server = lr_server(lm, vq, **kw)
        async with server.run(port=0):
            return await body(server, f"ws://127.0.0.1:{server.port}")
    return asyncio.run(main())


def check_frames(replies, ref, pushes):
    """Frame replies (one per push, then the final one) equal the direct run push by push."""
    frames = [m for m in replies if m["type"] == "frames"]
    assert [m["id"] for m in frames] == list(range(len(pushes))) + ["end"]
    assert [m["n"] for m in frames] == [len(r) for r in ref]
    start = 0
    for m, r in zip(frames, ref):
        assert m["start"] == start and m["t0"] == start / 30.0
        np.testing.assert_array_equal(motion_of(m), r)
        start += m["n"]
    assert frames[-1]["final"] and not any(m["final"] for m in frames[:-1])


def test_hello(models):
    lm, vq = models

    async def body(server, url):
        async with connect(url) as ws:
            return await recv(ws)
    h = run_server(models, body, max_sessions=3)
    assert h["type"] == "hello" and h["protocol"] == PROTOCOL == 2 and h["kind"] == "lr-token"
    assert h["min_client_protocol"] == 1   # LR-token sessions: every version-1 message and reply unchanged
    assert h["fps"] == 30.0 and h["frames_per_step"] == R and h["lookahead_steps"] == LOOKAHEAD
    assert h["max_delay_s"] == pytest.approx(R * (LOOKAHEAD + 1) / 30)
    assert h["identity"]["beta"] == [0.0] * N_SHAPE and "zeros" in h["identity"]["source"]
    assert h["model"]["modalities"] == list(lm.modalities) == h["input"]["modalities"]
    assert h["model"]["lm"]["parameters"] == sum(p.numel() for p in lm.parameters())
    assert h["model"]["vq"]["parameters"] == sum(p.numel() for p in vq.parameters())
    assert h["model"]["vq"]["codebook"] == vq.config.codebook_size and h["model"]["lm"]["backbone"] == "gpt2"
    assert h["limits"]["max_sessions"] == 3 and h["input"]["sa_vocab"] == lm.vocab.n_sa
    assert h["output"] == {"expression": 50, "pose": 6, "head_rpy_deg": 3, "jaw_open_deg": 1, "encoding": "json"}
    assert h["sampling"] == {"seed": 0, "temperature": 0.0, "top_k": 0, "top_p": 1.0}   # greedy: the paper's


def test_session_equals_direct_run(models):
    """Words + SA + emotion in irregular chunks: one reply per push, frames identical to a direct
    StreamingListener run, released at the times the lookahead implies."""
    lm, vq = models
    seg = speaker_segment(5.0, seed=1)
    pushes = chunks(seg, seed=3)
    ref = direct(lm, vq, seg, pushes)

    async def body(server, url):
        async with connect(url) as ws:
            assert (await recv(ws))["type"] == "hello"
            return await stream_session(ws, seg, pushes)
    replies = run_server(models, body, max_sessions=2)
    assert replies[0] == {"type": "ok", "op": "reset", "id": "r"}
    check_frames(replies, ref, pushes)
    # independently of the reference: after F speaker frames (SA in step), 8 * (F // 8 - lookahead) frames are out
    F, out = 0, 0
    for p, m in zip(pushes, replies[1:]):
        F += len(p["emotion"])
        out += m["n"]
        assert out == R * max(0, F // R - LOOKAHEAD), (F, out)
    assert out + replies[-1]["n"] == R * (seg.T // R)
    # robot angles: derived from the pose dims of the same frames
    m = next(x for x in replies if x["type"] == "frames" and x["n"])
    head, jaw = robot_angles(motion_of(m))
    np.testing.assert_allclose(m["head_rpy_deg"], head, atol=1e-9)
    np.testing.assert_allclose(m["jaw_open_deg"], jaw, atol=1e-9)


def test_concurrent_sessions_isolated(models):
    """Two sessions streaming at once (their pushes share push_many batches), with different
    betas: each equals its solo run."""
    lm, vq = models
    segs = [speaker_segment(4.0, seed=20 + k) for k in range(2)]
    pushes = [chunks(s, seed=30 + k) for k, s in enumerate(segs)]
    betas = [None, np.random.default_rng(0).normal(size=N_SHAPE)]
    refs = [direct(lm, vq, s, p, b) for s, p, b in zip(segs, pushes, betas)]
    assert not np.array_equal(np.concatenate(refs[0]), np.concatenate(direct(lm, vq, segs[0], pushes[0], betas[1])))

    async def body(server, url):
        async def one(k):
            async with connect(url) as ws:
                await recv(ws)
                return await stream_session(ws, segs[k], pushes[k], betas[k])
        out = await asyncio.gather(one(0), one(1))
        return out, dict(server.stats)
    (r0, r1), stats = run_server(models, body, max_sessions=3)
    check_frames(r0, refs[0], pushes[0])
    check_frames(r1, refs[1], pushes[1])
    assert stats["max_batch"] == 2 and stats["ticks"] < stats["pushes"]   # batched decode steps happened


def test_set_beta_and_reset(models):
    """set_beta mid-stream equals StreamingListener.set_beta at the same point; set_beta null goes
    back to the default; reset restarts the clock (frame index 0) with a fresh stream."""
    lm, vq = models
    seg = speaker_segment(4.0, seed=5)
    pushes = chunks(seg, seed=6)
    half = len(pushes) // 2
    beta = np.random.default_rng(1).normal(size=N_SHAPE)
    sl = StreamingListener(lm, vq, np.zeros(N_SHAPE), history_words=seg.history_words)
    ref = [sl.push(**p) for p in pushes[:half]]
    sl.set_beta(beta)
    ref += [sl.push(**p) for p in pushes[half:]] + [sl.flush()]

    async def body(server, url):
        async with connect(url) as ws:
            h = await recv(ws)
            await ws.send(json.dumps({"type": "reset", "history_words": [[w.text, w.start, w.end]
                                                                         for w in seg.history_words]}))
            out = [await recv(ws)]
            for k, p in enumerate(pushes):
                if k == half:
                    await ws.send(json.dumps({"type": "set_beta", "beta": beta.tolist(), "id": "b"}))
                    out.append(await recv(ws))
                await ws.send(json.dumps({**wire(p), "id": k}))
                out.append(await recv(ws))
            await ws.send(json.dumps({"type": "flush", "id": "end"}))
            out.append(await recv(ws))
            # reset mid-stream, then the first pushes again with the default beta: a fresh stream
            await ws.send(json.dumps({"type": "set_beta", "beta": None}))
            out2 = [await recv(ws)]
            for k, p in enumerate(pushes[:3]):
                await ws.send(json.dumps({**wire(p), "id": k}))
                out2.append(await recv(ws))
            await ws.send(json.dumps({"type": "reset", "history_words": [[w.text, w.start, w.end]
                                                                         for w in seg.history_words]}))
            out2.append(await recv(ws))
            for k, p in enumerate(pushes):
                await ws.send(json.dumps({**wire(p), "id": k}))
                out2.append(await recv(ws))
            await ws.send(json.dumps({"type": "end", "id": "end"}))
            out2.append(await recv(ws))
            return h, out, out2
    h, out, out2 = run_server(models, body, max_sessions=1)
    assert {"type": "ok", "op": "set_beta", "id": "b"} in out
    check_frames(out, ref, pushes)
    assert out2[0]["type"] == "ok" and out2[4] == {"type": "ok", "op": "reset", "id": None}
    check_frames(out2[5:], direct(lm, vq, seg, pushes), pushes)


def test_sampled_sessions_seeded_by_reset(models):
    """Sampled LR codes (issue 25): hello describes the sampling and the connect seed; two concurrent sessions
    reset with seeds 3 and 4 equal solo StreamingListeners with those seeds (and the seed matters)."""
    from minilisten.generate import Sampling
    lm, vq = models
    sampling = Sampling(temperature=1.5, top_k=20)
    seg = speaker_segment(4.0, seed=21)
    pushes = chunks(seg, seed=31)

    def solo(seed):
        sl = StreamingListener(lm, vq, np.zeros(N_SHAPE), history_words=seg.history_words, sampling=sampling,
                               seed=seed)
        return [sl.push(**p) for p in pushes] + [sl.flush()]
    refs = {k: solo(k) for k in (3, 4)}
    assert not np.array_equal(np.concatenate(refs[3]), np.concatenate(refs[4]))

    async def main():
        sl = StreamingListener(lm, vq, np.zeros(N_SHAPE), n_streams=2, sampling=sampling, seed=9)
        server = ListenerServer(sl, np.zeros(N_SHAPE), beta_source="zeros (FLAME mean shape)")
        async with server.run(port=0):
            async def one(seed):
                async with connect(f"ws://127.0.0.1:{server.port}") as ws:
                    hello = await recv(ws)
                    return hello, await session(ws, seg.history_words, pushes, seed=seed)
            return await asyncio.gather(one(3), one(4))
    (h3, r3), (h4, r4) = asyncio.run(main())
    assert h3["sampling"] == h4["sampling"] == {"seed": 9, "temperature": 1.5, "top_k": 20, "top_p": 1.0}
    check_frames(r3, refs[3], pushes)
    check_frames(r4, refs[4], pushes)


def test_bad_messages_get_errors_and_session_continues(models):
    lm, vq = models
    seg = speaker_segment(3.0, seed=7)
    pushes = chunks(seg, seed=8)
    ref = direct(lm, vq, seg, pushes)
    late = next(k for k, p in enumerate(pushes) if p["words"])
    w = pushes[late]["words"][0]
    bad = [
        ("{not json", "message", None),
        ("[1, 2]", "message", None),
        (json.dumps({"type": "dance"}), "type", "dance"),
        (json.dumps({"type": "push", "sa_tokens": ["a"]}), "sa_tokens", None),
        (json.dumps({"type": "push", "emotion": [[0.5, 0.5]]}), "emotion", None),
        (json.dumps({"type": "push", "emotion": [[1, 0, 0, 0, 0, 0, 0, 0], [1]]}), "emotion", None),
        (json.dumps({"type": "push", "speed": 2}), "speed", "speed"),
        (json.dumps({"type": "push", "frames": 1.5}), "frames", "1.5"),
        (json.dumps({"type": "push", "audio": [0.0] * 320, "sample_rate": 16000}), "audio", None),
        (json.dumps({"type": "set_beta", "beta": [0.0] * 3}), "beta", "(3,)"),
        (json.dumps({"type": "push"}), "push", None),                                    # empty chunk
        (json.dumps({"type": "push", "sa_tokens": [10 ** 6]}), "sa_tokens", "1000000"),   # out of vocabulary
        (json.dumps({"type": "push", "frames": 3}), "emotion", None),                     # LM needs emotion rows
        (b"\x00\x01", "message", None),
    ]

    async def body(server, url):
        async with connect(url) as ws:
            await recv(ws)
            await ws.send(json.dumps({"type": "reset", "history_words": [[x.text, x.start, x.end]
                                                                         for x in seg.history_words]}))
            replies = [await recv(ws)]
            errors = []
            for k, p in enumerate(pushes):
                if k == late:   # the word again, out of order, after a later one: refused, nothing changes
                    m = wire(p)
                    m["words"] = m["words"] + [[w.text, w.start, w.end]] if len(p["words"]) > 1 else \
                        [[w.text, w.start, w.end + 0.01], [w.text, w.start, w.end]]
                    await ws.send(json.dumps({**m, "id": "ooo"}))
                    errors.append(("ooo", await recv(ws)))
                if k == 1:
                    for raw, fld, actual in bad:
                        await ws.send(raw)
                        errors.append(((fld, actual), await recv(ws)))
                await ws.send(json.dumps({**wire(p), "id": k}))
                replies.append(await recv(ws))
            await ws.send(json.dumps({"type": "end", "id": "end"}))
            replies.append(await recv(ws))
            return errors, replies
    errors, replies = run_server(models, body, max_sessions=1)
    check_frames(replies, ref, pushes)
    assert len(errors) == len(bad) + 1
    for want, e in errors:
        assert e["type"] == "error" and e["message"], e
        assert not re.search(r"stream \d", e["message"]), e   # the server's internal slot is not shown
        if want == "ooo":
            assert e["id"] == "ooo" and e["field"] == "words[1]" and "time order" in e["expected"], e
            continue
        fld, actual = want
        assert e["field"] == fld, (want, e)
        assert e["expected"], e
        if actual is not None:
            assert actual in e["actual"], (want, e)


def test_pipelined_messages_answered_in_order(models):
    """Messages sent back to back without waiting for replies (a malformed one and an unknown type among
    them): one reply each, in the order sent; an error never overtakes the reply to an earlier push."""
    push = {"type": "push", "emotion": [[0.125] * 8] * 8}
    raws = [json.dumps({**push, "id": 0}), '{"type": "push", "id": 1', json.dumps({**push, "id": 2}),
            json.dumps({"type": "nope", "id": 3}), json.dumps({**push, "id": 4}), json.dumps({"type": "end", "id": 5})]

    async def body(server, url):
        async with connect(url) as ws:
            await recv(ws)
            for raw in raws:
                await ws.send(raw)
            return [await recv(ws) for _ in raws]
    out = run_server(models, body, max_sessions=1)
    assert [(m["type"], m["id"]) for m in out] == [("frames", 0), ("error", None), ("frames", 2), ("error", 3),
                                                   ("frames", 4), ("frames", 5)], out
    assert out[-1]["final"] and out[1]["field"] == "message" and out[3]["field"] == "type"


def test_max_sessions_refused_then_free_again(models):
    async def body(server, url):
        a, b = await connect(url), await connect(url)
        assert (await recv(a))["type"] == (await recv(b))["type"] == "hello"
        c = await connect(url)
        err = await recv(c)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(c.recv(), 30)
        code = c.close_code
        await a.close()
        for _ in range(200):   # the slot is freed by the next tick after the disconnect
            d = await connect(url)
            h = json.loads(await d.recv())
            if h["type"] == "hello":
                break
            await d.close()
            await asyncio.sleep(0.02)
        await b.close()
        await d.close()
        return err, code, h, dict(server.stats)
    err, code, h, stats = run_server(models, body, max_sessions=2)
    assert err["type"] == "error" and err["field"] == "session" and "max_sessions=2" in err["expected"]
    assert err["actual"] == "3" and code == 1013
    assert h["type"] == "hello" and stats["refused"] >= 1


def test_faults_oversized_and_disconnect_mid_step(models):
    """An oversized message closes that connection (1009); a client vanishing right after a push
    is cleaned up; the other session's stream is unaffected, and a reused slot starts fresh."""
    lm, vq = models
    seg = speaker_segment(4.0, seed=11)
    pushes = chunks(seg, seed=12)
    ref = direct(lm, vq, seg, pushes)

    async def body(server, url):
        async def victim_big():
            async with connect(url, max_size=None) as ws:
                await recv(ws)
                await ws.send(json.dumps({"type": "push", "sa_tokens": [1] * 5000}))   # > max_message
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), 30)
                return ws.close_code

        async def victim_gone():
            ws = await connect(url)
            await recv(ws)
            for p in pushes[:6]:
                await ws.send(json.dumps(wire(p)))
            ws.transport.abort()   # no close handshake, replies unread

        async def good():
            async with connect(url) as ws:
                await recv(ws)
                return await stream_session(ws, seg, pushes)
        code, _, replies = await asyncio.gather(victim_big(), victim_gone(), good())
        for _ in range(200):
            if not server.sessions and not server._release and len(server.free) == server.max_sessions:
                break
            await asyncio.sleep(0.02)
        free = len(server.free)
        async with connect(url) as ws:   # reuses a freed slot: equals a fresh direct run
            await recv(ws)
            again = await stream_session(ws, seg, pushes)
        return code, replies, again, free
    code, replies, again, free = run_server(models, body, max_sessions=3, max_message=4096)
    assert code == 1009 and free == 3
    check_frames(replies, ref, pushes)
    check_frames(again, ref, pushes)


def test_binds_localhost_by_default(models):
    a = parser().parse_args(["--vq", "v", "--lm", "l"])
    assert a.host == "127.0.0.1" and a.port == 8765 and a.max_sessions == 8

    async def body(server, url):
        return server.host
    assert run_server(models, body) == "127.0.0.1"


def test_robot_angles_from_hand_built_rotations():
    """Random roll/pitch/yaw (|pitch| < 85 deg) -> R = Ry(yaw) Rx(pitch) Rz(roll) from hand-written elementary
    rotations -> axis-angle (scipy's matrix -> rotvec) -> robot_angles gives them back; the jaw opening is the
    jaw rotation's pitch; small rotations: pitch ~ pose[50], yaw ~ pose[51], roll ~ pose[52]."""
    from scipy.spatial.transform import Rotation

    def rx(a):
        return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])

    def ry(a):
        return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])

    def rz(a):
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rng = np.random.default_rng(0)
    rpy = np.stack([rng.uniform(-np.pi, np.pi, 64), rng.uniform(-1.48, 1.48, 64), rng.uniform(-np.pi, np.pi, 64)], 1)
    jaw_pitch = rng.uniform(-0.5, 0.5, 64)
    m = np.zeros((64, 56), np.float32)
    m[:, 50:53] = Rotation.from_matrix(np.stack([ry(y) @ rx(p) @ rz(r) for r, p, y in rpy])).as_rotvec()
    m[:, 53:56] = Rotation.from_matrix(np.stack([rx(p) for p in jaw_pitch])).as_rotvec()
    head, jaw = robot_angles(m)
    np.testing.assert_allclose(head, np.degrees(rpy), atol=1e-4)
    np.testing.assert_allclose(jaw, np.degrees(jaw_pitch), atol=1e-4)
    small = np.zeros((1, 56), np.float32)
    small[0, 50:56] = [0.01, -0.02, 0.03, 0.2, 0, 0]
    head, jaw = robot_angles(small)
    np.testing.assert_allclose(head[0], np.degrees([0.03, 0.01, -0.02]), atol=0.03)
    assert jaw[0] == pytest.approx(np.degrees(0.2), rel=1e-6)
    assert robot_angles(np.zeros((0, 56), np.float32))[0].shape == (0, 3)


def test_reused_slot_starts_fresh(models):
    """One slot: a session sets a beta, pushes half a stream and vanishes mid-step; the next
    session (same slot, no reset sent) gets the default identity and equals a fresh direct run."""
    lm, vq = models
    seg = speaker_segment(3.0, seed=13)
    seg = seg.replace(history_words=[])
    pushes = chunks(seg, seed=14)
    ref = direct(lm, vq, seg, pushes)

    async def body(server, url):
        ws = await connect(url)
        await recv(ws)
        await ws.send(json.dumps({"type": "set_beta", "beta": [1.0] * N_SHAPE}))
        await recv(ws)
        for p in pushes[:len(pushes) // 2]:
            await ws.send(json.dumps(wire(p)))
            assert (await recv(ws))["type"] == "frames"   # processed
        await ws.send(json.dumps(wire(pushes[len(pushes) // 2])))
        await asyncio.sleep(0)
        ws.transport.abort()   # mid-step: that push may be decoding now
        for _ in range(500):
            async with connect(url) as ws:
                h = await recv(ws)
                if h["type"] != "hello":
                    await asyncio.sleep(0.02)
                    continue
                out = []
                for k, p in enumerate(pushes):
                    await ws.send(json.dumps({**wire(p), "id": k}))
                    out.append(await recv(ws))
                await ws.send(json.dumps({"type": "end", "id": "end"}))
                out.append(await recv(ws))
                return h, out
    h, out = run_server(models, body, max_sessions=1)
    assert h["identity"]["beta"] == [0.0] * N_SHAPE
    check_frames(out, ref, pushes)


def test_slow_client_closed_others_continue(models):
    """A client that sends but never reads: its replies pile up to max_queue, then it is closed
    (1008) and its slot freed; the server's queues never exceed max_queue; a concurrent session
    streams on unaffected."""
    import socket
    lm, vq = models
    seg = speaker_segment(3.0, seed=15)
    pushes = chunks(seg, seed=16)
    long = speaker_segment(48.0, seed=17)
    big = [dict(words=[w for w in long.words if 8 * k < w.end <= 8 * (k + 1)],
                sa_tokens=long.sa_tokens[400 * k:400 * (k + 1)], emotion=long.emotion[240 * k:240 * (k + 1)])
           for k in range(6)]   # 8-s pushes: ~30 steps, 240 frames (~300 kB) per reply

    async def body(server, url):
        async def slow():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            ws = await connect(url, sock=sock, max_queue=1, max_size=None)
            for _ in range(4):
                for p in big:
                    await ws.send(json.dumps(wire(p)))
                await ws.send(json.dumps({"type": "end"}))
            for _ in range(500):
                if server.stats["slow_closed"]:
                    break
                await asyncio.sleep(0.02)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            except ConnectionClosed:
                pass
            return ws.close_code

        async def good():
            async with connect(url) as ws:
                await recv(ws)
                return await stream_session(ws, seg, pushes)
        code, replies = await asyncio.gather(slow(), good())
        for _ in range(500):
            if len(server.free) == server.max_sessions:
                break
            await asyncio.sleep(0.02)
        return code, replies, dict(server.stats), len(server.free)
    code, replies, stats, free = run_server(models, body, max_sessions=2, max_queue=3, lookahead=0, close_timeout=1.0)
    assert stats["slow_closed"] == 1 and code in (1008, 1006) and free == 2
    assert stats["max_outbox"] <= 3
    check_frames(replies, direct_la0(lm, vq, seg, pushes), pushes)


def test_slow_client_close_never_blocks_its_handler(models):
    """A slow client whose close never completes (it reads nothing, so the close frame cannot drain): the handler
    gives up after close_timeout and aborts the connection, so its slot is released (it waited for the keepalive
    ping, 20 s, before)."""
    from minilisten.server import _Session

    class NeverDrains:
        def __init__(self):
            self.transport, self.aborted = self, False

        async def close(self, code, reason):
            await asyncio.sleep(3600)

        def abort(self):
            self.aborted = True

    async def main():
        server = lr_server(*models, max_queue=1, close_timeout=0.2)
        s = _Session(0, NeverDrains(), asyncio.Queue(1))
        await server._reply(s, {"type": "ok"})                      # the outbox is full now
        await asyncio.wait_for(server._reply(s, {"type": "ok"}), 5)
        return s.closed, s.ws.aborted, server.stats["slow_closed"]
    assert asyncio.run(main()) == (True, True, 1)


def direct_la0(lm, vq, seg, pushes):
    sl = StreamingListener(lm, vq, np.zeros(N_SHAPE), history_words=seg.history_words, lookahead=0)
    return [sl.push(**p) for p in pushes] + [sl.flush()]


def test_batch_with_one_bad_chunk(models):
    """Pushes of two sessions in one tick, one of them invalid: the valid one is decoded (equal
    to its solo run), the invalid one gets its error, and neither stream changes otherwise."""
    from minilisten.server import _Session
    from minilisten.streaming import parse_push
    lm, vq = models
    seg = speaker_segment(2.0, seed=18)
    seg = seg.replace(history_words=[])
    pushes = chunks(seg, seed=19)
    ref = direct(lm, vq, seg, pushes)
    server = lr_server(lm, vq, max_sessions=2)
    ss = [_Session(b, None, None, None) for b in range(2)]
    bad = parse_push({"type": "push", "frames": 5, "emotion": [[0.125] * 8] * 5, "sa_tokens": [10 ** 6]})
    got = []
    for k, p in enumerate(pushes):
        work = {0: (ss[0], ("push", parse_push(wire(p)), k)), 1: (ss[1], ("push", bad, "bad"))}
        out = server._run_tick(work)
        assert out[1]["type"] == "error" and out[1]["field"] == "sa_tokens" and out[1]["id"] == "bad"
        got.append(motion_of(out[0]))
        assert server.listener.progress(1)["frames"] == 0 and server.listener.progress(0)["frames"] > 0
    got.append(server.listener.flush(0))
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)


def test_shared_token(models):
    """With a token: no or a wrong token -> HTTP 401 and no session; header or query token -> hello."""
    from websockets.exceptions import InvalidStatus

    async def body(server, url):
        codes = []
        for kw, u in (({}, url), ({"additional_headers": {"Authorization": "Bearer nope"}}, url),
                      ({}, url + "/?token=no")):
            with pytest.raises(InvalidStatus) as e:
                async with connect(u, **kw):
                    pass
            codes.append(e.value.response.status_code)
        async with connect(url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            h1 = await recv(ws)
        async with connect(url + "/?token=s3cret") as ws:
            h2 = await recv(ws)
        return codes, h1["type"], h2["type"], dict(server.stats)
    codes, t1, t2, stats = run_server(models, body, max_sessions=1, token="s3cret")
    assert codes == [401, 401, 401] and t1 == t2 == "hello" and stats["unauthorized"] == 3


def test_internal_error_answered_and_serving_continues(models, monkeypatch, caplog):
    """A bug inside decoding (here: a RuntimeError from push_many) becomes an error reply with
    field "server", logged with its traceback; the session's stream is unchanged and it goes on
    equal to the direct run."""
    lm, vq = models
    seg = speaker_segment(2.0, seed=21)
    seg = seg.replace(history_words=[])
    pushes = chunks(seg, seed=22)
    ref = direct(lm, vq, seg, pushes)

    async def body(server, url):
        real = server.listener.push_many
        calls = []

        def flaky(chunks):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("boom")
            return real(chunks)
        monkeypatch.setattr(server.listener, "push_many", flaky)
        async with connect(url) as ws:
            await recv(ws)
            out, errs = [], []
            for k, p in enumerate(pushes):
                await ws.send(json.dumps({**wire(p), "id": k}))
                m = await recv(ws)
                if m["type"] == "error":
                    errs.append(m)
                    await ws.send(json.dumps({**wire(p), "id": k}))   # the same push again
                    m = await recv(ws)
                out.append(m)
            await ws.send(json.dumps({"type": "end", "id": "end"}))
            out.append(await recv(ws))
            return out, errs
    out, errs = run_server(models, body, max_sessions=1)
    assert len(errs) == 1 and errs[0]["field"] == "server" and errs[0]["actual"] == "RuntimeError"
    assert errs[0]["id"] == 2
    logged = [r for r in caplog.records if r.name == "minilisten.server" and r.levelname == "ERROR"]
    assert len(logged) == 1 and isinstance(logged[0].exc_info[1], RuntimeError), logged
    assert "boom" in caplog.text and "Traceback" in caplog.text and "in flaky" in caplog.text
    check_frames(out, ref, pushes)


def test_audio_pcm16_and_float_audio(models):
    """16 kHz audio instead of SA tokens (server with an AcousticTokenizer): base64 int16 PCM and
    float lists give the frames of a direct StreamingListener run on the same samples; the wrong
    sample rate is an error naming sample_rate."""
    import base64

    from minilisten.speaker import AcousticTokenizer
    _, vq = models
    lm = tiny_lm("gpt2", seed=1)
    with torch.no_grad():   # distinct SA token embeddings: the codes depend on which SA tokens came
        torch.manual_seed(1)
        lm.backbone.get_input_embeddings().weight[lm.vocab.sa_offset:lm.vocab.sa_offset + lm.vocab.n_sa].normal_(0, 1)
    rng = np.random.default_rng(0)
    sec, sr = 3.0, 16000
    t = np.arange(int(sec * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * (120 + 40 * np.sin(2 * np.pi * 0.7 * t)) * t) + 0.02 * rng.normal(size=t.size)
    pcm = np.round(wav * 32767).astype("<i2")
    wav32 = pcm.astype(np.float32) / 32768.0          # what the server decodes from the PCM
    tok = AcousticTokenizer.fit([wav32], k=32, iters=5)
    seg = speaker_segment(sec, seed=23)
    seg = seg.replace(history_words=[])
    pushes, a = [], 0
    for p in chunks(seg, seed=24, max_frames=10):
        b = wav.size if len(pushes) % 7 == 6 else min(wav.size, a + int(rng.integers(100, 3000)))
        pushes.append(dict(words=p["words"], emotion=p["emotion"], a=a, b=b))
        a = b
    sl = StreamingListener(lm, vq, np.zeros(N_SHAPE), sa_tokenizer=tok)
    ref = [sl.push(words=p["words"], emotion=p["emotion"], audio=wav32[p["a"]:p["b"]], sample_rate=sr) for p in pushes]
    ref.append(sl.flush())

    async def body(server, url):
        async with connect(url) as ws:
            h = await recv(ws)
            await ws.send(json.dumps({"type": "push", "audio": [0.0] * 320, "sample_rate": 44100, "id": "sr"}))
            err = await recv(ws)
            out = []
            for k, p in enumerate(pushes):
                m = {"type": "push", "id": k, "words": [[w.text, w.start, w.end] for w in p["words"]],
                     "emotion": p["emotion"].tolist(), "sample_rate": sr}
                if k % 2:
                    m["audio"] = wav32[p["a"]:p["b"]].tolist()
                else:
                    m["audio_pcm16"] = base64.b64encode(pcm[p["a"]:p["b"]].tobytes()).decode()
                await ws.send(json.dumps(m))
                out.append(await recv(ws))
            await ws.send(json.dumps({"type": "end", "id": "end"}))
            out.append(await recv(ws))
            return h, err, out
    h, err, out = run_server((lm, vq), body, max_sessions=1, sa_tokenizer=tok)
    assert h["input"]["audio"] is True and h["input"]["sample_rate"] == 16000
    assert err["field"] == "sample_rate" and err["id"] == "sr" and "44100" in err["actual"]
    assert sum(len(r) for r in ref[:-1]) >= 40
    check_frames(out, ref, pushes)


# ----------------------------------------------------------------------------- issue 24's defects
def test_nesting_depth_and_strict_json_in(models):
    """Issue 24 defect 2: a message nested deeper than MAX_DEPTH (1,000 levels too), NaN / Infinity, and an SA
    token beyond int64 get an error reply naming the field, not a close; brackets inside strings do not count;
    the session goes on."""
    from minilisten.server import MAX_DEPTH

    def nested(depth):   # a reset whose id nests the message to `depth` levels (the object is level 1)
        return '{"type": "reset", "id": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    in_string = '{"type": "reset", "id": "' + '[{\\"' * 2000 + '"}'
    raws = [nested(MAX_DEPTH), nested(MAX_DEPTH + 1), nested(1000), in_string, '{"type": "reset", "id": NaN}',
            '{"type": "reset", "id": [-Infinity]}', '{"type": "push", "sa_tokens": [18446744073709551616]}',
            '{"type": "reset", "id": "last"}']

    async def body(server, url):
        async with connect(url) as ws:
            await recv(ws)
            out = []
            for raw in raws:
                await ws.send(raw)
                out.append(await recv(ws))
            return out
    out = run_server(models, body, max_sessions=1)
    assert out[0] == {"type": "ok", "op": "reset", "id": json.loads(nested(MAX_DEPTH))["id"]}
    for m in out[1:3]:
        assert m["type"] == "error" and m["field"] == "message" and f"at most {MAX_DEPTH}" in m["expected"], m
    assert out[3] == {"type": "ok", "op": "reset", "id": '[{"' * 2000}
    for m in out[4:6]:
        assert m["type"] == "error" and m["field"] == "message" and "no NaN" in m["expected"], m
    assert out[6]["type"] == "error" and out[6]["field"] == "sa_tokens" and "int64" in out[6]["expected"], out[6]
    assert out[7] == {"type": "ok", "op": "reset", "id": "last"}


def test_non_finite_frames_never_sent(models, monkeypatch):
    """Strict JSON out: frames holding NaN (here from a broken push_many) are answered with an error
    (field "server"), never put on the wire; the session goes on."""
    async def body(server, url):
        real = server.listener.push_many
        nan = np.full((8, 56), np.nan, np.float32)
        monkeypatch.setattr(server.listener, "push_many", lambda c: {b: nan for b in c})
        async with connect(url) as ws:
            await recv(ws)
            await ws.send(json.dumps({"type": "push", "id": 1, "emotion": [[0.125] * 8] * 8}))
            bad = await recv(ws)
            monkeypatch.setattr(server.listener, "push_many", real)
            await ws.send(json.dumps({"type": "push", "id": 2, "emotion": [[0.125] * 8] * 8}))
            return bad, await recv(ws)
    bad, good = run_server(models, body, max_sessions=1)
    assert bad["type"] == "error" and bad["field"] == "server" and bad["id"] == 1, bad
    assert bad["actual"] == "ValueError" and "not JSON compliant" in bad["message"]
    assert good["type"] == "frames" and good["id"] == 2


def test_push_over_the_cap_refused(models):
    """max_push_seconds=1 (30 frames at 30 fps): a push of 31 speaker frames gets an error naming the
    field and the cap, nothing changes; a concurrent session streams on equal to its solo run."""
    lm, vq = models
    seg = speaker_segment(3.0, seed=31)
    pushes = chunks(seg, seed=32)
    ref = direct(lm, vq, seg, pushes)
    big = [{"type": "push", "emotion": [[0.125] * 8] * 31},
           {"type": "push", "emotion": [[0.125] * 8] * 40000, "sa_tokens": [1] * 60000},
           {"type": "push", "frames": 10 ** 6}]

    async def body(server, url):
        async def hostile():
            async with connect(url, max_size=None) as ws:
                h = await recv(ws)
                errs = []
                for k in range(6):
                    await ws.send(json.dumps(big[k % 3]))
                    errs.append(await recv(ws))
                await ws.send(json.dumps(wire(pushes[0])))
                return h, errs, await recv(ws)

        async def good():
            async with connect(url) as ws:
                await recv(ws)
                return await stream_session(ws, seg, pushes)
        return await asyncio.gather(hostile(), good())
    (h, errs, after), replies = run_server(models, body, max_sessions=2, max_push_seconds=1.0, max_message=4 << 20)
    assert h["limits"]["max_push_frames"] == 30
    for e, want in zip(errs, ["31", "40000", f"{10 ** 6}"] * 2):
        assert e["type"] == "error" and e["field"] in ("emotion", "frames") and "max_push_frames=30" in e["expected"]
        assert e["actual"] == want, e
    np.testing.assert_array_equal(motion_of(after), direct(lm, vq, seg, pushes[:1])[0])
    check_frames(replies, ref, pushes)


def test_one_sessions_bad_push_never_reaches_another(models, monkeypatch):
    """Issue 24 defect 1: word times of 401 digits (an OverflowError inside float()) in one session's
    pushes, round after round next to another session's good pushes: the good session's frames equal
    its solo run, the bad one gets errors naming the field and goes on. At the tick: an exception in
    one stream's push_many result (here a RuntimeError) is answered to that session alone."""
    from minilisten.server import _Session
    from minilisten.streaming import parse_push
    lm, vq = models
    seg = speaker_segment(3.0, seed=41)
    pushes = chunks(seg, seed=42)
    ref = direct(lm, vq, seg, pushes)
    huge = {"type": "push", "words": [["x", 10 ** 400, 10 ** 400 + 1]], "emotion": [[0.125] * 8] * 3}

    async def body(server, url):
        async def bad():
            async with connect(url) as ws:
                await recv(ws)
                errs = []
                for k in range(len(pushes)):
                    await ws.send(json.dumps({**huge, "id": k}))
                    errs.append(await recv(ws))
                await ws.send(json.dumps({"type": "push", "emotion": [[0.125] * 8] * 3, "id": "ok"}))
                return errs, await recv(ws)

        async def good():
            async with connect(url) as ws:
                await recv(ws)
                return await stream_session(ws, seg, pushes)
        return await asyncio.gather(bad(), good())
    (errs, after), replies = run_server(models, body, max_sessions=2)
    assert all(e["type"] == "error" and e["field"] == "words[0]" for e in errs), errs
    assert after["type"] == "frames" and after["id"] == "ok"
    check_frames(replies, ref, pushes)
    server = lr_server(lm, vq, max_sessions=2)
    real = server.listener.push_many
    monkeypatch.setattr(server.listener, "push_many", lambda c: {**real({0: c[0]}), 1: RuntimeError("stream 1")})
    ss = [_Session(b, None, None, None) for b in range(2)]
    kw = parse_push(wire(pushes[0]))
    out = server._run_tick({0: (ss[0], ("push", kw, 0)), 1: (ss[1], ("push", kw, 1))})
    np.testing.assert_array_equal(motion_of(out[0]), ref[0])
    assert out[1]["field"] == "server" and out[1]["actual"] == "RuntimeError" and out[1]["id"] == 1


def test_set_beta_out_of_float32_refused(models):
    """Issue 24 defect 3: set_beta with values beyond float32 (1e300, 3.5e38) is an error naming beta and
    changes nothing (the frames still equal the default identity's); float32's largest value is accepted."""
    lm, vq = models
    seg = speaker_segment(2.0, seed=43).replace(history_words=[])
    pushes = chunks(seg, seed=44)
    ref = direct(lm, vq, seg, pushes)
    f32max = float(np.finfo(np.float32).max)

    async def body(server, url):
        async with connect(url) as ws:
            await recv(ws)
            out = []
            for b in ([1e300] * 100, [3.5e38] + [0.0] * 99, [-f32max] + [0.0] * 99, None):
                await ws.send(json.dumps({"type": "set_beta", "beta": b}))
                out.append(await recv(ws))
            for k, p in enumerate(pushes):
                await ws.send(json.dumps({**wire(p), "id": k}))
                out.append(await recv(ws))
            await ws.send(json.dumps({"type": "end", "id": "end"}))
            out.append(await recv(ws))
            return out
    out = run_server(models, body, max_sessions=1)
    assert [m["type"] for m in out[:4]] == ["error", "error", "ok", "ok"], out[:4]
    assert out[0]["field"] == out[1]["field"] == "beta" and out[0]["op"] == "set_beta"
    check_frames(out[4:], ref, pushes)


def test_arig_huge_motion_refused_never_nan(arig_model):
    """Issue 24 defect 4: ARIG pushes of motion rows of 1e30 are refused (an error naming motion, the
    stream unchanged), never NaN on the wire; the session's frames still equal the direct run."""
    pushes, hist, beta = arig_input(1.0, seed=45, sizes_seed=46)
    ref = arig_direct(arig_model, pushes, hist, beta)

    async def body(server, url):
        async with connect(url) as ws:
            await recv(ws)
            errs = []
            for p in pushes[:3]:
                await ws.send(json.dumps({**arig_wire(p), "motion": (np.full_like(p["motion"], 1e30)).tolist()}))
                errs.append(await recv(ws))
            return errs, await arig_session(ws, pushes, hist, beta)
    errs, replies = run_arig_server(arig_model, body, max_sessions=1)
    assert all(e["type"] == "error" and e["field"] == "motion" for e in errs), errs
    check_arig_frames(replies, ref, pushes)


@pytest.mark.parametrize("stop", ["Ctrl-C", "SIGTERM"])
def test_workers_share_the_port(models, tmp_path, stop):
    """serve --workers 2: two processes on one port (SO_REUSEPORT); connections land on both, each
    connection stays on its worker for the whole session. Both stop with rc 0 on a terminal's Ctrl-C (SIGINT to
    the process group) and on a supervisor's SIGTERM (to the parent process only)."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    from queue import Empty, Queue
    lm, vq = models
    lm.save_pretrained(tmp_path / "lm")
    vq.save_pretrained(tmp_path / "vq")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "PYTHONFAULTHANDLER": "1"}   # SIGABRT dumps every thread's stack: what a worker that does not stop is doing
    proc = subprocess.Popen([sys.executable, "-m", "minilisten", "serve", "--vq", str(tmp_path / "vq"), "--lm",
                             str(tmp_path / "lm"), "--workers", "2", "--port", "0", "--no-web"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            # a terminal's Ctrl-C: pytest run in the background (nohup ... &) hands its children
                            # SIGINT ignored, and a server started that way rightly keeps ignoring it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: Queue = Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        seen, port = [], None
        while len([x for x in seen if "(worker" in x]) < 2:
            try:
                seen.append(lines.get(timeout=120))
            except Empty:
                pytest.fail(f"workers did not start: {seen}")
            port = port or (int(seen[-1].split()[-1]) if "workers on port" in seen[-1] else None)

        async def main():
            got = []
            for _ in range(24):
                async with connect(f"ws://127.0.0.1:{port}") as ws:
                    h = await recv(ws)
                    await ws.send(json.dumps({"type": "push", "emotion": [[0.125] * 8] * 8}))
                    assert (await recv(ws))["type"] == "frames"
                    got.append(h["worker"])
            return got
        workers = asyncio.run(main())
    finally:
        if stop == "Ctrl-C":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGABRT)
            proc.wait(30)
            time.sleep(1)
            tail = []
            while not lines.empty():
                tail.append(lines.get())
            out = "".join(x for x in tail if not x.startswith("Extension modules:"))[-12000:]
            pytest.fail(f"serve --workers 2 did not stop within 120 s of {stop}; its output since: {out}")
    assert sorted(set(workers)) == [0, 1], workers
    assert rc == 0


# ----------------------------------------------------------------------------- ARIG model kind
from minilisten.arig import ARIG, ARIGConfig  # noqa: E402
from minilisten.streaming import StreamingARIG  # noqa: E402

ARIG_TINY = dict(d_model=16, n_head=2, d_ff=32, depth=2, window=6, diff_width=16, word_buckets=64, sample_steps=2,
                 n_sa=1024)


@pytest.fixture(scope="module")
def arig_model():
    torch.manual_seed(0)
    m = ARIG(ARIGConfig(**ARIG_TINY))
    with torch.no_grad():   # DiT-style zero inits make many paths identity: perturb all weights (0.1: a tame
        for p in m.parameters():   # feedback loop, so batched-matmul rounding stays at float32 ulps over 60 frames)
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def arig_input(seconds: float, seed: int, sizes_seed: int):
    """A speaker stream (words, SA, emotion from speaker_segment; random motion) cut into pushes of
    1-9 frames: [dict(motion, words, sa_tokens, emotion)], history words, beta."""
    seg = speaker_segment(seconds, seed=seed)
    rng = np.random.default_rng(sizes_seed)
    motion = rng.normal(0, 0.5, (seg.T, 56)).astype(np.float32)
    pushes, t, wi = [], 0, 0
    while t < seg.T:
        t1 = min(seg.T, t + int(rng.integers(1, 10)))
        ws = []
        while wi < len(seg.words) and int(np.ceil(seg.words[wi].end * 30 - 1e-6)) - 1 < t1:
            ws.append(seg.words[wi])
            wi += 1
        a, b = (int(np.ceil(x * 50 / 30 - 1e-9)) for x in (t, t1))
        pushes.append(dict(motion=motion[t:t1], words=ws, sa_tokens=seg.sa_tokens[a:b], emotion=seg.emotion[t:t1]))
        t = t1
    return pushes, seg.history_words, seg.listener_beta


def arig_wire(p: dict) -> dict:
    return {"type": "push", "motion": p["motion"].tolist(), "words": [[w.text, w.start, w.end] for w in p["words"]],
            "sa_tokens": [int(x) for x in p["sa_tokens"]], "emotion": p["emotion"].tolist()}


def arig_direct(model, pushes, history, beta, seed=0):
    """Reference: a solo StreamingARIG; per push frames (n, 56), then flush."""
    sa = StreamingARIG(model, beta, seed=seed, history_words=history)
    return [sa.push(**p) for p in pushes] + [sa.flush()]


async def arig_session(ws, pushes, history, beta, seed=None):
    return await session(ws, history, pushes, beta, seed, encode=arig_wire)


def arig_server(model, max_sessions=8, seed=0, max_push_seconds=10.0, **kw):
    """A ListenerServer over a StreamingARIG as ``serve`` makes it (the zeros identity)."""
    sa = StreamingARIG(model, np.zeros(N_SHAPE), n_streams=max_sessions, seed=seed,
                       max_push_frames=round(30 * max_push_seconds))
    return ListenerServer(sa, np.zeros(N_SHAPE), beta_source="zeros (FLAME mean shape)", **kw)


def run_arig_server(model, body, **kw):
    async def main():
        server = arig_server(model, **kw)
        async with server.run(port=0):
            return await body(server, f"ws://127.0.0.1:{server.port}")
    return asyncio.run(main())


def check_arig_frames(replies, ref, pushes, exact=True):
    frames = [m for m in replies if m["type"] == "frames"]
    assert [m["id"] for m in frames] == list(range(len(pushes))) + ["end"]
    assert [m["n"] for m in frames] == [len(r) for r in ref]
    start = 0
    for m, r in zip(frames, ref):
        assert m["start"] == start
        if exact:
            np.testing.assert_array_equal(motion_of(m), r)
        else:
            np.testing.assert_allclose(motion_of(m), r, atol=1e-5)
        start += m["n"]
    return np.concatenate(ref)


def test_arig_hello(arig_model):
    async def body(server, url):
        async with connect(url) as ws:
            return await recv(ws)
    h = run_arig_server(arig_model, body, max_sessions=2, seed=5)
    assert h["protocol"] == PROTOCOL == 2 and h["kind"] == "arig" and h["min_client_protocol"] == 2
    assert h["frames_per_step"] == 1 and h["lookahead_steps"] == 0 and h["max_delay_s"] == 0.0 and h["fps"] == 30.0
    assert h["input"]["required"] == ["motion", "sa_tokens", "emotion"] and h["input"]["motion"] == 56
    assert h["input"]["sa_vocab"] == 1024 and h["input"]["audio"] is False and h["input"]["max_skew_s"] == 2.0
    assert h["sampling"] == {"seed": 5, "steps": 2, "temperature": 1.0}
    assert h["model"]["arig"]["parameters"] == sum(p.numel() for p in arig_model.parameters())
    assert h["identity"]["beta"] == [0.0] * N_SHAPE and "zeros" in h["identity"]["source"]


def test_arig_session_equals_direct_run(arig_model):
    """Irregular pushes over 4 s (20 x the history window): one listener frame per speaker frame,
    bit-identical to a solo StreamingARIG with the same seed; the robot angles follow the pose."""
    pushes, hist, beta = arig_input(4.0, seed=1, sizes_seed=2)
    ref = arig_direct(arig_model, pushes, hist, beta, seed=7)
    assert len(ref[-1]) == 0 and [len(r) for r in ref[:-1]] == [len(p["motion"]) for p in pushes]

    async def body(server, url):
        async with connect(url) as ws:
            await recv(ws)
            return await arig_session(ws, pushes, hist, beta, seed=7)
    replies = run_arig_server(arig_model, body, max_sessions=2)
    assert replies[:2] == [{"type": "ok", "op": "set_beta", "id": "b"}, {"type": "ok", "op": "reset", "id": "r"}]
    check_arig_frames(replies, ref, pushes)
    m = next(x for x in replies if x["type"] == "frames" and x["n"])
    head, jaw = robot_angles(motion_of(m))
    np.testing.assert_allclose(m["head_rpy_deg"], head, atol=1e-9)
    # another seed gives other frames (the seed reaches the sampler)
    assert not np.array_equal(np.concatenate(ref), np.concatenate(arig_direct(arig_model, pushes, hist, beta, seed=8)))


def test_arig_concurrent_sessions_isolated(arig_model):
    """Two sessions at once, different speakers / betas / seeds, sharing batched ARIG steps: each
    equals its solo StreamingARIG run (to float rounding of the batched matmuls)."""
    ins = [arig_input(2.0, seed=10 + k, sizes_seed=20 + k) for k in range(2)]
    refs = [arig_direct(arig_model, p, h, b, seed=k) for k, (p, h, b) in enumerate(ins)]

    async def body(server, url):
        async def one(k):
            async with connect(url) as ws:
                await recv(ws)
                return await arig_session(ws, *ins[k], seed=k)
        return await asyncio.gather(one(0), one(1)), dict(server.stats)
    (r0, r1), stats = run_arig_server(arig_model, body, max_sessions=3)
    check_arig_frames(r0, refs[0], ins[0][0], exact=False)
    check_arig_frames(r1, refs[1], ins[1][0], exact=False)
    assert stats["max_batch"] == 2


def test_multistream_arig_batched_equals_solo(arig_model):
    """StreamingARIG(n_streams=3) directly: 3 streams pushed together (one step per tick over all three) equal
    their solo StreamingARIG runs; a stream stepped alone is bit-identical."""
    ins = [arig_input(1.5, seed=40 + k, sizes_seed=50 + k) for k in range(3)]
    ms = StreamingARIG(arig_model, np.zeros(N_SHAPE), n_streams=4, seed=0)
    for b, (p, h, beta) in enumerate(ins):
        ms.reset(b, h, seed=b)
        ms.set_beta(beta, b)
    n = min(len(p) for p, _, _ in ins)
    got = [[] for _ in ins]
    for i in range(n):
        out = ms.push_many({b: ins[b][0][i] for b in range(3)})
        for b in range(3):
            got[b].append(out[b])
    for b in range(3):   # the rest alone: stream by stream
        for p in ins[b][0][n:]:
            got[b].append(ms.push_many({b: p})[b])
        got[b].append(ms.flush(b))
        ref = arig_direct(arig_model, ins[b][0], ins[b][1], ins[b][2], seed=b)
        np.testing.assert_allclose(np.concatenate(got[b]), np.concatenate(ref), atol=1e-5)
    solo = StreamingARIG(arig_model, ins[0][2], n_streams=2, seed=3)
    solo.reset(1, ins[0][1])
    alone = np.concatenate([solo.push_many({1: p})[1] for p in ins[0][0]])
    ref = arig_direct(arig_model, ins[0][0], ins[0][1], ins[0][2], seed=3)
    np.testing.assert_array_equal(alone, np.concatenate(ref))
    # one bad chunk in a batch: its stream alone gets the error (naming field and stream) and stays as it
    # was; the other chunk is applied as if alone
    ms.reset(0, ins[0][1])
    ms.reset(1, ins[1][1])
    out = ms.push_many({0: ins[0][0][0], 1: {**ins[1][0][0], "motion": np.zeros((2, 55))}})
    assert isinstance(out[1], ValueError) and str(out[1]).startswith("motion (stream 1): expected"), out[1]
    np.testing.assert_allclose(out[0], arig_direct(arig_model, ins[0][0][:1], ins[0][1], ins[0][2], seed=0)[0],
                               atol=1e-5)
    assert [ms.streams[b].frames for b in (0, 1)] == [len(ins[0][0][0]["motion"]), 0]
    assert re.match(r"stream: expected an index in \[0, 4\)", str(ms.push_many({4: ins[0][0][0]})[4]))
    err = ms.push_many({0: dict(sa_tokens=np.zeros(200, np.int64))})[0]
    assert str(err).startswith("sa_tokens (stream 0): expected the SA stream at most max_skew=2 s ahead"), err
    with pytest.raises(ValueError, match="seed: expected an int"):
        ms.reset(0, seed=-1)


def test_arig_bad_messages_set_beta_reset(arig_model):
    """Bad ARIG messages get an error naming the field and change nothing (the session's frames
    still equal the direct run); set_beta mid-stream equals StreamingARIG.set_beta at that point;
    reset restarts at frame 0 with the session's seed."""
    pushes, hist, beta = arig_input(1.5, seed=3, sizes_seed=4)
    beta2 = np.random.default_rng(1).normal(size=N_SHAPE)
    k_switch = len(pushes) // 2
    sa = StreamingARIG(arig_model, beta, seed=0, history_words=hist)
    ref = []
    with torch.no_grad():   # StreamingARIG.set_beta mid-stream under autograd: its state cannot be deep-copied
        for k, p in enumerate(pushes):
            if k == k_switch:
                sa.set_beta(beta2)
            ref.append(sa.push(**p))
    bad = [
        ({"type": "push", "motion": [[0.0] * 55]}, "motion", "shape (n, 56)"),
        ({"type": "push", "frames": 3}, "frames", "one of the push fields of the arig model"),
        ({"type": "push", "audio": [0.0], "sample_rate": 16000}, "audio", "one of the push fields of the arig model"),
        ({"type": "push", "motion": [[0.0] * 56], "emotion": [[0.125] * 8] * 2}, "emotion", "motion"),
        ({"type": "push", "motion": [[0.0] * 56], "emotion": [[0.125] * 8], "sa_tokens": [5000]}, "sa_tokens",
         "ids in [0, 1024)"),
        ({"type": "push", "words": [["late", 0.0, 0.01]]}, "words[0]", None),
        ({"type": "reset", "seed": -3}, "seed", "an int in [0, 2**63)"),
        ({"type": "reset", "history_words": [["x", 0.5, 1.0]]}, "history_words[0]", "end <= 0 s"),
        ({"type": "set_beta", "beta": [1.0] * 3}, "beta", "shape (100,)"),
    ]

    async def body(server, url):
        async with connect(url) as ws:
            await recv(ws)
            out, errs = [], []
            await ws.send(json.dumps({"type": "set_beta", "beta": [float(x) for x in beta]}))
            await recv(ws)
            await ws.send(json.dumps({"type": "reset", "history_words": [[w.text, w.start, w.end] for w in hist]}))
            await recv(ws)
            for k, p in enumerate(pushes):
                if k == k_switch:
                    await ws.send(json.dumps({"type": "set_beta", "beta": [float(x) for x in beta2]}))
                    assert (await recv(ws))["type"] == "ok"
                if k == 2:   # after some frames: every bad message, then the stream goes on
                    for msg, _, _ in bad:
                        await ws.send(json.dumps({**msg, "id": "bad"}))
                        errs.append(await recv(ws))
                await ws.send(json.dumps({**arig_wire(p), "id": k}))
                out.append(await recv(ws))
            await ws.send(json.dumps({"type": "reset", "id": "r2", "seed": 0}))   # a fresh stream: frame 0 again
            assert (await recv(ws))["type"] == "ok"
            await ws.send(json.dumps({**arig_wire(pushes[0]), "id": "again"}))
            again = await recv(ws)
            return out, errs, again
    out, errs, again = run_arig_server(arig_model, body, max_sessions=1)
    for e, (_, fld, exp) in zip(errs, bad):
        assert e["type"] == "error" and e["field"] == fld and e["id"] == "bad", e
        assert exp is None or exp in (e["expected"] or "") + e["message"], e
    assert "stream" not in errs[3]["message"]   # the internal slot is not shown
    for m, r in zip(out, ref):
        np.testing.assert_array_equal(motion_of(m), r)
    # after reset: the identity (beta2) is kept, the clock and the noise restart
    sa2 = StreamingARIG(arig_model, beta2, seed=0)
    assert again["start"] == 0
    np.testing.assert_array_equal(motion_of(again), sa2.push(**pushes[0]))


def test_arig_cli_args():
    a = parser().parse_args(["--arig", "x", "--seed", "3", "--sample-steps", "4"])
    assert a.arig == "x" and a.seed == 3 and a.sample_steps == 4 and a.vq is None
    with pytest.raises(ValueError, match="listener: expected a StreamingListener or StreamingARIG, got object"):
        ListenerServer(object())
    from minilisten.server import main
    for argv in (["--vq", "a"], ["--arig", "a", "--lm", "b"], []):
        with pytest.raises(SystemExit):   # argparse error: --vq with --lm, or --arig alone
            main(argv)


def test_arig_batch_with_one_bad_chunk(arig_model):
    """ARIG pushes of two sessions in one tick, one invalid: the valid one is decoded (bit-equal to
    its solo run: it is stepped alone after the batch is refused), the invalid one gets its error."""
    from minilisten.server import _Session
    from minilisten.streaming import parse_push
    pushes, hist, beta = arig_input(1.0, seed=60, sizes_seed=61)
    ref = arig_direct(arig_model, pushes, [], np.zeros(N_SHAPE), seed=0)
    server = arig_server(arig_model, max_sessions=2)
    ss = [_Session(b, None, None, None) for b in range(2)]
    bad = parse_push({"type": "push", "motion": [[0.0] * 56] * 2, "emotion": [[0.125] * 8] * 2, "sa_tokens": [5000]},
                     "arig")
    got = []
    for k, p in enumerate(pushes):
        work = {0: (ss[0], ("push", parse_push(arig_wire(p), "arig"), k)), 1: (ss[1], ("push", bad, "bad"))}
        out = server._run_tick(work)
        assert out[1]["type"] == "error" and out[1]["field"] == "sa_tokens" and out[1]["id"] == "bad"
        got.append(motion_of(out[0]))
        st1 = server.listener.streams[1]
        assert st1.frames == st1.done == 0 and not len(st1.sa) and not len(st1.emo)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)
    kw = parse_push(arig_wire(pushes[0]))   # one client drives either kind: motion is an LR-token field too
    assert kw["motion"].shape == (len(pushes[0]["motion"]), 56)
    with pytest.raises(Exception, match="push fields of the arig model"):
        parse_push({"type": "push", "frames": 3, "motion": [[0.0] * 56] * 3}, "arig")


# ----------------------------------------------------------------------------- the protocol fuzzer
@contextlib.contextmanager
def in_thread(server: ListenerServer):
    """``server`` on an ephemeral 127.0.0.1 port, its event loop in a background thread (for sync clients)."""
    ready, box = threading.Event(), {}

    async def main():
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        async with server.run(port=0):
            ready.set()
            await box["stop"].wait()
    th = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    th.start()
    assert ready.wait(60), "server did not start"
    try:
        yield server
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        th.join(30)


N_SA = 1024
HOSTILE = st.sampled_from([10 ** 400, -10 ** 400, 2 ** 64, 2 ** 63, -2 ** 63 - 1, 1e300, -1e300, 1e-320, 3.5e38, 1e30,
                           -1, 0, 1.5, True, None, "x", [], {}, [[]]])
NUM = st.one_of(st.integers(-3, N_SA + 3), st.floats(-3, 3, allow_nan=False), HOSTILE)
WORD = st.one_of(st.tuples(st.text(max_size=6), NUM, NUM).map(list),
                 st.fixed_dictionaries({"text": st.text(max_size=6), "start": NUM, "end": NUM}), HOSTILE)
ROWS = {w: st.one_of(st.lists(st.lists(NUM, min_size=w, max_size=w), max_size=6),
                     st.lists(st.lists(NUM, max_size=w + 2), max_size=4), HOSTILE,
                     st.integers(0, 130).map(lambda n, w=w: [[0.125] * w] * n)) for w in (8, 56)}
ID = st.one_of(st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3), HOSTILE)
OPTIONAL_PUSH = {"words": st.one_of(st.lists(WORD, max_size=4), HOSTILE), "emotion": ROWS[8], "motion": ROWS[56],
                 "sa_tokens": st.one_of(st.lists(NUM, max_size=12), st.integers(0, 6000).map(lambda n: [3] * n),
                                        HOSTILE),
                 "frames": NUM, "audio": st.one_of(st.lists(NUM, max_size=20), HOSTILE), "sample_rate": NUM,
                 "audio_pcm16": st.one_of(st.sampled_from(["AAAA", "AAA", "!!", ""]), HOSTILE), "id": ID,
                 "speed": NUM}
MESSAGES = st.one_of(
    st.fixed_dictionaries({"type": st.just("push")}, optional=OPTIONAL_PUSH),
    st.fixed_dictionaries({"type": st.just("set_beta")}, optional={
        "beta": st.one_of(st.lists(NUM, min_size=100, max_size=100), st.lists(NUM, max_size=4), HOSTILE),
        "id": ID, "extra": NUM}),
    st.fixed_dictionaries({"type": st.just("reset")}, optional={
        "history_words": st.one_of(st.lists(WORD, max_size=3), HOSTILE), "seed": NUM, "id": ID}),
    st.fixed_dictionaries({"type": st.sampled_from(["end", "flush"])}, optional={"id": ID}),
    st.fixed_dictionaries({"type": st.one_of(st.text(max_size=6), NUM)}, optional={"id": ID}),
    st.one_of(st.lists(NUM, max_size=3), st.text(max_size=20), NUM),   # not an object
)


def _mutate(args):
    """A valid push with one number (a word time, an SA token, an emotion value) replaced."""
    msg, where, i, j, v = args
    msg = json.loads(json.dumps(msg))
    if where == "frames":
        msg["frames"] = v
    elif msg.get(where):
        x = msg[where][i % len(msg[where])]
        if isinstance(x, list):
            x[j % len(x)] = v
        else:
            msg[where][i % len(msg[where])] = v
    return msg


def mutated(valid: list):
    """Valid pushes with one number (word time, SA token, emotion or motion value, frames) made hostile."""
    return st.tuples(st.sampled_from(valid), st.sampled_from(["words", "sa_tokens", "emotion", "motion", "frames"]),
                     st.integers(0, 30), st.integers(0, 60), HOSTILE).map(_mutate)
RAW = st.one_of(   # what json.dumps cannot make: deep nesting, NaN / Infinity, broken JSON, binary
    st.integers(30, 3000).map(lambda n: '{"type": "push", "id": ' + "[" * n + "]" * n + "}"),
    st.integers(30, 3000).map(lambda n: "[" * n),
    st.sampled_from(['{"type": "push", "emotion": [[NaN, 0, 0, 0, 0, 0, 0, 1]]}', '{"type": "reset"',
                     '{"type": "set_beta", "beta": [Infinity]}', '{"type": "push", "frames": -Infinity}',
                     '{"type": "rese\\ud800t"}', '{"type": "push", "sa_tokens": [1e999]}']),
    st.binary(max_size=16))


def good_sessions(url, streams, stop: threading.Event) -> list:
    """One well-behaved client per ``(history words, push messages)``, each streaming them again and again
    (reset, the pushes, end) until ``stop``: [[replies of one pass]] per client."""
    from websockets.sync.client import connect as sync_connect
    out = [[] for _ in streams]

    def one(k):
        history, msgs = streams[k]
        with sync_connect(url, max_size=None) as ws:
            assert strict_json(ws.recv(60))["type"] == "hello"
            while not stop.is_set() or not out[k]:
                replies = []
                for m in [{"type": "reset", "id": "r", "history_words": [[w.text, w.start, w.end] for w in history]}] \
                        + [{**m, "id": i} for i, m in enumerate(msgs)] + [{"type": "end", "id": "end"}]:
                    ws.send(json.dumps(m))
                    replies.append(strict_json(ws.recv(60)))
                    time.sleep(0.002)
                out[k].append(replies)
    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(streams))]
    for th in threads:
        th.start()
    return threads, out


@pytest.mark.parametrize("kind", ["lr-token", "arig"])
def test_protocol_fuzzer(kind, models, arig_model):
    """Hypothesis: >= 300 valid, mutated and hostile messages of every type on one connection of a live
    server (each model kind), next to two well-behaved sessions. Each message gets exactly one strict-JSON
    reply (its id echoed; never an internal error), the connection stays open, and the well-behaved
    sessions' frames equal their solo runs in every pass (ARIG: to float rounding of the shared batch)."""
    from hypothesis import HealthCheck, given, settings
    from websockets.sync.client import connect as sync_connect
    lm, vq = models
    if kind == "lr-token":
        segs = [speaker_segment(2.0, seed=60 + k) for k in range(2)]
        ins = [(chunks(s, seed=70 + k), s.history_words) for k, s in enumerate(segs)]
        refs = [direct(lm, vq, s, p) for s, (p, _) in zip(segs, ins)]
        valid, encode = [wire(p) for p in chunks(speaker_segment(3.0, seed=80), seed=81)], wire
        server = lr_server(lm, vq, max_sessions=3, max_push_seconds=2.0)
    else:
        ins = [arig_input(1.0, seed=60 + k, sizes_seed=70 + k)[:2] for k in range(2)]
        refs = [arig_direct(arig_model, p, h, np.zeros(N_SHAPE)) for p, h in ins]
        valid, encode = [arig_wire(p) for p in arig_input(2.0, seed=80, sizes_seed=81)[0]], arig_wire
        server = arig_server(arig_model, max_sessions=3, max_push_seconds=2.0)
    replies = collections.Counter()
    with in_thread(server):
        url = f"ws://127.0.0.1:{server.port}"
        stop = threading.Event()
        threads, good = good_sessions(url, [(h, [encode(p) for p in pushes]) for pushes, h in ins], stop)
        with sync_connect(url, max_size=None) as ws:
            assert strict_json(ws.recv(60))["type"] == "hello"

            @settings(max_examples=320, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(msg=st.one_of(MESSAGES, mutated(valid), st.sampled_from(valid), RAW))
            def one(msg):
                raw = msg if isinstance(msg, (str, bytes)) else json.dumps(msg)
                ws.send(raw)
                r = strict_json(ws.recv(60))   # a closed connection raises here
                replies[(r["type"], r.get("field"))] += 1
                assert r["type"] in ("frames", "ok", "error") and r.get("field") != "server", (raw[:300], r)
                if isinstance(msg, dict):
                    assert r.get("id") == msg.get("id"), (raw[:300], r)
                if r["type"] == "error":
                    assert r["message"] and r["expected"], r
            one()
            ws.send(json.dumps({"type": "reset", "id": "still open"}))
            assert strict_json(ws.recv(60)) == {"type": "ok", "op": "reset", "id": "still open"}
        stop.set()
        for th in threads:
            th.join(120)
    assert sum(replies.values()) >= 300 and server.stats["internal_errors"] == 0, replies
    assert replies[("error", "message")] and replies[("ok", None)] and replies[("frames", None)], replies
    for (pushes, _), ref, passes in zip(ins, refs, good):
        assert passes
        for p in passes:
            assert p[0] == {"type": "ok", "op": "reset", "id": "r"}
            check_frames(p[1:], ref, pushes) if kind == "lr-token" else check_arig_frames(p[1:], ref, pushes, False)
