"""Fused nearest-codebook search (paper Eq. 5): ``argmin_k ||z_n - c_k||^2`` without the (N, K) matrix.

``z (N, d), codebook (K, d)`` of one float dtype -> ``idx (N,) int64``, exact ``dist (N,) fp32``, ``z_q (N, d)``.
Per tile of codes ``||c||^2 - 2 z.c`` (fp32 ``tl.dot``) and a running minimum with a strict ``<`` (ties -> lowest
index, as ``torch.argmin``). Gradients: ``dist`` w.r.t. z and codebook, ``z_q`` w.r.t. the codebook. docs/speed.md.
"""
from __future__ import annotations

import torch

from .dispatch import HAS_TRITON, INTERPRET, check_float, device_guard, use_triton_for

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _nearest_code_kernel(Z, CB, CN, IDX, DIST, ZQ, N, K, D, stride_zn, stride_ck,
                             PRECISION: tl.constexpr, WRITE_ZQ: tl.constexpr, DOT_FP32: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        """Z (N, D) and CB (K, D) of one dtype, unit stride along D; CN (K,) fp32 ``||c||^2`` -> IDX (N,) int64,
        DIST (N,) fp32 exact, ZQ (N, D) contiguous (when WRITE_ZQ). PRECISION: fp32 ``tl.dot`` input_precision;
        DOT_FP32: upcast tiles first (the interpreter's bf16 dot is broken); BLOCK_*: powers of two >= 16."""
        pid = tl.program_id(0)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        rows_z = offs_n.to(tl.int64) * stride_zn
        offs_d0 = tl.arange(0, BLOCK_D)
        offs_k0 = tl.arange(0, BLOCK_K)
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + offs_k0
            mask_k = offs_k < K
            rows_c = offs_k.to(tl.int64) * stride_ck
            acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)  # z . c
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + offs_d0
                mask_d = offs_d < D
                zt = tl.load(Z + rows_z[:, None] + offs_d[None, :],
                             mask=mask_n[:, None] & mask_d[None, :], other=0.0)
                ct = tl.load(CB + rows_c[:, None] + offs_d[None, :],
                             mask=mask_k[:, None] & mask_d[None, :], other=0.0)
                if DOT_FP32:  # bf16/fp16 products are exact in fp32: same result as a bf16 dot
                    acc = tl.dot(zt.to(tl.float32), tl.trans(ct.to(tl.float32)), acc,
                                 input_precision="ieee")
                else:
                    acc = tl.dot(zt, tl.trans(ct), acc, input_precision=PRECISION)
            cn = tl.load(CN + offs_k, mask=mask_k, other=float("inf"))  # padding never wins
            score = cn[None, :] - 2.0 * acc
            tile_min, tile_arg = tl.min(score, axis=1, return_indices=True)  # ties -> lowest index
            better = tile_min < best  # strict: an earlier tile keeps its ties
            best = tl.where(better, tile_min, best)
            best_idx = tl.where(better, tile_arg + k0, best_idx)
        # epilogue: gather the chosen code, exact distance, optional z_q
        rows_q = best_idx.to(tl.int64) * stride_ck
        dist = tl.zeros([BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + offs_d0
            mask = mask_n[:, None] & (offs_d < D)[None, :]
            zt = tl.load(Z + rows_z[:, None] + offs_d[None, :], mask=mask, other=0.0)
            cq = tl.load(CB + rows_q[:, None] + offs_d[None, :], mask=mask, other=0.0)
            diff = zt.to(tl.float32) - cq.to(tl.float32)
            dist += tl.sum(diff * diff, axis=1)
            if WRITE_ZQ:
                tl.store(ZQ + offs_n.to(tl.int64)[:, None] * D + offs_d[None, :], cq, mask=mask)
        tl.store(IDX + offs_n, best_idx.to(tl.int64), mask=mask_n)
        tl.store(DIST + offs_n, dist, mask=mask_n)


PRECISIONS = ("ieee", "tf32x3", "tf32")


def quantize_ref(z: torch.Tensor, codebook: torch.Tensor, chunk_elems: int = 1 << 24, first_of_duplicates: bool = True):
    """Reference ``(idx, dist, z_q)``, scores in fp32 (fp64 for fp64) in chunks of ``chunk_elems``; a choice among
    exact duplicate codes maps to the first (BLAS may round them apart); ``first_of_duplicates=False`` skips that."""
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    zf, cf = z.to(acc), codebook.to(acc)
    with torch.no_grad():
        cn = (cf * cf).sum(1)
        rows = max(1, chunk_elems // max(1, codebook.shape[0]))
        idx = torch.cat([torch.addmm(cn[None], zf[i:i + rows], cf.t(), alpha=-2.0).argmin(1)
                         for i in range(0, z.shape[0], rows)])
        if first_of_duplicates:
            _, inv = torch.unique(codebook, dim=0, return_inverse=True)  # (K,) duplicate class
            ar = torch.arange(codebook.shape[0], device=idx.device)
            first = torch.full_like(ar, codebook.shape[0]).scatter_reduce(0, inv, ar, "amin")
            idx = first[inv[idx]]
    dist = (zf - cf[idx]).pow(2).sum(1)
    return idx, dist, codebook[idx]


def nearest_code_config(N: int, K: int, D: int, dtype: torch.dtype, device: torch.device,
                        capability: tuple[int, int] | None = None) -> dict:
    """Launch configuration: powers of two >= 16 (tl.dot), chosen so that ptxas (Triton 3.9) reports no
    register spills at d = 512 on sm_90 and sm_80 (``bench/aot_check.py``)."""
    p2 = triton.next_power_of_2
    if INTERPRET:  # the interpreter's cost is per operation: few, large programs
        return dict(BLOCK_N=min(2048, max(128, p2(triton.cdiv(N, 4)))), BLOCK_K=min(128, max(16, p2(K))),
                    BLOCK_D=min(64, max(16, p2(D))))
    sms, cap = 1, (9, 0)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        sms, cap = p.multi_processor_count, (p.major, p.minor)
    cap = capability or cap
    low = dtype in (torch.bfloat16, torch.float16)
    if cap >= (9, 0):  # Hopper: wgmma for bf16
        block_n, block_k, block_d, warps = (128, 128, 64, 8) if low else (64, 64, 32, 8)
    else:  # Ampere and older: mma.sync / FMA need smaller k-steps to stay under 255 registers
        block_n, block_k, block_d, warps = (128, 128, 32, 8) if low else (64, 64, 16, 8)
    block_k = min(block_k, max(16, p2(K)))
    block_d = min(block_d, max(16, p2(D)))
    while block_n > 64 and triton.cdiv(N, block_n) < sms:  # about one program per SM at least
        block_n //= 2
    block_n = min(block_n, max(16, p2(N)))
    return dict(BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, num_warps=warps, num_stages=3)


def _nearest_code_triton(z, codebook, precision, write_zq, config=None):
    # the kernel assumes unit stride along d (coalesced, vectorized loads)
    z, codebook = (t if t.stride(-1) == 1 else t.contiguous() for t in (z, codebook))
    (N, D), K, dev = z.shape, codebook.shape[0], z.device
    cn = codebook.float().square().sum(1)   # (K,) ||c_k||^2 in fp32
    idx = torch.empty(N, dtype=torch.int64, device=dev)
    dist = torch.empty(N, dtype=torch.float32, device=dev)
    zq = torch.empty((N, D), dtype=z.dtype, device=dev) if write_zq else dist
    cfg = dict(config or nearest_code_config(N, K, D, z.dtype, dev))
    if INTERPRET:  # the interpreter takes no warps/stages
        cfg.pop("num_warps", None), cfg.pop("num_stages", None)
    with device_guard(z):
        _nearest_code_kernel[(triton.cdiv(N, cfg["BLOCK_N"]),)](
            z, codebook, cn, idx, dist, zq, N, K, D, z.stride(0), codebook.stride(0),
            PRECISION=precision if z.dtype == torch.float32 else None, WRITE_ZQ=write_zq,
            DOT_FP32=INTERPRET and z.dtype != torch.float32, **cfg)
    return idx, dist, (zq if write_zq else None)


class NearestCodeFunction(torch.autograd.Function):
    """Triton forward; backward for ``dist`` (z and codebook) and ``z_q`` (codebook), as the reference."""

    @staticmethod
    def forward(ctx, z, codebook, precision, write_zq):
        idx, dist, zq = _nearest_code_triton(z, codebook, precision, write_zq)
        ctx.save_for_backward(z, codebook, idx)
        ctx.mark_non_differentiable(idx)
        return idx, dist, zq

    @staticmethod
    def backward(ctx, g_idx, g_dist, g_zq):
        z, codebook, idx = ctx.saved_tensors
        need_z, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_z = grad_c = None
        rows = None  # (N, d) fp32 gradient w.r.t. the gathered code of each row
        if g_dist is not None:
            diff = (z.float() - codebook[idx].float()) * (2.0 * g_dist.float()[:, None])
            if need_z:
                grad_z = diff.to(z.dtype)
            rows = -diff
        if g_zq is not None:
            rows = g_zq.float() if rows is None else rows + g_zq.float()
        if need_c and rows is not None:
            grad_c = torch.zeros(codebook.shape, dtype=torch.float32, device=codebook.device)
            grad_c = grad_c.index_add_(0, idx, rows).to(codebook.dtype)
        return grad_z, grad_c, None, None


def _check(z, codebook, op, precision):
    check_float(op, "z", z, "(N, d)")
    check_float(op, "codebook", codebook, "(K, d)")
    if codebook.shape[1] != z.shape[1]:
        raise ValueError(f"{op}: codebook has d={codebook.shape[1]} but z has d={z.shape[1]}")
    if z.dtype != codebook.dtype:
        raise TypeError(f"{op}: z and codebook must share a dtype, got {z.dtype} and {codebook.dtype}")
    if z.device != codebook.device:
        raise ValueError(f"{op}: z is on {z.device} but codebook is on {codebook.device}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"{op}: precision must be one of {PRECISIONS} or None, got {precision!r}")


def _run(op, z, codebook, use_triton, precision, write_zq):
    _check(z, codebook, op, precision)
    if not use_triton_for(z, use_triton, op):
        return quantize_ref(z, codebook)
    return NearestCodeFunction.apply(z, codebook, precision or "ieee", write_zq)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, use_triton: bool | None = None, *,
                 precision: str | None = None):
    """Nearest code by squared L2 -> ``(idx (N,) int64, dist (N,) fp32)``; ``precision``: the fp32 dot, PRECISIONS."""
    return _run("nearest_code", z, codebook, use_triton, precision, False)[:2]


def quantize(z: torch.Tensor, codebook: torch.Tensor, use_triton: bool | None = None, *,
             precision: str | None = None):
    """``nearest_code`` plus ``z_q = codebook[idx]`` (differentiable w.r.t. the codebook): ``-> (idx, dist, z_q)``."""
    return _run("quantize", z, codebook, use_triton, precision, True)


def code_stats(idx: torch.Tensor, z: torch.Tensor, K: int):
    """EMA statistics ``onehot(idx)^T 1`` and ``onehot(idx)^T z``: ``-> (counts (K,), sums (K, d))`` fp32, no host
    sync, not differentiable."""
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 1:
        raise TypeError(f"code_stats: idx must be a 1-D int64 tensor, got {getattr(idx, 'dtype', type(idx))} "
                        f"of shape {tuple(getattr(idx, 'shape', ()))}")
    check_float("code_stats", "z", z)
    if z.dim() != 2 or z.shape[0] != idx.shape[0]:
        raise ValueError(f"code_stats: z must be (N, d) with N = len(idx) = {idx.shape[0]}, got {tuple(z.shape)}")
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"code_stats: K must be a positive int, got {K!r}")
    with torch.no_grad():
        counts = torch.zeros(K, dtype=torch.float32, device=z.device)
        counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        sums = torch.zeros((K, z.shape[1]), dtype=torch.float32, device=z.device)
        sums.index_add_(0, idx, z.float())
    return counts, sums
