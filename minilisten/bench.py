"""``python -m minilisten.bench [--quick] [--skip PARTS]``: how fast listener motion and the kernels run.

Parts: ``decode`` (greedy LR decoding, 8 frames a token; K = 1 and 10 sampled reactions as one batch),
``streaming`` (``StreamingListener.push``), ``arig`` (frame-by-frame ARIG decode) and ``kernels`` (Triton vs eager
and torch.compile), random weights, interleaved rounds after a warm-up, medians, a JSON file with the environment in
``--out``. Methods and results: docs/speed.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from functools import partial
from importlib.metadata import version
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
import torch.nn.functional as F

from .data.segment import D_MOTION, N_EMOTIONS, N_SHAPE
from .data.synthetic import WORDS, speaker_segment

CONFIGS = {   # backbone layout and shape; vocab_size None: the small BPE's
    "tiny": dict(arch="gpt2", n_layer=4, n_embd=256, n_head=4, n_positions=1024, vocab_size=None),
    "tiny-llama": dict(arch="llama", n_layer=4, n_embd=256, n_head=4, n_positions=1024, vocab_size=None),
    "gpt2-medium": dict(arch="gpt2", n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257),
}
METHODS = {"a": "(a) nocache", "b": "(b) hf-dynamic", "c": "(c) ours-eager", "d": "(d) ours-compiled",
           "e": "(e) compiled bf16"}


def build_lm(config: str = "tiny", device="cpu", dtype=torch.float32, seed: int = 0):
    """A random-weight ``ListenerLM`` of the ``CONFIGS[config]`` backbone, a small BPE trained on ``WORDS``."""
    from .lm import ListenerLM, LMConfig, scratch_backbone, train_word_tokenizer
    c = dict(CONFIGS[config])
    tok = train_word_tokenizer(list(WORDS) * 3, vocab_size=300)
    c["vocab_size"] = c["vocab_size"] or len(tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bb = scratch_backbone(**c, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        lm = ListenerLM(bb, tok, LMConfig())
        torch.nn.init.normal_(lm.lr_head.weight, std=0.2)
    return lm.to(device=device, dtype=dtype).eval()


def build_vq(device="cpu", seed: int = 0, width: int = 512):
    """A random-weight identity-disentangled VQ-VAE of the paper's shape (AdaIN heads randomised)."""
    from .vqvae import VQVAE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vq = VQVAE.from_preset("disentangled", width=width)
        vq.set_codebook(torch.randn(vq.config.codebook_size, vq.config.code_dim))
        for m in vq.decoder.modules():
            if hasattr(m, "to_affine"):
                torch.nn.init.normal_(m.to_affine.weight, std=0.05)
    return vq.to(device).eval()


def streams(lm, batch: int, seconds: float, seed: int = 0, sa: bool = True):
    """``batch`` random speaker streams ``(histories, steps)`` cut to one length; ``sa=False`` drops SA tokens."""
    v, hs, ss = lm.vocab, [], []
    keep = lambda t: sa or not (v.sa_start <= t <= v.sa_end or v.sa_offset <= t < v.emo_offset)
    for k in range(batch):
        h, s = lm.speaker_steps(speaker_segment(seconds, seed=seed + k))
        hs.append(h)
        ss.append([[t for t in x if keep(t)] for x in s])
    n = min(len(s) for s in ss)
    return hs, [s[:n] for s in ss]


def interleaved(fns: dict, reps: int, device, calls: dict | None = None, cold=(), progress=print):
    """A warm-up round (not for ``cold`` names), then ``reps`` rounds of ``calls[name]`` (default 1) timed calls
    ``fn(i)`` of every fn: ``({name: [seconds]}, {name: last output})``; a fn that raises is reported, dropped."""
    times, outs = {k: [] for k in fns}, {}
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None

    def call(k, i):   # seconds of one call, synchronised on CUDA
        sync()
        t = perf_counter()
        outs[k] = fns[k](i)
        sync()
        return perf_counter() - t
    for r in range(reps + 1):
        for k in [k for k in times if r or k not in cold]:
            try:
                ts = [call(k, i) for i in range((calls or {}).get(k, 1))]
            except Exception as e:   # e.g. out of memory: keep the other methods' numbers
                progress(f"  {k} failed: {type(e).__name__}: {e}")
                del times[k]
                continue
            if r == 0 and sum(ts) > 5:
                progress(f"  {k}: warm-up (compilation) {sum(ts):.0f} s")
            times[k] += ts if r else []
    return times, outs


