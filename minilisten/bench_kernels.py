"""Benchmark the Triton kernels against eager PyTorch and torch.compile of the references.

    python -m minilisten.bench_kernels [--quick] [--device cuda|cpu] [--out DIR]
    python bench/bench_kernels.py ...        # the same from a source checkout (results: bench/results)

Also ``run(quick, device) -> list[dict]`` (called by ``python -m minilisten.bench``).

Providers, in one run, forward and forward+backward where the op has a backward:
- nearest_code (fwd: idx, squared distance and z_q): eager ``torch.cdist`` + ``min`` + gather;
  ``torch.compile`` of the reference (fp32 ``||c||^2 - 2 z.c`` + argmin + gather); Triton
  (fp32: "ieee", the parity default, and "tf32x3"); Triton + ``code_stats`` (the EMA histogram,
  unfused: its extra time bounds what fusing it could save); a few other Triton tile configs.
- norm_act (AdaIN (B, C) scale/shift, ReLU): eager unfused ``F.instance_norm`` + affine + ReLU;
  ``torch.compile`` of the reference; Triton.
Sizes on CUDA are the paper's (d = 512, K = 256 / 1024, N up to 65,536; C = 512, B = 256,
T = 240/8 ... 240). Timings: ``triton.testing.do_bench`` median with 20th/80th percentiles, in µs.
GB/s counts the bytes an ideal kernel must move (inputs read once, outputs written once); the
memory bound is those bytes at the copy bandwidth measured in the same run. On CPU the Triton
timings need CUDA, so only the reference paths run, at reduced sizes (quick: ~30 s).
Results are written as JSON into ``--out`` (default ``./bench_results``) with the device name, date
and versions.

    python -m minilisten.bench_kernels --aot 90,80 [--full]

compiles every kernel for those NVIDIA archs on any machine (no GPU) at the launch configs the host
code picks, and prints ptxas registers / spill bytes / shared memory (``aot_check``).
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

import torch
import torch.nn.functional as F

RESULTS = Path("bench_results")   # relative to the working directory: works from an installed package


def _kernels():
    import minilisten.kernels as K  # late: lets callers set TRITON_INTERPRET etc. first

    return K


# ------------------------------------------------------------------------------------------------
# timing


def _time(fn, device, grad_to_none=None, quick=False):
    """(median, p20, p80) in µs."""
    if device.type == "cuda":
        import triton.testing

        q = triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=50 if quick else 100,
                                    grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
        return tuple(1e3 * v for v in q)
    fn()  # warm-up
    times, t_end = [], time.perf_counter() + (0.3 if quick else 1.0)
    while len(times) < 5 or (time.perf_counter() < t_end and len(times) < 200):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append(1e6 * (time.perf_counter() - t0))
    qs = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), qs[1], qs[7]


def copy_bandwidth(device) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), the practical memory bound."""
    n = (256 << 20) if device.type == "cuda" else (32 << 20)
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    med, _, _ = _time(lambda: b.copy_(a), device, quick=True)
    return 2 * n / (med * 1e-6) / 1e9


# ------------------------------------------------------------------------------------------------
# providers


def _eager_quantize(z, cb):
    d, idx = torch.cdist(z, cb).min(1)
    return idx, d.square(), cb[idx]


def _eager_norm_act(x, scale, shift):
    y = F.instance_norm(x, eps=1e-5)
    return torch.relu((1 + scale[..., None]) * y + shift[..., None])


def _fwd_bwd(fn, args, grads_of):
    def step():
        y = fn(*args)
        y.backward(grads_of)
    return step


# (BLOCK_N, BLOCK_K, BLOCK_D, num_warps) alternatives to the heuristic; all spill-free on sm_90
_SWEEP = {torch.float32: [(64, 64, 16, 4), (64, 64, 32, 4), (128, 64, 32, 8)],
          torch.bfloat16: [(64, 128, 64, 4), (128, 64, 64, 4), (64, 64, 64, 4)]}


