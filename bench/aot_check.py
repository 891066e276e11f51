"""Compile every Triton kernel for NVIDIA archs on any machine (no GPU), report ptxas registers and spills.

    python bench/aot_check.py 90,80 [--full]

Uses the launch configs the host code picks at the paper's sizes and mirrors the JIT's specialization (ints == 1
-> constexpr, ints and pointers % 16 == 0 -> divisibility). Catches what the CPU interpreter tolerates but the GPU
compiler rejects (tests/test_kernels.py runs it for sm_90). Needs a process without TRITON_INTERPRET.
"""
import argparse
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from minilisten.kernels import nearest_code as NC
from minilisten.kernels import norm_act as NA

TT = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def compile_one(fn, args, consts, arch, num_warps, num_stages=3):
    """Compile ``fn`` for ``sm_{arch}``: {regs, spill_bytes, smem} from ptxas -v."""
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


def aot_check(archs=(90,), full: bool = False) -> list[dict]:
    """Compile every kernel for ``archs`` and print one line per kernel and shape."""
    if type(NC._nearest_code_kernel).__name__ != "JITFunction":
        raise RuntimeError("aot_check: kernels are interpreted; run without TRITON_INTERPRET=1")

    rows = []
    dtypes = [(torch.float32, "ieee"), (torch.bfloat16, None)]
    if full:
        dtypes.insert(1, (torch.float32, "tf32x3"))
    for arch in archs:
        for dtype, prec in dtypes:
            t = TT[dtype]
            for N, Kc, D in ([(65536, 1024, 512), (300, 37, 5)] if full else [(65536, 1024, 512)]):
                cfg = NC.nearest_code_config(N, Kc, D, dtype, torch.device("cpu"), (arch // 10, arch % 10))
                nw, ns = cfg.pop("num_warps"), cfg.pop("num_stages")
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("archs", help="NVIDIA archs, e.g. 90,80 (sm_90: H100/H200, sm_80: A100)")
    ap.add_argument("--full", action="store_true", help="more shapes and the tf32x3 precision")
    args = ap.parse_args()
    aot_check([int(a) for a in args.archs.replace("sm_", "").split(",")], full=args.full)