def bench_decode(lm, device, batches=(1,), window_seconds: float = 8.0, long_seconds: float = 60.0,
                 reps: int = 3, dtype=None, compile_mode: str | bool = True, methods="abcd", progress=print,
                 gens: dict | None = None) -> list[dict]:
    """Rows of the decode table, one per (scenario, method); ``gens`` keeps compiled generators by (batch, method)."""
    from .generate import Generator, HFDecoder, generate_nocache
    rows, gens = [], {} if gens is None else gens
    for name, B, sec in [("window", b, window_seconds) for b in batches] + [("long", 1, long_seconds),
                                                                           ("W+emo", 1, window_seconds)]:
        hs, ss = streams(lm, B, sec, seed=100 * B + len(rows), sa=name != "W+emo")
        n, fns = len(ss[0]), {}
        for m in methods:
            if m in "de" and (B, m) not in gens:   # compiled in its first call, reused by later scenarios
                gens[B, m] = Generator(lm, batch=B, dtype=dtype if m == "d" else torch.bfloat16, compile=compile_mode)
            gen = {"a": lambda: partial(generate_nocache, lm), "b": lambda: HFDecoder(lm, batch=B).generate,
                   "c": lambda: Generator(lm, batch=B, dtype=dtype).generate}.get(m, lambda: gens[B, m].generate)()
            fns[METHODS[m]] = lambda i, gen=gen: gen(hs, ss)
        progress(f"{name}: batch {B}, {n} LR steps, {sum(len(x) for x in ss[0]) / n:.1f} speaker tokens/step, "
                 f"{len(set(lm.context_plan(hs[0], ss[0])))} context(s)")
        with torch.inference_mode():
            times, outs = interleaved(fns, reps, device, cold=(METHODS["a"],), progress=progress)
        for m in "de":   # a failed compile is tried again in the next scenario
            if METHODS[m] not in times:
                gens.pop((B, m), None)
        med = {k: float(np.median(v)) for k, v in times.items()}
        a, b = med.get(METHODS["a"]), med.get(METHODS["b"])
        ref = outs.get(METHODS["a"], outs.get(METHODS["b"]))
        for k, t in med.items():
            rows.append(dict(scenario=name, batch=B, steps=n, method=k, seconds=t, seconds_all=times[k],
                             ms_per_step=1e3 * t / n, lr_tokens_per_s=B * n / t, fps=8 * B * n / t,
                             speedup_vs_a=a and a / t, speedup_vs_b=b and b / t,
                             agreement_vs_ref=None if ref is None else float((outs[k] == ref).float().mean())))
    return rows


def bench_samples(lm, device, ks=(1, 10), seconds: float = 8.0, reps: int = 3, dtype=None, progress=print) -> list:
    """K sampled reactions (temperature 1) of one input decoded as one batch by the fast decoder (c), K per row."""
    from .generate import Generator, Sampling
    hs, ss = streams(lm, 1, seconds, seed=1)
    n, fns = len(ss[0]), {}
    for k in ks:
        gen = Generator(lm, batch=k, dtype=dtype, sampling=Sampling(temperature=1.0))
        fns[f"K={k}"] = lambda i, gen=gen, k=k: gen.generate(hs * k, ss * k, seeds=list(range(k)))
    with torch.inference_mode():
        times = interleaved(fns, reps, device, progress=progress)[0]
    med = {k: float(np.median(times[f"K={k}"])) for k in ks if f"K={k}" in times}
    return [dict(samples=k, steps=n, seconds=t, fps=8 * k * n / t, per_reaction_fps=8 * n / t) for k, t in med.items()]


