"""``python -m minilisten.bench [--quick] [--device cuda|cpu]``: how fast listener motion is generated.

Greedy LR decoding (one LR token = 8 motion frames) of random speaker streams with realistic token
counts (words ~2.5/s, SA 50/s, emotion: ~20 speaker tokens per step), timed side by side:

  (a) nocache    LM-listener's way: the HF model recomputes the whole context for every LR token
                 (``generate.generate_nocache``; it reads each code back to the host)
  (b) hf-dynamic the HF model with its default ``DynamicCache``, one forward per step, eager
                 (``generate.HFDecoder``)
  (c) ours-eager ``generate.Generator``: compact forward + static KV cache, eager
  (d) ours-compiled  the same under ``torch.compile`` (CUDA: CUDA graphs, ``reduce-overhead``;
                 CPU: inductor's C++ code around MKL matmuls). On CPU the full run adds
                 "(d) compiled bf16": the same with bf16 weights (AMX where the CPU has it), a
                 different dtype than (a)-(c), shown with its agreement with their codes

Scenarios: a full 8-s window (30 LR tokens) at batch 1 and at a large batch (64 on GPU, 4 on CPU),
a long stream (several context jumps of the LM's sliding window) at batch 1, and "W+emo": the
8-s window at batch 1 without SA tokens (~5 tokens per step instead of ~20: a words + emotion LM). Reported: LR
tokens/s (all streams), listener FPS (= 8 x LR tokens/s; frames produced per second of compute,
all streams together), ms per step, and the speed-ups over (a) and (b). Then the step latency of
``StreamingListener.push`` (LM step + incremental VQ decode), the ARIG-style model's frame-by-frame
decode (:func:`bench_arig`: cached ``ARIG.step``, eager and compiled, vs recomputing the history window every frame, 4
and 8 Euler steps, batch 1 and the large batch, with its FPS as a ratio of the LR-token decoders'
measured in the same run), and the kernel benchmark (:mod:`minilisten.bench_kernels`).

Model: GPT-2 Medium shape with random weights in bf16 on GPU (speed does not depend on the
weights), a 4-layer 256-wide GPT-2 in fp32 on CPU. Timings: each method runs once to warm up
(compilation), then ``reps`` rounds in which every method runs once (interleaved, so a busy
machine slows all alike); the median round time is reported. The table is printed and a JSON
file (device, versions, config, date, rows) is written into ``--out`` (default ``./bench_results``,
relative to the working directory, so it runs from an installed package anywhere).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .data.segment import D_MOTION, N_EMOTIONS, N_SHAPE
from .data.synthetic import WORDS, speaker_segment

RESULTS = Path("bench_results")   # default --out, relative to the working directory
CONFIGS = {   # layout, shape (n_layer, n_embd, n_head, n_positions) and word vocabulary (None: a small BPE's)
    "tiny": dict(arch="gpt2", n_layer=4, n_embd=256, n_head=4, n_positions=1024, vocab_size=None),
    "tiny-llama": dict(arch="llama", n_layer=4, n_embd=256, n_head=4, n_positions=1024, vocab_size=None),
    "gpt2-medium": dict(arch="gpt2", n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257),
}


# ----------------------------------------------------------------------------------- inputs

def build_lm(config: str = "tiny", device="cpu", dtype=torch.float32, seed: int = 0):
    """A random-weight ``ListenerLM`` with a backbone of the ``CONFIGS[config]`` layout and shape
    (``lm.scratch_backbone``: GPT-2, or LLaMA = the from-scratch default's layout; the word
    tokenizer is a small BPE trained on ``WORDS``; the backbone keeps its full word vocabulary)."""
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
    """A random-weight identity-disentangled VQ-VAE (the paper's shape; AdaIN heads randomised so
    beta matters)."""
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
    """``batch`` random speaker streams as ``(histories, steps)`` (``lm.speaker_steps``), cut to the
    same number of steps; ``sa=False`` drops the SA tokens (a words + emotion LM's steps)."""
    v = lm.vocab
    hs, ss = [], []
    for k in range(batch):
        h, s = lm.speaker_steps(speaker_segment(seconds, seed=seed + k))
        if not sa:
            s = [[t for t in x if not (v.sa_start <= t <= v.sa_end or v.sa_offset <= t < v.emo_offset)] for x in s]
        hs.append(h)
        ss.append(s)
    n = min(len(s) for s in ss)
    return hs, [s[:n] for s in ss]


# ----------------------------------------------------------------------------------- timing
def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _rounds(fns: dict, reps: int, device, warm=("b", "c", "d", "e"), progress=print) -> dict:
    """Interleaved timing: one warm-up call of the fns in ``warm`` (compilation, caches; (a) needs
    none), then ``reps`` rounds of every fn; seconds per call. A fn that raises is reported and dropped."""
    out = {k: [] for k in fns}

    def call(k):
        try:
            _sync(device)
            t = time.perf_counter()
            fns[k]()
            _sync(device)
            return time.perf_counter() - t
        except Exception as e:   # e.g. out of memory: keep the other methods' numbers
            progress(f"  {METHODS[k]} failed: {type(e).__name__}: {e}")
            return None
    for k in [k for k in fns if k in warm]:
        if call(k) is None:
            del fns[k], out[k]
    for _ in range(reps):
        for k in list(fns):
            t = call(k)
            if t is None:
                del fns[k], out[k]
            else:
                out[k].append(t)
    return out


def bench_decode(lm, device, batches=(1,), window_seconds: float = 8.0, long_seconds: float = 60.0,
                 long_batch: int = 1, reps: int = 3, dtype=None, compile_mode: str | bool = True,
                 methods=("a", "b", "c", "d"), progress=print, gens: dict | None = None) -> list[dict]:
    """Rows of the decode table: one per (scenario, method). ``gens`` caches the compiled
    generators by ``(batch, method)`` (shared with :func:`bench_streaming`)."""
    from .generate import Generator, HFDecoder, generate_nocache
    rows = []
    scenarios = [("window", b, window_seconds) for b in batches] + [("long", long_batch, long_seconds),
                                                                     ("W+emo", 1, window_seconds)]
    gens = {} if gens is None else gens
    for name, B, sec in scenarios:
        hs, ss = streams(lm, B, sec, seed=100 * B + len(rows), sa=name != "W+emo")
        n = len(ss[0])
        plan = lm.context_plan(hs[0], ss[0])
        fns, outs = {}, {}

        def wrap(key, f):
            def g():
                outs[key] = f()
            return g
        if "a" in methods and not (name == "long" and B > 1):
            fns["a"] = wrap("a", lambda: generate_nocache(lm, hs, ss))
        if "b" in methods:
            hf = HFDecoder(lm, batch=B)
            fns["b"] = wrap("b", lambda: hf.generate(hs, ss))
        if "c" in methods:
            gc = Generator(lm, batch=B, dtype=dtype)
            fns["c"] = wrap("c", lambda: gc.generate(hs, ss))
        for m, dt in (("d", dtype), ("e", torch.bfloat16)):
            if m not in methods:
                continue
            if (B, m) not in gens:
                t0 = time.perf_counter()
                try:
                    gens[(B, m)] = Generator(lm, batch=B, dtype=dt, compile=compile_mode)
                    with torch.inference_mode():
                        gens[(B, m)].generate(hs, ss)
                except Exception as e:   # report, keep the other methods' numbers
                    progress(f"  {METHODS[m]} failed: {type(e).__name__}: {e}")
                    gens[(B, m)] = None
                    continue
                progress(f"  {METHODS[m]}: compiled for batch {B} in {time.perf_counter() - t0:.0f} s")
            if gens[(B, m)] is not None:
                fns[m] = wrap(m, lambda g=gens[(B, m)]: g.generate(hs, ss))
        progress(f"{name}: batch {B}, {n} LR steps, {sum(len(x) for x in ss[0]) / n:.1f} speaker tokens/step, "
                 f"{len(set(plan))} context(s)")
        with torch.inference_mode():
            times = _rounds(fns, reps, device, progress=progress)
        ref = outs.get("a", outs.get("b"))
        base = {k: statistics.median(v) for k, v in times.items()}
        for k, ts in times.items():
            t = base[k]
            agree = float((outs[k] == ref).float().mean()) if ref is not None else float("nan")
            rows.append(dict(
                scenario=name, batch=B, steps=n, method=METHODS[k], seconds=t,
                seconds_all=ts, ms_per_step=1e3 * t / n, lr_tokens_per_s=B * n / t, fps=8 * B * n / t,
                speedup_vs_a=base["a"] / t if "a" in base else None,
                speedup_vs_b=base["b"] / t if "b" in base else None, agreement_vs_ref=agree,
            ))
    return rows


METHODS = {"a": "(a) nocache", "b": "(b) hf-dynamic", "c": "(c) ours-eager", "d": "(d) ours-compiled",
           "e": "(d) compiled bf16"}


def bench_streaming(lm, vq, device, dtype=None, seconds: float = 12.0, generator=None) -> dict:
    """Latency of ``StreamingListener.push`` with one LR step (8 frames) of speaker input per push
    (``generator``: a compiled one to reuse; else eager)."""
    from .streaming import StreamingListener
    seg = speaker_segment(seconds, seed=7)
    sl = StreamingListener(lm, vq, seg.listener_beta, dtype=dtype, history_words=seg.history_words, generator=generator)
    r, fps = 8, seg.fps

    def run_once():
        sl.reset()
        lat, frames = [], 0
        for i in range(seg.T // r):
            t0, t1 = i * r / fps, (i + 1) * r / fps
            words = [w for w in seg.words if t0 < w.end <= t1 + 1e-9]
            a, b = sl.sa_range(i)
            _sync(device)
            t = time.perf_counter()
            out = sl.push(words=words, sa_tokens=seg.sa_tokens[a:b], emotion=seg.emotion[i * r:(i + 1) * r])
            _sync(device)
            lat.append(time.perf_counter() - t)
            frames += len(out)
        return lat, frames
    with torch.inference_mode():
        run_once()
        lat, frames = run_once()
    lat_ms = np.asarray(lat[2:]) * 1e3
    return dict(pushes=len(lat), frames=frames, lookahead=sl.lookahead, compiled=bool(generator and generator.compiled),
                median_ms=float(np.median(lat_ms)),
                p90_ms=float(np.percentile(lat_ms, 90)), max_ms=float(lat_ms.max()),
                realtime_factor=float((r / fps) / np.median(lat_ms / 1e3)))


def build_arig(device="cpu", paper: bool = False, seed: int = 0):
    """A random-weight ARIG model: the CPU/demo size (``ARIGConfig()``) or the appendix's
    (``ARIGConfig.paper()``), 1024 SA tokens, words, emotion, beta (speed does not depend on the weights)."""
    from .arig import ARIG, ARIGConfig
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = ARIG(ARIGConfig.paper(n_sa=1024) if paper else ARIGConfig(n_sa=1024))
    return m.to(device).eval()


def _arig_inputs(m, B: int, T: int, device, seed: int = 0) -> dict:
    """Random per-frame ARIG inputs for ``B`` streams and ``T`` frames (a :func:`minilisten.arig.collate` batch)."""
    c = m.config
    g = torch.Generator().manual_seed(seed)
    x = {"spk": torch.randn(B, T, D_MOTION, generator=g), "lis": torch.randn(B, T, D_MOTION, generator=g),
         "sa": torch.randint(0, c.n_sa, (B, T, c.sa_slots), generator=g),
         "emo": torch.softmax(torch.randn(B, T, N_EMOTIONS, generator=g), -1),
         "word": torch.randint(0, c.word_buckets, (B, T), generator=g),
         "since": torch.randint(0, c.since_max + 1, (B, T), generator=g), "beta": torch.randn(B, N_SHAPE, generator=g)}
    return {k: v.to(device) for k, v in x.items()}


ARIG_METHODS = {"cached": "ARIG cached step", "compiled": "ARIG cached, compiled", "recompute": "ARIG recompute window"}


def bench_arig(device, batches=(1, 4), steps=(4, 8), frames: int = 60, recompute_frames: int = 12, reps: int = 2,
               paper: bool = False, autocast_bf16: bool = False, progress=print, model=None,
               compile_batches=None) -> list[dict]:
    """Frame-by-frame ARIG decode: per (batch, Euler steps) the cached path
    (:func:`~minilisten.arig.decode_frame`: ``ARIG.step`` with its fixed caches + ``sample`` +
    ``commit``; what :class:`~minilisten.arig.StreamingARIG` runs), the same under torch.compile
    (:func:`~minilisten.arig.compiled_decode_frame`, for the batches in ``compile_batches``, default
    all; each (batch, steps) compiles once in the warm-up round) and the eager reference that
    recomputes the whole ``window``-frame history through the sequence path (``ARIG.features``)
    every frame. Interleaved rounds (``reps``), each frame timed (synchronised): rows with p50 / p95
    ms per frame, FPS (frames of all streams per second at the p50) and the speed-up over the
    recomputing path."""
    from .arig import compiled_decode_frame, decode_frame
    m = model if model is not None else build_arig(device, paper)
    c, W = m.config, m.config.window
    rows = []
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if autocast_bf16 else torch.autocast("cpu", enabled=False)
    for B in batches:
        x = _arig_inputs(m, B, W + frames + 1, device, seed=B)
        frame = lambda t: {k: (v if k == "beta" else v[:, t]) for k, v in x.items() if k != "lis"}
        noise = torch.randn(B, D_MOTION, device=device)
        methods = ["cached"] + (["compiled"] if compile_batches is None or B in compile_batches else []) + ["recompute"]
        for n_steps in steps:
            times = {k: [] for k in methods}
            with torch.inference_mode(), amp:
                st = {k: m.init_state(frame(0)) for k in ("cached", "compiled")}
                fast = compiled_decode_frame(torch.device(device).type)

                def cached(t):
                    decode_frame(m, st["cached"], frame(t), noise, n_steps)

                def compiled(t):
                    fast(m, st["compiled"], frame(t), noise, n_steps)

                def recompute(t):
                    win = {k: (v if k == "beta" else v[:, t:t + W]) for k, v in x.items()}
                    z, _ = m.features(win)
                    m.sample(z[:, -1], noise, n_steps)
                fns = {"cached": (cached, frames), "compiled": (compiled, frames), "recompute": (recompute, recompute_frames)}
                for r in range(reps + 1):   # round 0 warms up (and compiles)
                    for name in methods:
                        fn, n = fns[name]
                        for t in range(n):
                            _sync(device)
                            t0 = time.perf_counter()
                            fn(t)
                            _sync(device)
                            if r:
                                times[name].append(time.perf_counter() - t0)
            p50 = {k: float(np.median(v)) for k, v in times.items()}
            for name, ts in times.items():
                ms = np.asarray(ts) * 1e3
                rows.append(dict(scenario="ARIG frame", batch=B, sample_steps=n_steps, method=ARIG_METHODS[name],
                                 frames_timed=len(ts), p50_ms=float(np.median(ms)), p95_ms=float(np.percentile(ms, 95)),
                                 fps=B / p50[name], fps_per_stream=1.0 / p50[name],
                                 speedup_vs_recompute=p50["recompute"] / p50[name],
                                 config=dict(d_model=c.d_model, d_ff=c.d_ff, window=W, paper=paper,
                                             dtype="bf16 autocast" if autocast_bf16 else "float32")))
            progress(f"ARIG batch {B}, {n_steps} Euler steps: recompute {1e3 * p50['recompute']:.2f} ms, " +
                     ", ".join(f"{k} {1e3 * p50[k]:.2f} ms ({p50['recompute'] / p50[k]:.1f}x)" for k in methods[:-1]))
    return rows


def arig_vs_lr(arig_rows: list[dict], decode_rows: list[dict] | None, streaming: dict | None) -> None:
    """Add, in place, the ratios of each ARIG row's FPS to the LR-token decoders' FPS at the same
    batch (the 8-s window scenario, same run): ``fps_vs_lr`` {method: ratio} (LR FPS = 8 x LR
    tokens/s, the LM only, no VQ decode) and, at batch 1, ``fps_vs_lr_streaming`` (StreamingListener
    push: LM step + VQ decode, 8 frames per push)."""
    lr = {}
    for r in decode_rows or []:
        if r["scenario"] == "window":
            lr.setdefault(r["batch"], {})[r["method"]] = r["fps"]
    for r in arig_rows:
        r["fps_vs_lr"] = {k: r["fps"] / v for k, v in lr.get(r["batch"], {}).items()}
        if streaming and r["batch"] == 1:
            r["fps_vs_lr_streaming"] = r["fps"] / (8 / (streaming["median_ms"] / 1e3))


def format_arig_table(rows: list[dict]) -> str:
    lr_names = sorted({k for r in rows for k in r.get("fps_vs_lr", {})})
    head = f"{'method':<22} {'B':>3} {'Euler':>5} {'p50 ms':>8} {'p95 ms':>8} {'FPS':>9} {'vs recomp':>9}" + \
        "".join(f" {'vs ' + k.split(' ')[0] + ('bf16' if 'bf16' in k else ''):>8}" for k in lr_names) + f" {'vs stream':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lrs = "".join(f" {r['fps_vs_lr'][k]:>7.2f}x" if k in r.get("fps_vs_lr", {}) else f" {'-':>8}" for k in lr_names)
        vs = f"{r['fps_vs_lr_streaming']:.2f}x" if r.get("fps_vs_lr_streaming") else "-"
        lines.append(f"{r['method']:<22} {r['batch']:>3} {r['sample_steps']:>5} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
                     f"{r['fps']:>9.0f} {r['speedup_vs_recompute']:>8.1f}x{lrs} {vs:>9}")
    return "\n".join(lines)


def run_kernel_bench(quick: bool, device) -> list:
    """:func:`minilisten.bench_kernels.run` (Triton kernels vs eager / compiled references)."""
    from .bench_kernels import run
    return run(quick, torch.device(device))


# ----------------------------------------------------------------------------------- report
def format_table(rows: list[dict]) -> str:
    head = f"{'scenario':<8} {'B':>3} {'steps':>5} {'method':<18} {'ms/step':>9} {'LR tok/s':>10} {'FPS':>10} " \
           f"{'vs (a)':>7} {'vs (b)':>7} {'agree':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        fa = f"{r['speedup_vs_a']:.1f}x" if r["speedup_vs_a"] else "-"
        fb = f"{r['speedup_vs_b']:.2f}x" if r["speedup_vs_b"] else "-"
        lines.append(f"{r['scenario']:<8} {r['batch']:>3} {r['steps']:>5} {r['method']:<18} {r['ms_per_step']:>9.2f} "
                     f"{r['lr_tokens_per_s']:>10.0f} {r['fps']:>10.0f} {fa:>7} {fb:>7} {r['agreement_vs_ref']:>6.3f}")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    import transformers
    dev = torch.device(device)
    info = dict(device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
                device_type=dev.type, torch=torch.__version__, transformers=transformers.__version__,
                python=platform.python_version(), threads=torch.get_num_threads(), cpus=os.cpu_count(),
                date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if dev.type == "cuda":
        info["cuda"] = torch.version.cuda
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minilisten.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: about a minute on a CPU")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="default: gpt2-medium on GPU, tiny (GPT-2) on CPU; tiny-llama: the default LM's layout")
    p.add_argument("--batch", type=int, default=None, help="the large batch (default 64 on GPU, 4 on CPU)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds per scenario (default 2 quick, 5 full)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    p.add_argument("--compile", default="default", choices=("default", "max-autotune"),
                   help="torch.compile setting of (d): default (CUDA graphs on GPU) or max-autotune (longer compile)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: decode, streaming, arig, kernels")
    p.add_argument("--out", default=str(RESULTS), help="directory for the JSON results (default: %(default)s)")
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
    print(f"# minilisten decode benchmark: {env['device']} ({device.type}), torch {env['torch']}, "
          f"transformers {env['transformers']}, {config} ({CONFIGS[config]['arch']}), {str(dtype).split('.')[-1]}, threads {env['threads']}", flush=True)
    result = dict(env=env, command="python -m minilisten.bench " + " ".join(sys.argv[1:] if argv is None else argv),
                  config=dict(name=config, **CONFIGS[config], dtype=str(dtype), big_batch=big, reps=reps,
                              quick=args.quick, compile=args.compile))
    lm = build_lm(config, device, dtype)
    gens: dict = {}
    if "decode" not in skip:
        long_s = (20.0 if args.quick else 60.0) if not cuda else (60.0 if args.quick else 120.0)
        methods = ("a", "b", "c", "d") if (cuda or args.quick) else ("a", "b", "c", "d", "e")
        rows = bench_decode(lm, device, batches=(1, big), long_seconds=long_s, reps=reps, dtype=dtype,
                            methods=methods, progress=lambda s: print("# " + s, flush=True), gens=gens,
                            compile_mode=True if args.compile == "default" else args.compile)
        print(format_table(rows), flush=True)
        result["decode"] = rows
    if "streaming" not in skip:
        vq = build_vq(device)
        result["streaming"] = s = bench_streaming(lm, vq, device, dtype=dtype, seconds=8.0 if args.quick else 20.0,
                                                  generator=gens.get((1, "d")))
        print(f"# streaming push latency ({'compiled' if s['compiled'] else 'eager'} LM step + VQ decode, 8 frames per "
              f"push, lookahead {s['lookahead']}, {s['pushes']} pushes): "
              f"median {s['median_ms']:.2f} ms, p90 {s['p90_ms']:.2f} ms, max {s['max_ms']:.2f} ms; "
              f"{s['realtime_factor']:.0f}x faster than real time at 30 fps", flush=True)
    if "arig" not in skip:
        # ARIG at the appendix's size on GPU (bf16 autocast), the demo's size on CPU (float32)
        arig_frames = 30 if args.quick else (120 if cuda else 90)
        rows = bench_arig(device, batches=(1, big), steps=(4, 8), frames=arig_frames,
                          recompute_frames=8 if args.quick else 20, reps=reps, paper=cuda, autocast_bf16=cuda,
                          progress=lambda s: print("# " + s, flush=True),
                          compile_batches=(1,) if args.quick else None)   # each compile costs 20-60 s
        arig_vs_lr(rows, result.get("decode"), result.get("streaming"))
        print(format_arig_table(rows), flush=True)
        result["arig"] = rows
    if "kernels" not in skip:
        try:
            result["kernels"] = run_kernel_bench(args.quick, device)
        except Exception as e:  # the kernel benchmark is another module's: report, do not fail ours
            print(f"# kernel benchmark failed: {type(e).__name__}: {e}")
            result["kernels"] = dict(error=f"{type(e).__name__}: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"decode_{device.type}_{config}_{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