def bench_nearest(device, quick, bw, compile_ok):
    K = _kernels()
    import importlib

    NC = importlib.import_module("minilisten.kernels.nearest_code")
    rows = []
    if device.type == "cuda":
        sizes = [(65536, 256), (65536, 1024)] if quick else [(8192, 256), (8192, 1024),
                                                             (65536, 256), (65536, 1024)]
        dtypes = [torch.float32, torch.bfloat16]
    else:
        sizes, dtypes = [(4096, 256)] if quick else [(4096, 256), (4096, 1024)], [torch.float32]
    d = 512
    compiled = torch.compile(lambda z, cb: K.quantize_ref(z, cb, first_of_duplicates=False),
                             dynamic=False) if compile_ok else None
    for N, Kc in sizes:
        for dtype in dtypes:
            g = torch.Generator(device=device).manual_seed(0)
            z = torch.randn(N, d, device=device, dtype=dtype, generator=g)
            cb = torch.randn(Kc, d, device=device, dtype=dtype, generator=g)
            elt = z.element_size()
            nbytes = 2 * N * d * elt + Kc * d * elt + 12 * N
            flops = 2.0 * N * Kc * d
            providers = [("eager", lambda: _eager_quantize(z, cb)),
                         ("reference", lambda: K.quantize_ref(z, cb, first_of_duplicates=False))]
            if compiled is not None:
                providers.append(("compile", lambda: compiled(z, cb)))
            if device.type == "cuda":
                providers.append(("triton", lambda: K.quantize(z, cb, use_triton=True)))
                # + the unfused EMA histogram (code_stats): what a fused one could save at most
                providers.append(("triton+stats", lambda: K.code_stats(
                    K.quantize(z, cb, use_triton=True)[0], z, Kc)))
                if dtype == torch.float32:
                    providers.append(("triton-tf32x3",
                                      lambda: K.quantize(z, cb, use_triton=True, precision="tf32x3")))
                if (N, Kc) == sizes[-1]:  # a few other launch configs, to check the heuristic
                    for cfg in _SWEEP[dtype]:
                        bn, bk, bd, w = cfg
                        c = dict(BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd, num_warps=w, num_stages=3)
                        fn = lambda c=c: NC._nearest_code_triton(z, cb, "ieee", True, config=c)
                        providers.append((f"triton[{bn}/{bk}/{bd}/{w}]", fn))
            for name, fn in providers:
                try:
                    med, p20, p80 = _time(fn, device, quick=quick)
                except Exception as e:  # a provider that cannot run is reported, not fatal
                    rows.append(dict(op="nearest_code", provider=name, mode="fwd", error=repr(e)[:300],
                                     dtype=str(dtype).split(".")[-1], shape=f"N={N} K={Kc} d={d}"))
                    continue
                rows.append(dict(op="nearest_code", mode="fwd", dtype=str(dtype).split(".")[-1],
                                 shape=f"N={N} K={Kc} d={d}", provider=name, median_us=med,
                                 p20_us=p20, p80_us=p80, bytes=nbytes,
                                 gbps=nbytes / (med * 1e-6) / 1e9,
                                 bound_us=nbytes / (bw * 1e9) * 1e6,
                                 tflops=flops / (med * 1e-6) / 1e12))
    return rows