def bench_streaming(lm, vq, device, dtype=None, seconds: float = 12.0, generator=None) -> dict:
    """Latency of ``StreamingListener.push`` with 8 frames of speaker input (``generator``: a compiled one to reuse)."""
    from .streaming import StreamingListener
    seg = speaker_segment(seconds, seed=7)
    sl = StreamingListener(lm, vq, seg.listener_beta, dtype=dtype, history_words=seg.history_words, generator=generator)
    r, fps, frames = 8, seg.fps, []

    def push(i):   # a stream from its start: one warm-up pass, one timed
        if i == 0:
            sl.reset()
            frames.clear()
        t0, t1 = i * r / fps, (i + 1) * r / fps
        a, b = sl.sa_range(i)
        frames.append(len(sl.push(words=[w for w in seg.words if t0 < w.end <= t1 + 1e-9],
                                  sa_tokens=seg.sa_tokens[a:b], emotion=seg.emotion[i * r:(i + 1) * r])))
    with torch.inference_mode():
        lat = interleaved({"push": push}, 1, device, calls={"push": seg.T // r})[0]["push"]
    ms = np.asarray(lat[2:]) * 1e3
    return dict(pushes=len(lat), frames=sum(frames), lookahead=sl.lookahead,
                compiled=bool(generator and generator.compiled), median_ms=float(np.median(ms)),
                p90_ms=float(np.percentile(ms, 90)), max_ms=float(ms.max()),
                realtime_factor=float(r / fps / (np.median(ms) / 1e3)))


def bench_arig(device, batches=(1, 4), steps=(4, 8), frames: int = 60, recompute_frames: int = 12, reps: int = 2,
               paper: bool = False, autocast_bf16: bool = False, progress=print, model=None,
               compile_batches=None) -> list[dict]:
    """Per (batch, Euler steps), ms per frame of ``arig.decode_frame``, the same compiled (``compile_batches``: all if
    None) and recomputing the window every frame; ``model``: default random, the demo's size or the appendix's."""
    from .arig import ARIG, ARIGConfig, compiled_decode_frame, decode_frame
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = ARIG(ARIGConfig.paper(n_sa=1024) if paper else ARIGConfig(n_sa=1024)).to(device).eval()
    m, c, W, rows = model, model.config, model.config.window, []
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if autocast_bf16 else torch.autocast("cpu", enabled=False)
    for B in batches:
        g, T = torch.Generator().manual_seed(B), W + frames + 1
        x = {"spk": torch.randn(B, T, D_MOTION, generator=g), "lis": torch.randn(B, T, D_MOTION, generator=g),
             "sa": torch.randint(0, c.n_sa, (B, T, c.sa_slots), generator=g),
             "emo": torch.softmax(torch.randn(B, T, N_EMOTIONS, generator=g), -1),
             "word": torch.randint(0, c.word_buckets, (B, T), generator=g),
             "since": torch.randint(0, c.since_max + 1, (B, T), generator=g),
             "beta": torch.randn(B, N_SHAPE, generator=g)}
        x = {k: v.to(device) for k, v in x.items()}
        frame = lambda t: {k: (v if k == "beta" else v[:, t]) for k, v in x.items() if k != "lis"}
        window = lambda t: {k: (v if k == "beta" else v[:, t:t + W]) for k, v in x.items()}
        noise = torch.randn(B, D_MOTION, device=device)
        compiled = compile_batches is None or B in compile_batches
        for n_steps in steps:
            with torch.inference_mode(), amp:
                st, st_c = m.init_state(frame(0)), m.init_state(frame(0))
                fast = compiled_decode_frame(torch.device(device).type)
                fns = {"ARIG cached step": lambda t: decode_frame(m, st, frame(t), noise, n_steps),
                       "ARIG cached, compiled": lambda t: fast(m, st_c, frame(t), noise, n_steps),
                       "ARIG recompute window": lambda t: m.sample(m.features(window(t))[0][:, -1], noise, n_steps)}
                fns = {k: f for k, f in fns.items() if compiled or "compiled" not in k}
                times, _ = interleaved(fns, reps, device, progress=progress,
                                       calls={k: recompute_frames if "recompute" in k else frames for k in fns})
            p50 = {k: float(np.median(v)) for k, v in times.items()}
            for k, ts in times.items():
                rows.append(dict(scenario="ARIG frame", batch=B, sample_steps=n_steps, method=k, frames_timed=len(ts),
                                 p50_ms=1e3 * p50[k], p95_ms=1e3 * float(np.percentile(ts, 95)), fps=B / p50[k],
                                 speedup_vs_recompute=p50["ARIG recompute window"] / p50[k],
                                 config=dict(d_model=c.d_model, d_ff=c.d_ff, window=W, paper=paper,
                                             dtype="bf16 autocast" if autocast_bf16 else "float32")))
            progress(f"ARIG batch {B}, {n_steps} Euler steps: " + ", ".join(f"{k} {1e3 * v:.2f} ms"
                                                                             for k, v in p50.items()))
    return rows


def arig_vs_lr(arig_rows: list[dict], decode_rows: list[dict] | None, streaming: dict | None) -> None:
    """Add in place each ARIG row's FPS over the LR decoders' at its batch (8-s window, same run): ``fps_vs_lr``
    {method: ratio}; at batch 1 ``fps_vs_lr_streaming`` (over ``StreamingListener.push``, 8 frames a push)."""
    for r in arig_rows:
        r["fps_vs_lr"] = {d["method"]: r["fps"] / d["fps"] for d in decode_rows or []
                          if d["scenario"] == "window" and d["batch"] == r["batch"]}
        if streaming and r["batch"] == 1:   # a push: 8 frames in median_ms
            r["fps_vs_lr_streaming"] = r["fps"] / (8e3 / streaming["median_ms"])


def _kernel_time(fn, device, quick: bool) -> tuple[float, float, float]:
    """(median, p20, p80) µs: ``triton.testing.do_bench`` on CUDA, else timed calls after a warm-up round."""
    if device.type == "cuda":
        import triton.testing
        q = triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=50 if quick else 100,
                                    quantiles=[0.5, 0.2, 0.8])
        return tuple(1e3 * v for v in q)
    ts = interleaved({"fn": lambda i: fn()}, 1, device, calls={"fn": 10 if quick else 30})[0]["fn"]
    return tuple(1e6 * float(np.percentile(ts, q)) for q in (50, 20, 80))


def bench_kernels(device, quick: bool = True, variants=None) -> list[dict]:
    """Per op, mode, dtype, shape and provider (eager, reference, compile, Triton, ``variants(z, cb)``): µs, GB/s of
    the ideal traffic, the copy-bandwidth bound, speed-ups."""
    from .kernels import nearest_code as NC
    from .kernels.norm_act import norm_act, norm_act_ref
    cuda, rows = device.type == "cuda", []
    a, b = (torch.empty((256 if cuda else 32) << 20, dtype=torch.uint8, device=device) for _ in range(2))
    bw = 2 * a.numel() / _kernel_time(lambda: b.copy_(a), device, True)[0] / 1e3   # GB/s, read + write
    print(f"# kernels: copy bandwidth {bw:.0f} GB/s" + ("" if cuda else "; CPU: torch paths only, small sizes"))
    cfg = torch._dynamo.config   # one graph per shape, dtype and mode
    cfg.recompile_limit = max(64, cfg.recompile_limit)
    comp = (lambda f: torch.compile(f, dynamic=False)) if cuda or not quick else (lambda f: None)

    def measure(providers, nbytes, flops=None, **key):
        group = []
        for name, fn in [(k, f) for k, f in providers.items() if f is not None]:
            try:
                med, p20, p80 = _kernel_time(fn, device, quick)
            except Exception as e:   # a provider that cannot run is reported, not fatal
                group.append(dict(key, provider=name, error=repr(e)[:300]))
                continue
            group.append(dict(key, provider=name, median_us=med, p20_us=p20, p80_us=p80, bytes=nbytes,
                              gbps=nbytes / med / 1e3, bound_us=nbytes / bw / 1e3, tflops=flops and flops / med / 1e6))
        us = {r["provider"]: r["median_us"] for r in group if "median_us" in r}
        for r in group:
            for ref in ("eager", "compile"):
                r[f"speedup_vs_{ref}"] = us[ref] / r["median_us"] if ref in us and "median_us" in r else None
        rows.extend(group)

    def eager_q(z, cb):
        d, idx = torch.cdist(z, cb).min(1)
        return idx, d.square(), cb[idx]
    ref_q = lambda z, cb: NC.quantize_ref(z, cb, first_of_duplicates=False)
    comp_q, d = comp(ref_q), 512
    sizes = [(4096, 256)] + ([] if quick else [(4096, 1024)])
    if cuda:
        sizes = [(n, k) for n in ([65536] if quick else [8192, 65536]) for k in (256, 1024)]
    for (N, K), dt in [(s, dt) for s in sizes for dt in ([torch.float32, torch.bfloat16] if cuda else [torch.float32])]:
        g = torch.Generator(device=device).manual_seed(0)
        z, cb = (torch.randn(r, d, device=device, dtype=dt, generator=g) for r in (N, K))
        p = {"eager": lambda: eager_q(z, cb), "reference": lambda: ref_q(z, cb),
             "compile": comp_q and (lambda: comp_q(z, cb))}
        if cuda:
            p["triton"] = lambda: NC.quantize(z, cb, use_triton=True)
            p.update(variants(z, cb) if variants and (N, K) == sizes[-1] else {})
        measure(p, (2 * N + K) * d * z.element_size() + 12 * N, 2.0 * N * K * d,
                op="nearest_code", mode="fwd", dtype=str(dt)[6:], shape=f"N={N} K={K} d={d}")
    B, C = (256, 512) if cuda else (16, 512)
    norm = [(T, torch.float32) for T in ([240] if quick else [30, 240])]
    if cuda:   # quick: bf16 at every T, fp32 at T = 240 only
        norm = [(T, dt) for T in ([30, 240] if quick else [30, 60, 120, 240])
                for dt in (torch.bfloat16, torch.float32) if not quick or dt == torch.bfloat16 or T == 240]
    comp_n = comp(norm_act_ref)
    eager_n = lambda x, s, h: torch.relu((1 + s[..., None]) * F.instance_norm(x, eps=1e-5) + h[..., None])
    for T, dt in norm:
        g = torch.Generator(device=device).manual_seed(0)
        x, dy = (torch.randn(B, C, T, device=device, dtype=dt, generator=g) for _ in range(2))
        s, h = (0.1 * torch.randn(B, C, device=device, dtype=dt, generator=g) for _ in range(2))
        leaves = [t.detach().clone().requires_grad_() for t in (x, s, h)]
        fns = {"eager": eager_n, "reference": lambda *a: norm_act(*a, use_triton=False), "compile": comp_n,
               "triton": (lambda *a: norm_act(*a, use_triton=True)) if cuda else None}
        key = dict(op="norm_act", dtype=str(dt)[6:], shape=f"B={B} C={C} T={T}")
        nbytes = B * C * T * x.element_size()   # fwd reads x, writes y; bwd also reads x, dy and writes dx
        measure({k: f and (lambda f=f: f(x, s, h)) for k, f in fns.items()}, 2 * nbytes, mode="fwd", **key)
        measure({k: f and (lambda f=f: torch.autograd.grad(f(*leaves), leaves, dy)) for k, f in fns.items()},
                5 * nbytes, mode="fwd+bwd", **key)
    return rows


def table(rows: list[dict], keys: str) -> str:
    """Text table of ``rows`` over the space-separated ``keys``; a dict value gives one column per entry."""
    def _cell(v) -> str:
        if not isinstance(v, float):
            return "-" if v is None else str(v)
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"
    flat = [{f"{k} {j}".strip(): w for k, v in r.items() if k in keys.split()
             for j, w in (v.items() if isinstance(v, dict) else [("", v)])} for r in rows]
    cols = list(dict.fromkeys(c for f in flat for c in f))
    cells = [cols] + [[_cell(f.get(c)) for c in cols] for f in flat]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


DECODE_COLS = "scenario batch steps method ms_per_step lr_tokens_per_s fps speedup_vs_a speedup_vs_b agreement_vs_ref"
ARIG_COLS = "method batch sample_steps p50_ms p95_ms fps speedup_vs_recompute fps_vs_lr fps_vs_lr_streaming"
KERNEL_COLS = ("op mode dtype shape provider median_us p20_us p80_us gbps bound_us speedup_vs_eager "
               "speedup_vs_compile error")


def environment(device="cpu") -> dict:
    """Device name, versions, threads and the UTC date of this run."""
    device, cpuinfo = torch.device(device), Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())
    return dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu, device_type=device.type,
                **{p: version(p) for p in ("torch", "transformers", "triton")}, cuda=torch.version.cuda,
                python=platform.python_version(), platform=platform.platform(), threads=torch.get_num_threads(),
                cpus=os.cpu_count(), date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minilisten.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a CPU")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None,
                   help="LM backbone (default: gpt2-medium on GPU, tiny on CPU; tiny-llama: the default LM's layout)")
    p.add_argument("--batch", type=int, default=None, help="the large batch (default 64 on GPU, 4 on CPU)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds per scenario (default 2 quick, 5 full)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    p.add_argument("--compile", default="default", choices=("default", "max-autotune"),
                   help="torch.compile mode of (d): default (CUDA graphs on GPU) or max-autotune")
    p.add_argument("--skip", default="", help="comma list of parts to skip: decode, streaming, arig, kernels")
    p.add_argument("--out", default="bench_results", help="directory for the JSON results (default: %(default)s)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    config = args.config or ("gpt2-medium" if cuda else "tiny")
    dtype = torch.bfloat16 if cuda else torch.float32
    big = args.batch or (64 if cuda else 4)
    reps = args.reps or (2 if args.quick else 5)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    env = environment(device)
    log = lambda s: print("# " + s, flush=True)
    log(f"minilisten benchmark: {env['device']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"{config}, {str(dtype).split('.')[-1]}, threads {env['threads']}")
    result = dict(env=env, command="python -m minilisten.bench " + " ".join(sys.argv[1:] if argv is None else argv),
                  config=dict(name=config, **CONFIGS[config], dtype=str(dtype), big_batch=big, reps=reps,
                              quick=args.quick, compile=args.compile))
    lm = None if skip >= {"decode", "streaming"} else build_lm(config, device, dtype)
    gens: dict = {}
    if "decode" not in skip:
        long_s = (60.0 if args.quick else 120.0) if cuda else (20.0 if args.quick else 60.0)
        result["decode"] = bench_decode(lm, device, batches=(1, big), long_seconds=long_s, reps=reps, dtype=dtype,
                                        methods="abcd" if cuda or args.quick else "abcde", progress=log, gens=gens,
                                        compile_mode=True if args.compile == "default" else args.compile)
        print(table(result["decode"], DECODE_COLS), flush=True)
        result["samples"] = bench_samples(lm, device, seconds=8.0, reps=reps, dtype=dtype, progress=log)
        print(table(result["samples"], "samples steps seconds fps per_reaction_fps"), flush=True)
    if "streaming" not in skip:
        result["streaming"] = s = bench_streaming(lm, build_vq(device), device, dtype=dtype,
                                                  seconds=8.0 if args.quick else 20.0, generator=gens.get((1, "d")))
        log(f"streaming push, 8 frames: {s['median_ms']:.2f} ms median, {s['p90_ms']:.2f} p90, {s['max_ms']:.2f} max "
            f"({'compiled' if s['compiled'] else 'eager'} LM; {s['realtime_factor']:.0f}x real time at 30 fps)")
    if "arig" not in skip:   # the appendix's size in bf16 autocast on GPU, the demo's in float32 on CPU
        rows = bench_arig(device, batches=(1, big), steps=(4, 8), frames=30 if args.quick else (120 if cuda else 90),
                          recompute_frames=8 if args.quick else 20, reps=reps, paper=cuda, autocast_bf16=cuda,
                          progress=log, compile_batches=(1,) if args.quick else None)   # a compile: 20-60 s
        arig_vs_lr(rows, result.get("decode"), result.get("streaming"))
        print(table(rows, ARIG_COLS), flush=True)
        result["arig"] = rows
    if "kernels" not in skip:
        result["kernels"] = bench_kernels(device, args.quick)
        print(table(result["kernels"], KERNEL_COLS), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_{device.type}_{config}_{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
