"""The web page served by ``minilisten serve`` (``/``, ``/clip.json``): HTTP answers, and the page in a
real headless Chromium against tiny random models (screenshot shows a head, frames arrive)."""
import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("websockets")
from conftest import tiny_lm, tiny_vq  # noqa: E402
from test_server import in_thread, lr_server  # noqa: E402

from minilisten.render import SKIN  # noqa: E402

SHOT = Path(__file__).resolve().parent.parent / "runs" / "test_web" / "page.png"


def running(**kw):
    """A ListenerServer (tiny models, ``kw``) running in a background thread on an ephemeral port."""
    return in_thread(lr_server(tiny_lm("gpt2"), tiny_vq("adaln"), max_sessions=2, **kw))


@pytest.fixture(scope="module")
def server():
    with running() as srv:
        yield srv


def get(srv, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=30) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def test_http_page_and_clip(server):
    st, ct, body = get(server, "/")
    assert st == 200 and ct.startswith("text/html") and "<canvas" in body and "new WebSocket" in body
    assert "http" not in body.replace("http://", "").split("<script>")[1].split("location.protocol")[0]  # no CDN
    st, ct, body = get(server, "/clip.json?seconds=3&seed=4")
    assert st == 200 and ct == "application/json"
    clip = json.loads(body)
    from minilisten.data.synthetic import speaker_segment
    seg = speaker_segment(3.0, seed=4, n_sa=server.listener.lm.vocab.n_sa)
    pushes = [p["msg"] for p in clip["pushes"]]
    # the pushes are the segment cut in steps of r frames: every frame, word and SA token once, in order
    assert [len(m["emotion"]) for m in pushes] == [8] * (seg.T // 8) + ([seg.T % 8] if seg.T % 8 else [])
    np.testing.assert_allclose(np.concatenate([m["emotion"] for m in pushes]), seg.emotion, atol=1e-5)
    assert [w[0] for m in pushes for w in m["words"]] == [w.text for w in seg.words]
    assert [t for m in pushes for t in m["sa_tokens"]] == seg.sa_tokens.tolist()
    assert [p["t"] for p in clip["pushes"]] == pytest.approx([min(8 * (k + 1), seg.T) / 30 for k in range(len(pushes))])
    assert clip["fps"] == 30.0 and [m["id"] for m in pushes] == list(range(len(pushes)))
    for q, field in (("seconds=abc", "seconds"), ("seconds=0", "seconds"), ("seed=-1", "seed"),
                     ("seconds=nan", "seconds")):
        st, _, body = get(server, "/clip.json?" + q)
        assert st == 400 and body.startswith(field + ": expected"), (q, body)
    st, _, body = get(server, "/nope")
    assert st == 404 and "path: expected" in body


def test_http_methods(server):
    """Only GET serves; HEAD: GET's status and headers without the body; other methods 405 with Allow."""
    st, _, page = get(server, "/")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(f"HEAD / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):   # the server closes after its answer
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and body == b"", data[:300]
    assert f"content-length: {len(page.encode())}".encode() in head.lower()
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}/", method=method, data=None)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 405 and e.value.headers["Allow"] == "GET, HEAD", method
        assert "<canvas" not in e.value.read().decode()


def raw_request(srv, headers: list[str]) -> tuple[int, str]:
    """A hand-written WebSocket upgrade request with these extra header lines: (status, response head)."""
    lines = ["GET / HTTP/1.1", f"Host: 127.0.0.1:{srv.port}", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", *headers]
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
            data += chunk
    head = data.split(b"\r\n\r\n")[0].decode()
    return int(head.split()[1]), head


def test_duplicate_headers_and_bearer_case():
    """Two Authorization or two Upgrade headers: 400 naming the header (no 500); the auth scheme is
    case-insensitive (RFC 7235); one good header: 101."""
    with running(token="s3cret") as srv:
        up = ["Upgrade: websocket"]
        assert raw_request(srv, up + ["Authorization: Bearer s3cret"])[0] == 101
        for extra in (["Authorization: bearer s3cret"], ["Authorization: BEARER  s3cret"]):
            assert raw_request(srv, up + extra)[0] == 101, extra
        st, head = raw_request(srv, up + ["Authorization: Bearer s3cret", "Authorization: Bearer s3cret"])
        assert st == 400, head
        st, head = raw_request(srv, ["Upgrade: websocket", "Upgrade: websocket", "Authorization: Bearer s3cret"])
        assert st == 400, head
        assert raw_request(srv, up + ["Authorization: Basic s3cret"])[0] == 401
        assert srv.stats["unauthorized"] == 1


def test_clip_built_off_the_event_loop(server, monkeypatch):
    """/clip.json is built in a thread (a slow build does not delay a live session) and cached (two
    concurrent requests of one clip build it once)."""
    from websockets.sync.client import connect
    calls, real = [], server.clip

    def slow(seconds, seed):
        calls.append(seed)
        time.sleep(1.5)
        return real(seconds, seed)
    monkeypatch.setattr(server, "clip", slow)
    got = []
    threads = [threading.Thread(target=lambda: got.append(get(server, "/clip.json?seconds=1&seed=77")))
               for _ in range(2)]
    for th in threads:
        th.start()
    time.sleep(0.2)
    t = time.perf_counter()
    with connect(f"ws://127.0.0.1:{server.port}") as ws:
        assert json.loads(ws.recv(30))["type"] == "hello"
        ws.send(json.dumps({"type": "reset"}))
        assert json.loads(ws.recv(30))["type"] == "ok"
    rtt = time.perf_counter() - t
    for th in threads:
        th.join(60)
    assert rtt < 0.75, rtt
    assert calls == [77] and len(got) == 2 and got[0] == got[1] and got[0][0] == 200


def test_http_token_and_no_web():
    """With a shared token the page and clip need it too (401 without); ``web=False``: no page."""
    with running(token="s3cret") as srv:
        assert get(srv, "/")[0] == 401 and get(srv, "/clip.json")[0] == 401
        st, _, body = get(srv, "/?token=s3cret")
        assert st == 200 and "<canvas" in body
        assert get(srv, "/clip.json?seconds=1&token=s3cret")[0] == 200
    with running(web=False) as srv:
        st, _, body = get(srv, "/")
        assert st == 426 and "<canvas" not in body   # websockets' own answer to a plain GET


def chromium() -> str:
    """The browser; without one the test skips, except under CI=true (.ci/run installs it), where it fails."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        why = ("chromium: expected a Chromium binary on PATH (Debian/Ubuntu: apt-get install chromium; macOS: brew "
               "install --cask chromium; .ci/run installs it), got none")
        (pytest.fail if os.environ.get("CI", "").lower() == "true" else pytest.skip)(why)
    return exe


class Browser:
    """A headless Chromium driven over the DevTools protocol (``--remote-debugging-port``): the
    page runs in real time (``--screenshot``/``--dump-dom`` would read it at its load event, before
    any WebSocket traffic; ``--virtual-time-budget`` runs the page's timers ahead of the network)."""

    def __init__(self, url, profile: Path):
        self.proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                                      "--disable-dev-shm-usage", "--no-first-run", "--window-size=800,700",
                                      "--remote-debugging-port=0",
                                      f"--user-data-dir={profile}", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"chromium did not start its DevTools endpoint: {self.proc.stderr.read()[-1500:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        while True:   # the page target (the URL given on the command line)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert pages, "chromium: expected a page target, got none"
        from websockets.sync.client import connect
        self.ws, self.n = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 << 20), 0

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            m = json.loads(self.ws.recv(timeout=60))
            if m.get("id") == self.n:
                assert "error" not in m, m
                return m["result"]

    def eval(self, expr):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def close(self):
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def direct(server, seconds, seed=0) -> np.ndarray:
    """Reference: the clip's pushes through a solo StreamingListener, then flush: ``(T', 56)``."""
    from minilisten.data.segment import N_SHAPE
    from minilisten.streaming import StreamingListener
    clip = server.clip(seconds, seed)
    sl = StreamingListener(server.listener.lm, server.listener.vq, np.zeros(N_SHAPE),
                           history_words=clip["history_words"])
    out = [sl.push(words=m["words"], sa_tokens=np.array(m["sa_tokens"], np.int64), emotion=np.array(m["emotion"]))
           for m in (p["msg"] for p in clip["pushes"])]
    return np.concatenate(out + [sl.flush()])


def test_page_in_headless_chromium(server, tmp_path):
    """The page connects, replays a 3 s clip at real time and draws the head: its status reports
    the end and as many frames as a direct StreamingListener run of the clip (and the same
    values), the screenshot's canvas holds the head's skin colours and the mouth."""
    b = Browser(f"http://127.0.0.1:{server.port}/?seconds=3", tmp_path / "profile")
    try:
        deadline, status = time.monotonic() + 45, ""
        while time.monotonic() < deadline and "(done)" not in (status or ""):
            time.sleep(0.25)
            status = b.eval("document.getElementById('status') && document.getElementById('status').textContent")
        ref = direct(server, 3.0)
        assert status == f"frames: {len(ref)} (done)", status
        assert b.eval("document.title") == f"minilisten - frames: {len(ref)} (done)"
        got = np.array(json.loads(b.eval("JSON.stringify(frames.map(f => f[0].concat(f[1])))")), np.float32)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)   # the head drawn is the model's output
        time.sleep(0.5)   # a few playback ticks after the last frame
        png = base64.b64decode(b.call("Page.captureScreenshot", format="png")["data"])
        rect = b.eval("JSON.stringify(document.getElementById('head').getBoundingClientRect())")
    finally:
        b.close()
    shot = tmp_path / "page.png"
    shot.write_bytes(png)
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SHOT)
    import matplotlib.image as mpimg
    img = (mpimg.imread(shot)[..., :3] * 255).round()
    r = json.loads(rect)
    x0, y0 = int(round(r["x"])), int(round(r["y"]))
    w, h = int(r["width"]), int(r["height"])
    canvas = img[y0:y0 + h, x0:x0 + w]
    skin = np.asarray(SKIN) * 255
    lit = np.linspace(0.35, 1.0, 27)[:, None] * skin   # Lambert-shaded skin tones
    d = np.abs(canvas[:, :, None, :] - lit[None, None]).max(-1).min(-1)
    top = d[: int(h * 0.7)]   # the head (neck and shoulders are lower): ~30% of the upper 70% of the canvas
    skin_frac = float((top < 8).mean())
    assert skin_frac > 0.15, f"skin pixels: expected > 15% of the canvas' upper 70%, got {skin_frac:.3f}"
    dark = float((np.abs(canvas - [56, 13, 18]).max(-1) < 8).mean())   # the mouth's opening
    assert dark > 0.0005, f"mouth pixels: expected some, got {dark:.4f}"
    outside = img[y0 + h + 60:, x0 + w + 20:]
    assert (np.abs(outside - [32, 34, 38]).max(-1) < 3).mean() > 0.9   # the page background, no head


def test_clip_for_arig_server():
    """The ARIG kind's clip: pushes of 0.1 s with the speaker motion, accepted by the server's parser
    and its StreamingARIG(n_streams) (one listener frame per speaker frame)."""
    import torch
    from test_server import ARIG_TINY, arig_server

    from minilisten.arig import ARIG, ARIGConfig
    from minilisten.streaming import parse_push
    torch.manual_seed(0)
    srv = arig_server(ARIG(ARIGConfig(**ARIG_TINY)).eval(), max_sessions=1)
    clip = srv.clip(1.0, 2)
    assert clip["kind"] == "arig" and [len(p["msg"]["motion"]) for p in clip["pushes"]] == [3] * 10
    srv.listener.reset(0, history_words=clip["history_words"])
    n = sum(len(srv.listener.push_many({0: parse_push(p["msg"], "arig")})[0]) for p in clip["pushes"])
    assert n == 30
