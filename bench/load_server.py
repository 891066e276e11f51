"""Load test of ``python -m minilisten serve``: N concurrent real-time clients on localhost.

    OMP_NUM_THREADS=1 python bench/load_server.py            # N = 1, 8, 32, 64 (+ 1 on a 32-slot server)
    OMP_NUM_THREADS=1 python bench/load_server.py --runs 1:1 4:4 --seconds 5 --workers 2   # clients:max_sessions

Models: UNTRAINED, random-weight tiny models (``minilisten.bench.build_lm("tiny")``: GPT-2 layout,
4 layers x 256; ``build_vq(width=64)``: the identity-disentangled IN/AdaIN VQ-VAE at width 64),
saved with ``save_pretrained`` and served by the real CLI in a subprocess, one server per run
with ``--max-sessions`` as given (default: N, and once N = 1 on a 32-slot server: the batched
decoder runs all its slots every step, busy or not). Speed does not depend on the weights; the
frames are meaningless.

Each client replays its own random speaker stream (``minilisten.data.synthetic.speaker_segment``: words
~2.5/s, SA tokens 50/s, emotion per frame) in real time, one push every ``--chunk-ms`` (100 ms = 3
frames), without waiting for replies. Measured per run: latency from sending a push to receiving
the frames it released (p50/p95/max over every push that released frames, all clients), the
frames/s received in total and per client (real time = the fps, 30), the frames due against those
delivered, replies that were errors, the lag of the last reply after the last push, and the server's
CPU (user + system seconds of its process tree over the run, as cores) and peak RSS (summed over the
tree, sampled every 0.2 s; Linux /proc). Also, in process without a server, the median time
of one batched decode step of n streams (``decode_bound``: what the server must do per 8 / fps s).
Also: the cost of ``json.dumps`` of one frames
message (8 frames) against the frame period of a step (8 / fps), which decides whether a binary
frame format is worth having. Results: ``bench/results/server_cpu_<date>.json`` (command, machine).
Bounded: N <= 64 clients, <= 60 s per run, and a hard timeout per run.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_models(directory: Path, lm_config: str, vq_width: int) -> dict:
    """Random tiny models saved with save_pretrained into ``directory/{lm,vq}``; their sizes."""
    from minilisten.bench import build_lm, build_vq
    lm, vq = build_lm(lm_config), build_vq(width=vq_width)
    lm.save_pretrained(directory / "lm")
    vq.save_pretrained(directory / "vq")
    return {"lm": f"untrained minilisten.bench.build_lm({lm_config!r})",
            "lm_parameters": sum(p.numel() for p in lm.parameters()),
            "vq": f"untrained minilisten.bench.build_vq(width={vq_width}) (IN/AdaIN)",
            "vq_parameters": sum(p.numel() for p in vq.parameters())}


def start_server(directory: Path, max_sessions: int, env: dict, workers: int = 1) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "minilisten", "serve", "--vq", str(directory / "vq"), "--lm", str(directory / "lm"),
           "--port", "0", "--max-sessions", str(max_sessions), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    t, ready = time.time(), 0
    for line in proc.stdout:
        m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        ready += bool(m)
        if m and ready == workers:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()   # keep draining
            return proc, int(m.group(1))
        if time.time() - t > 120:
            break
    proc.kill()
    raise RuntimeError("server did not start (no 'ws://127.0.0.1:PORT' line)")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            out += tree(int(child))
    return out


def cpu_rss(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds, RSS bytes) of the process tree of ``pid``."""
    cpu, rss, tick = 0.0, 0, os.sysconf("SC_CLK_TCK")
    for p in tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(stat[11]) + int(stat[12])) / tick
            rss += int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            pass
    return cpu, rss


def plan(seconds: float, seed: int, chunk_ms: float, fps: float = 30.0) -> list[tuple[float, dict]]:
    """(send time s, push message) of one client's real-time replay."""
    from minilisten.data.synthetic import speaker_segment
    seg = speaker_segment(seconds, seed=seed, fps=fps)
    step = max(1, int(round(chunk_ms / 1000 * fps)))
    out, f, sa = [], 0, 0
    while f < seg.T:
        n = min(step, seg.T - f)
        t0, t1 = f / fps, (f + n) / fps
        sa_to = min(seg.sa_tokens.size, int(t1 * 50 + 1e-9))
        out.append((t1, {"type": "push", "id": len(out),
                         "words": [[w.text, w.start, w.end] for w in seg.words if t0 < w.end <= t1 + 1e-9],
                         "sa_tokens": seg.sa_tokens[sa:sa_to].tolist(), "emotion": seg.emotion[f:f + n].tolist()}))
        f, sa = f + n, sa_to
    return out, [[w.text, w.start, w.end] for w in seg.history_words]