def bench_norm(device, quick, bw, compile_ok):
    K = _kernels()
    rows = []
    if device.type == "cuda":
        B, C = 256, 512
        Ts = [30, 240] if quick else [30, 60, 120, 240]
        dtypes = [torch.bfloat16, torch.float32]
        # quick: bf16 at every T, fp32 at T = 240 only
        cases = [(T, dt) for T in Ts for dt in dtypes if not quick or dt == torch.bfloat16 or T == 240]
    else:
        B, C = 16, 512
        cases = [(T, torch.float32) for T in ([240] if quick else [30, 240])]
    compiled = torch.compile(K.norm_act_ref, dynamic=False) if compile_ok else None
    for T, dtype in cases:
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(B, C, T, device=device, dtype=dtype, generator=g)
        dy = torch.randn(B, C, T, device=device, dtype=dtype, generator=g)
        s = 0.1 * torch.randn(B, C, device=device, dtype=dtype, generator=g)
        h = 0.1 * torch.randn(B, C, device=device, dtype=dtype, generator=g)
        leaves = [t.detach().clone().requires_grad_() for t in (x, s, h)]
        elt = x.element_size()
        providers = [("eager", _eager_norm_act),
                     ("reference", lambda *a: K.norm_act(*a, use_triton=False))]
        if compiled is not None:
            providers.append(("compile", compiled))
        if device.type == "cuda":
            providers.append(("triton", lambda *a: K.norm_act(*a, use_triton=True)))
        for mode in ("fwd", "fwd+bwd"):
            # ideal traffic: fwd reads x, writes y; bwd reads x, dy, writes dx
            nbytes = (2 if mode == "fwd" else 5) * B * C * T * elt
            for name, fn in providers:
                if mode == "fwd":
                    step, gtn = (lambda fn=fn: fn(x, s, h)), None
                else:
                    step, gtn = _fwd_bwd(fn, leaves, dy), leaves
                try:
                    med, p20, p80 = _time(step, device, grad_to_none=gtn, quick=quick)
                except Exception as e:
                    rows.append(dict(op="norm_act", provider=name, mode=mode, error=repr(e)[:300],
                                 dtype=str(dtype).split(".")[-1], shape=f"B={B} C={C} T={T}"))
                    continue
                rows.append(dict(op="norm_act", mode=mode, dtype=str(dtype).split(".")[-1],
                                 shape=f"B={B} C={C} T={T}", provider=name, median_us=med,
                                 p20_us=p20, p80_us=p80, bytes=nbytes,
                                 gbps=nbytes / (med * 1e-6) / 1e9,
                                 bound_us=nbytes / (bw * 1e9) * 1e6))
    return rows


# ------------------------------------------------------------------------------------------------
# ahead-of-time compile check (no GPU needed)