async def client(url: str, pushes, history, t_start: float) -> dict:
    from websockets.asyncio.client import connect
    sent, lat, lat_all, frames, errors, last = {}, [], [], 0, 0, 0.0
    async with connect(url, max_size=None) as ws:
        hello = json.loads(await ws.recv())
        if hello["type"] != "hello":
            return {"refused": True}
        n_frames = sum(len(m["emotion"]) for _, m in pushes)
        expected = 8 * max(0, n_frames // 8 - hello["lookahead_steps"])   # the rest comes with "end"
        await ws.send(json.dumps({"type": "reset", "history_words": history}))
        json.loads(await ws.recv())

        async def reader():
            nonlocal frames, errors, last
            for _ in range(len(pushes)):
                m = json.loads(await ws.recv())
                now = time.perf_counter()
                if m["type"] == "error":
                    errors += 1
                    continue
                d = now - sent[m["id"]]
                lat_all.append(d)
                if m["n"]:
                    lat.append(d)
                    frames += m["n"]
                last = now
        task = asyncio.create_task(reader())
        for t, msg in pushes:
            delay = t_start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[msg["id"]] = time.perf_counter()
            await ws.send(json.dumps(msg))
        t_last = time.perf_counter()
        await task
    return {"latency": lat, "latency_all": lat_all, "frames": frames, "errors": errors, "tail_s": last - t_last,
            "expected": expected}


async def run_load(port: int, n: int, seconds: float, chunk_ms: float, server_pid: int) -> dict:
    url = f"ws://127.0.0.1:{port}"
    plans = [plan(seconds, 100 + k, chunk_ms) for k in range(n)]
    t_start = time.perf_counter() + 1.0   # everyone connects first
    t0 = time.perf_counter()
    cpu0, peak = cpu_rss(server_pid)[0], [0]

    async def sample():
        while True:
            peak[0] = max(peak[0], cpu_rss(server_pid)[1])
            await asyncio.sleep(0.2)
    sampler = asyncio.create_task(sample())
    res = await asyncio.wait_for(asyncio.gather(*(client(url, p, h, t_start) for p, h in plans)),
                                 timeout=seconds + 120)
    sampler.cancel()
    wall = time.perf_counter() - t_start
    cpu = cpu_rss(server_pid)[0] - cpu0
    lat = np.asarray([x for r in res for x in r.get("latency", [])]) * 1e3
    lat_all = np.asarray([x for r in res for x in r.get("latency_all", [])]) * 1e3
    frames = sum(r.get("frames", 0) for r in res)
    return {"clients": n, "seconds_per_client": seconds, "chunk_ms": chunk_ms,
            "refused": sum(bool(r.get("refused")) for r in res), "pushes": int(lat_all.size),
            "frame_replies": int(lat.size), "errors": sum(r.get("errors", 0) for r in res),
            "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p95": float(np.percentile(lat, 95)),
            "latency_ms_max": float(lat.max()), "reply_latency_ms_p50_all_pushes": float(np.percentile(lat_all, 50)),
            "frames_total": frames, "frames_expected": sum(r.get("expected", 0) for r in res), "wall_s": wall,
            "frames_per_s_total": frames / wall, "frames_per_s_per_client": frames / wall / n,
            "last_reply_after_last_push_ms_max": 1e3 * max(r.get("tail_s", 0.0) for r in res),
            "connect_to_start_s": t_start - t0, "server_cpu_cores": cpu / (time.perf_counter() - t0),
            "server_rss_mb_peak": peak[0] / 2 ** 20}


def json_cost(fps: float = 30.0) -> dict:
    """Median time of json.dumps of one 8-frame ``frames`` message (random float32 frames)."""
    from minilisten.server import robot_angles
    rng = np.random.default_rng(0)
    f = rng.normal(0, 0.1, (8, 56)).astype(np.float32)
    head, jaw = robot_angles(f)
    msg = {"type": "frames", "id": 17, "start": 800, "n": 8, "t0": 800 / fps, "final": False,
           "expression": f[:, :50].tolist(), "pose": f[:, 50:].tolist(), "head_rpy_deg": head.tolist(),
           "jaw_open_deg": jaw.tolist()}
    times = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(200):
            s = json.dumps(msg, separators=(",", ":"))
        times.append((time.perf_counter() - t) / 200)
    enc = statistics.median(times)
    times = []
    for _ in range(7):   # the whole reply path: tolist + angles + dumps
        t = time.perf_counter()
        for _ in range(200):
            h, j = robot_angles(f)
            json.dumps({**msg, "expression": f[:, :50].tolist(), "pose": f[:, 50:].tolist(),
                        "head_rpy_deg": h.tolist(), "jaw_open_deg": j.tolist()}, separators=(",", ":"))
        times.append((time.perf_counter() - t) / 200)
    full = statistics.median(times)
    period = 8 / fps
    return {"message_bytes": len(s), "binary_float32_bytes": 8 * 60 * 4, "json_dumps_us": enc * 1e6,
            "reply_build_and_dumps_us": full * 1e6, "step_period_ms": period * 1e3,
            "fraction_of_period_per_session": full / period, "core_fraction_at_32_sessions": 32 * full / period}


def decode_bound(directory: Path, n_streams: list[int], steps: int = 20) -> dict:
    """In-process reference, no server: median ms of ``StreamingListener.push_many`` with every one
    of n streams bringing one LR step (the batched decode a full server does per step), and of
    ``push`` of one stream on an n-stream listener (one busy session on an n-slot server)."""
    import torch

    from minilisten.data.synthetic import speaker_segment
    from minilisten.lm import ListenerLM
    from minilisten.streaming import StreamingListener
    from minilisten.vqvae import VQVAE
    lm, vq = ListenerLM.from_pretrained(directory / "lm").eval(), VQVAE.from_pretrained(directory / "vq").eval()
    segs = [speaker_segment(steps * 8 / 30 + 0.5, seed=k) for k in range(max(n_streams))]
    out = {}
    for n in sorted(set(n_streams)):
        res = {}
        for mode, active in (("all_streams", n), ("one_stream", 1)):
            sl = StreamingListener(lm, vq, np.zeros(100), n_streams=n, history_words=segs[0].history_words)
            ts = []
            with torch.inference_mode():
                for i in range(steps):
                    a, b = sl.sa_range(i)
                    ch = {k: dict(words=[w for w in segs[k].words if i * 8 / 30 < w.end <= (i + 1) * 8 / 30 + 1e-9],
                                  sa_tokens=segs[k].sa_tokens[a:b], emotion=segs[k].emotion[i * 8:(i + 1) * 8])
                          for k in range(active)}
                    t = time.perf_counter()
                    sl.push_many(ch)
                    ts.append(time.perf_counter() - t)
            res[f"{mode}_ms_per_step"] = float(np.median(ts[2:]) * 1e3)
        out[f"n_streams={n}"] = res
        print(f"decode bound, {n} streams: {res}", flush=True)
    return out


def machine() -> dict:
    import torch
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform(),
            "loadavg_1_5_15_at_start": list(os.getloadavg()),
            "note": "shared 2-core machine with a background benchmark running" if os.cpu_count() == 2 else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=["1:1", "8:8", "32:32", "64:64", "1:32"],
                   help="CLIENTS:MAX_SESSIONS per run (a server each)")
    p.add_argument("--seconds", type=float, default=10.0, help="speaker seconds per client (<= 60)")
    p.add_argument("--chunk-ms", type=float, default=100.0)
    p.add_argument("--workers", type=int, default=1, help="serve --workers (each worker: max_sessions slots)")
    p.add_argument("--lm-config", default="tiny")
    p.add_argument("--vq-width", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    try:
        runs_cfg = [tuple(int(x) for x in r.split(":")) for r in a.runs]
    except ValueError:
        raise SystemExit(f"--runs: expected CLIENTS:MAX_SESSIONS items, got {a.runs}") from None
    if not all(len(c) == 2 and 1 <= c[0] <= c[1] * a.workers and c[0] <= 64 for c in runs_cfg):
        raise SystemExit(f"--runs: expected 1 <= CLIENTS <= MAX_SESSIONS x --workers, CLIENTS <= 64, got {a.runs}")
    if not 1 <= a.seconds <= 60:
        raise SystemExit(f"--seconds: expected 1..60, got {a.seconds}")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    args = " ".join(sys.argv[1:] if argv is None else argv)
    out = {"command": f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} python bench/load_server.py {args}",
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine()}
    out["json_encoding"] = json_cost()
    print("json:", json.dumps(out["json_encoding"]), flush=True)
    with tempfile.TemporaryDirectory() as d:
        out["models"] = build_models(Path(d), a.lm_config, a.vq_width)
        out["decode_bound"] = decode_bound(Path(d), [c[1] for c in runs_cfg])
        runs = []
        for n, slots in runs_cfg:
            proc, port = start_server(Path(d), slots, env, a.workers)
            try:
                r = {"max_sessions": slots, "workers": a.workers,
                     **asyncio.run(run_load(port, n, a.seconds, a.chunk_ms, proc.pid))}
            finally:
                proc.terminate()
                proc.wait(10)
            runs.append(r)
            print(f"N={n:>3} (max_sessions {slots:>2}): latency p50 {r['latency_ms_p50']:.1f} ms, p95 "
                  f"{r['latency_ms_p95']:.1f} ms, max {r['latency_ms_max']:.1f} ms; {r['frames_per_s_total']:.0f} "
                  f"frames/s total ({r['frames_per_s_per_client']:.1f}/client; {r['frames_total']}/"
                  f"{r['frames_expected']} of the frames due); last reply {r['last_reply_after_last_push_ms_max']:.0f} "
                  f"ms after the last push; server {r['server_cpu_cores']:.2f} cores, {r['server_rss_mb_peak']:.0f} "
                  f"MB; errors {r['errors']}, refused {r['refused']}", flush=True)
        out["runs"] = runs
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path = Path(a.out) / f"server_cpu_{dt.datetime.now(dt.timezone.utc):%Y%m%d}.json"
    path.write_text(json.dumps(out, indent=1))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