def aot_check(archs=(90,), full: bool = False) -> list[dict]:
    """Compile the kernels for NVIDIA ``archs`` (e.g. 90 = H100, 80 = A100) on any machine, with
    the launch configs the host code picks at the paper's sizes, and report ptxas registers and
    spill bytes. Catches what the CPU interpreter tolerates but the GPU compiler rejects. Mirrors
    the JIT's specialization (ints == 1 -> constexpr, ints and pointers % 16 == 0 -> divisibility).
    Needs a process without TRITON_INTERPRET (the kernels must be real JIT functions)."""
    import importlib
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    NC = importlib.import_module("minilisten.kernels.nearest_code")
    NA = importlib.import_module("minilisten.kernels.norm_act")
    if type(NC._nearest_code_kernel).__name__ != "JITFunction":
        raise RuntimeError("aot_check: kernels are interpreted; run without TRITON_INTERPRET=1")
    tt = {torch.float32: "fp32", torch.bfloat16: "bf16"}

    def compile_one(fn, args, consts, arch, num_warps, num_stages=3):
        sig, cx, div = {}, dict(consts), []
        for name, v in args.items():
            if isinstance(v, str):  # a pointer: torch allocations are 16-byte aligned
                sig[name] = v
                div.append(name)
            elif isinstance(v, float):
                sig[name] = "fp32"
            elif v == 1:
                cx[name] = 1
            else:
                sig[name] = "i32"
                div += [name] if v % 16 == 0 else []
        sig.update({k: "constexpr" for k in cx})
        sig = {n: sig[n] for n in fn.arg_names if n in sig}
        attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div}
        k = triton.compile(ASTSource(fn, sig, cx, attrs), target=GPUTarget("cuda", arch, 32),
                           options=dict(num_warps=num_warps, num_stages=num_stages))
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(k.asm["ptx"])
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        out = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", f.name, "-o",
                              os.devnull], capture_output=True, text=True).stderr
        os.unlink(f.name)
        regs = re.search(r"Used (\d+) registers", out)
        spill = re.search(r"(\d+) bytes spill stores", out)
        return dict(regs=int(regs.group(1)) if regs else None,
                    spill_bytes=int(spill.group(1)) if spill else None, smem=k.metadata.shared)

    rows = []
    dtypes = [(torch.float32, "ieee"), (torch.bfloat16, None)]
    if full:
        dtypes.insert(1, (torch.float32, "tf32x3"))
    for arch in archs:
        for dtype, prec in dtypes:
            t = tt[dtype]
            for N, Kc, D in ([(65536, 1024, 512), (300, 37, 5)] if full else [(65536, 1024, 512)]):
                cfg = NC.nearest_code_config(N, Kc, D, dtype, torch.device("cpu"), (arch // 10, arch % 10))
                nw, ns = cfg.pop("num_warps"), cfg.pop("num_stages")
                r = compile_one(NC._sqnorm_kernel, dict(CB="*" + t, CN="*fp32", K=Kc, D=D, stride_ck=D),
                                dict(BLOCK_R=32, BLOCK_D=cfg["BLOCK_D"]), arch, 4)
                rows.append(dict(arch=arch, kernel="sqnorm", dtype=t, shape=f"K={Kc} d={D}", **r))
                args = dict(Z="*" + t, CB="*" + t, CN="*fp32", IDX="*i64", DIST="*fp32", ZQ="*" + t,
                            N=N, K=Kc, D=D, stride_zn=D, stride_ck=D)
                consts = dict(PRECISION=prec, WRITE_ZQ=True, DOT_FP32=False, **cfg)
                r = compile_one(NC._nearest_code_kernel, args, consts, arch, nw, ns)
                rows.append(dict(arch=arch, kernel=f"nearest_code[{prec or t}]", dtype=t,
                                 shape=f"N={N} K={Kc} d={D}", config=f"{cfg} w={nw}", **r))
            norm_shapes = [(256, 512, 240), (256, 512, 30), (2, 3, 5000)] if full else [(256, 512, 30)]
            for B, C, T in norm_shapes if prec != "tf32x3" else []:  # norm_act: once per dtype
                cfg = NA.norm_act_config(T)
                nw = cfg.pop("num_warps")
                common = dict(n_rows=B * C, C=C, T=T, stride_xb=C * T, stride_xc=T, stride_xt=1,
                              stride_sb=C, stride_sc=1, stride_hb=C, stride_hc=1)
                fwd = dict(X="*" + t, S="*fp32", H="*fp32", Y="*" + t, MEAN="*fp32", RSTD="*fp32",
                           **common, eps=1e-5)
                r = compile_one(NA._norm_act_fwd_kernel, fwd, dict(RELU=True, **cfg), arch, nw)
                rows.append(dict(arch=arch, kernel="norm_act_fwd", dtype=t, shape=f"B={B} C={C} T={T}",
                                 config=f"{cfg} w={nw}", **r))
                bwd = dict(X="*" + t, DY="*" + t, S="*fp32", H="*fp32", MEAN="*fp32", RSTD="*fp32",
                           DX="*" + t, DS="*fp32", DH="*fp32", **common, stride_db=C * T,
                           stride_dc=T, stride_dt=1)
                bwd = {n: bwd[n] for n in NA._norm_act_bwd_kernel.arg_names if n in bwd}
                r = compile_one(NA._norm_act_bwd_kernel, bwd, dict(RELU=True, **cfg), arch, nw)
                rows.append(dict(arch=arch, kernel="norm_act_bwd", dtype=t, shape=f"B={B} C={C} T={T}",
                                 config=f"{cfg} w={nw}", **r))
    for r in rows:
        print(f"sm_{r['arch']} {r['kernel']:22} {r['dtype']:5} {r['shape']:22} regs {r['regs']} "
              f"spill {r['spill_bytes']} B smem {r['smem']} B {r.get('config', '')}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# report


def _add_ratios(rows):
    base = {}
    for r in rows:
        if "median_us" in r:
            base.setdefault((r["op"], r["mode"], r["dtype"], r["shape"]), {})[r["provider"]] = r["median_us"]
    for r in rows:
        if "median_us" in r:
            b = base[(r["op"], r["mode"], r["dtype"], r["shape"])]
            r["speedup_vs_eager"] = b["eager"] / r["median_us"] if "eager" in b else None
            r["speedup_vs_compile"] = b["compile"] / r["median_us"] if "compile" in b else None


def format_table(rows) -> str:
    lines = [f"{'op':13} {'mode':7} {'dtype':8} {'shape':20} {'provider':14} {'median µs':>10} "
             f"{'p20-p80 µs':>17} {'GB/s':>7} {'bound µs':>9} {'x eager':>8} {'x compile':>9}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['op']:13} {r['mode']:7} {r['dtype']:8} {r['shape']:20} {r['provider']:14} "
                         f"ERROR {r['error']}")
            continue
        fx = lambda v: f"{v:.2f}" if v is not None else "-"
        lines.append(
            f"{r['op']:13} {r['mode']:7} {r['dtype']:8} {r['shape']:20} {r['provider']:14} "
            f"{r['median_us']:10.1f} {r['p20_us']:8.1f}-{r['p80_us']:<8.1f} {r['gbps']:7.1f} "
            f"{r['bound_us']:9.1f} {fx(r['speedup_vs_eager']):>8} {fx(r['speedup_vs_compile']):>9}")
    return "\n".join(lines)


def environment(device) -> dict:
    info = dict(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                python=platform.python_version(), torch=torch.__version__,
                platform=platform.platform(), device_type=device.type)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = platform.processor() or platform.machine()
        try:  # Linux: the CPU's model name
            with open("/proc/cpuinfo") as f:
                info["device"] = next(ln.split(":", 1)[1].strip() for ln in f
                                      if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        info["cpu_threads"] = torch.get_num_threads()
    return info


def run(quick: bool = True, device=None) -> list[dict]:
    """Time every provider; print a table; return one dict per (op, mode, dtype, shape, provider)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = environment(device)
    print(f"# kernel benchmark on {env['device']} ({device.type}), torch {env['torch']}, "
          f"triton {env['triton']}, {'quick' if quick else 'full'}", flush=True)
    if device.type != "cuda":
        print("# Triton timings need CUDA: timing only the torch reference paths at reduced sizes"
              + ("; torch.compile skipped in quick mode" if quick else ""), flush=True)
    compile_ok = device.type == "cuda" or not quick
    for knob in ("recompile_limit", "cache_size_limit"):  # one graph per shape/dtype/mode
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
    bw = copy_bandwidth(device)
    print(f"# copy bandwidth (read + write): {bw:.0f} GB/s -> memory bound", flush=True)
    rows = bench_nearest(device, quick, bw, compile_ok) + bench_norm(device, quick, bw, compile_ok)
    _add_ratios(rows)
    for r in rows:
        r.update(device=env["device"])
    print(format_table(rows), flush=True)
    env["copy_gbps"] = bw
    return [dict(r, env=env) for r in rows]


def save(rows, out_dir=RESULTS) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = rows[0]["env"] if rows else {}
    tag = "".join(ch if ch.isalnum() else "_" for ch in str(env.get("device", "unknown")))[:40]
    stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    path = out_dir / f"kernels_{tag}_{stamp}.json"
    path.write_text(json.dumps(dict(env=env, rows=[{k: v for k, v in r.items() if k != "env"}
                                                     for r in rows]), indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes, shorter timing")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for the JSON results")
    ap.add_argument("--aot", default=None, metavar="ARCHS",
                    help="only compile the kernels for these NVIDIA archs (e.g. 90,80; no GPU "
                         "needed) and print ptxas registers/spills; with --full, more variants")
    ap.add_argument("--full", action="store_true", help="with --aot: more shapes and precisions")
    args = ap.parse_args(argv)
    if args.aot:
        aot_check([int(a) for a in args.aot.replace("sm_", "").split(",")], full=args.full)
        return 0
    rows = run(args.quick, args.device)
    print(f"# results: {save(rows, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
