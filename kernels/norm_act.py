"""Fused InstanceNorm / AdaIN + affine + ReLU (the VQ-VAE ResBlock normalization), forward and backward.

``x (B, C, T)``, per row over t: ``x_hat = (x - mean) rstd`` (two-pass biased variance), ``y = relu((1 + scale)
x_hat + shift)``, scale/shift (C,) (IN) or (B, C) (AdaIN). Backward as Triton's layer-norm tutorial: ``da = dy
[a > 0]``, ``dx = rstd (g da - mean_t(g da) - x_hat mean_t(g da x_hat))``, ``g = 1 + scale``. Notes: docs/speed.md.
"""
from __future__ import annotations

import torch

from .dispatch import HAS_TRITON, INTERPRET, check_float, device_guard, use_triton_for

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _tile(P, row, offs, stride_t, mask):
        """A (ROWS, BLOCK_T) tile of a (B, C, T) tensor in fp32, 0 where masked."""
        return tl.load(P + row[:, None] + offs[None, :] * stride_t, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _act(x_hat, g, h, RELU: tl.constexpr):
        a = x_hat * g[:, None] + h[:, None]
        if RELU:
            a = tl.where(a < 0.0, 0.0, a)
        return a

    @triton.jit
    def _norm_act_fwd_kernel(X, S, H, Y, MEAN, RSTD, n_rows, C, T, stride_xb, stride_xc, stride_xt,
                             stride_sb, stride_sc, stride_hb, stride_hc, eps, RELU: tl.constexpr,
                             ROWS: tl.constexpr, BLOCK_T: tl.constexpr, ONE_TILE: tl.constexpr):
        """X (B, C, T) any strides; S, H scale/shift read as ``S[b * stride_sb + c * stride_sc]`` ((C,) or (B, C))
        -> Y (B*C, T) contiguous in X's dtype, MEAN and RSTD (B*C,) fp32. ROWS rows per program of BLOCK_T
        elements a step; ONE_TILE: T <= BLOCK_T, the row stays in registers."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        mask_r = rows < n_rows
        b = (rows // C).to(tl.int64)
        c = (rows % C).to(tl.int64)
        x_row = b * stride_xb + c * stride_xc
        y_row = rows.to(tl.int64) * T
        g = 1.0 + tl.load(S + b * stride_sb + c * stride_sc, mask=mask_r, other=0.0).to(tl.float32)
        h = tl.load(H + b * stride_hb + c * stride_hc, mask=mask_r, other=0.0).to(tl.float32)
        offs0 = tl.arange(0, BLOCK_T)
        if ONE_TILE:
            mask = mask_r[:, None] & (offs0 < T)[None, :]
            x = _tile(X, x_row, offs0, stride_xt, mask)
            mean = tl.sum(x, axis=1) / T
            xc = tl.where(mask, x - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / T + eps)
            a = _act(xc * rstd[:, None], g, h, RELU)
            tl.store(Y + y_row[:, None] + offs0[None, :], a.to(Y.dtype.element_ty), mask=mask)
        else:  # three passes over x: mean, variance, output
            acc = tl.zeros([ROWS, BLOCK_T], tl.float32)
            for t0 in range(0, T, BLOCK_T):
                acc += _tile(X, x_row, t0 + offs0, stride_xt, mask_r[:, None] & (t0 + offs0 < T)[None, :])
            mean = tl.sum(acc, axis=1) / T
            acc = tl.zeros([ROWS, BLOCK_T], tl.float32)
            for t0 in range(0, T, BLOCK_T):
                mask = mask_r[:, None] & (t0 + offs0 < T)[None, :]
                xc = tl.where(mask, _tile(X, x_row, t0 + offs0, stride_xt, mask) - mean[:, None], 0.0)
                acc += xc * xc
            rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=1) / T + eps)
            for t0 in range(0, T, BLOCK_T):
                offs = t0 + offs0
                mask = mask_r[:, None] & (offs < T)[None, :]
                a = _act((_tile(X, x_row, offs, stride_xt, mask) - mean[:, None]) * rstd[:, None], g, h, RELU)
                tl.store(Y + y_row[:, None] + offs[None, :], a.to(Y.dtype.element_ty), mask=mask)
        tl.store(MEAN + rows, mean, mask=mask_r)
        tl.store(RSTD + rows, rstd, mask=mask_r)

    @triton.jit
    def _grad_tile(X, DY, x_row, d_row, offs, mask, stride_xt, stride_dt, mean, rstd, g, h, RELU: tl.constexpr):
        """x_hat and ``da = dy [a > 0]`` of one tile."""
        x_hat = tl.where(mask, (_tile(X, x_row, offs, stride_xt, mask) - mean[:, None]) * rstd[:, None], 0.0)
        da = _tile(DY, d_row, offs, stride_dt, mask)
        if RELU:
            da = tl.where(x_hat * g[:, None] + h[:, None] > 0.0, da, 0.0)
        return x_hat, da

    @triton.jit
    def _dx(x_hat, da, g, ds, dh, rstd, T):
        # dx_hat = da * g, so mean(dx_hat * x_hat) = g * ds / T and mean(dx_hat) = g * dh / T
        return (da * g[:, None] - (x_hat * (g * ds / T)[:, None] + (g * dh / T)[:, None])) * rstd[:, None]

    @triton.jit
    def _norm_act_bwd_kernel(X, DY, S, H, MEAN, RSTD, DX, DS, DH, n_rows, C, T, stride_xb, stride_xc, stride_xt,
                             stride_db, stride_dc, stride_dt, stride_sb, stride_sc, stride_hb, stride_hc,
                             RELU: tl.constexpr, ROWS: tl.constexpr, BLOCK_T: tl.constexpr, ONE_TILE: tl.constexpr):
        """X, DY (B, C, T) any strides, S, H and the forward's MEAN, RSTD as there -> DX (B*C, T) contiguous in X's
        dtype, DS = sum_t da x_hat and DH = sum_t da (B*C,) fp32."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        mask_r = rows < n_rows
        b = (rows // C).to(tl.int64)
        c = (rows % C).to(tl.int64)
        x_row = b * stride_xb + c * stride_xc
        d_row = b * stride_db + c * stride_dc
        o_row = rows.to(tl.int64) * T
        g = 1.0 + tl.load(S + b * stride_sb + c * stride_sc, mask=mask_r, other=0.0).to(tl.float32)
        h = tl.load(H + b * stride_hb + c * stride_hc, mask=mask_r, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=mask_r, other=0.0)
        rstd = tl.load(RSTD + rows, mask=mask_r, other=0.0)
        offs0 = tl.arange(0, BLOCK_T)
        if ONE_TILE:
            mask = mask_r[:, None] & (offs0 < T)[None, :]
            x_hat, da = _grad_tile(X, DY, x_row, d_row, offs0, mask, stride_xt, stride_dt, mean, rstd, g, h, RELU)
            ds = tl.sum(da * x_hat, axis=1)
            dh = tl.sum(da, axis=1)
            dx = _dx(x_hat, da, g, ds, dh, rstd, T)
            tl.store(DX + o_row[:, None] + offs0[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        else:  # two passes: the sums, then dx
            acc_s = tl.zeros([ROWS, BLOCK_T], tl.float32)
            acc_h = tl.zeros([ROWS, BLOCK_T], tl.float32)
            for t0 in range(0, T, BLOCK_T):
                mask = mask_r[:, None] & (t0 + offs0 < T)[None, :]
                x_hat, da = _grad_tile(X, DY, x_row, d_row, t0 + offs0, mask, stride_xt, stride_dt, mean, rstd, g, h,
                                       RELU)
                acc_s += da * x_hat
                acc_h += da
            ds = tl.sum(acc_s, axis=1)
            dh = tl.sum(acc_h, axis=1)
            for t0 in range(0, T, BLOCK_T):
                offs = t0 + offs0
                mask = mask_r[:, None] & (offs < T)[None, :]
                x_hat, da = _grad_tile(X, DY, x_row, d_row, offs, mask, stride_xt, stride_dt, mean, rstd, g, h, RELU)
                dx = _dx(x_hat, da, g, ds, dh, rstd, T)
                tl.store(DX + o_row[:, None] + offs[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        tl.store(DS + rows, ds, mask=mask_r)
        tl.store(DH + rows, dh, mask=mask_r)


MAX_BLOCK_T = 4096  # longer rows are processed in chunks (three passes over x instead of one)
TILE = 2048  # elements per program (ROWS * BLOCK_T) when rows are short: 8 per thread at 8 warps
TILE_INTERPRET = 1 << 15  # the interpreter's cost is per operation: few, large programs


def norm_act_ref(x, scale, shift, *, relu=True, eps=1e-5, upcast=True):
    """Reference through torch ops; ``upcast=False`` computes in x's dtype (the tests' measure of torch's error)."""
    dt = torch.float64 if x.dtype == torch.float64 else (torch.float32 if upcast else x.dtype)
    xf = x.to(dt)
    xc = xf - xf.mean(-1, keepdim=True)
    x_hat = xc * torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)
    s, h = scale.to(dt)[..., None], shift.to(dt)[..., None]   # (C, 1) or (B, C, 1)
    y = (1 + s) * x_hat + h
    return (torch.relu(y) if relu else y).to(x.dtype)


def norm_act_config(T: int) -> dict:
    """ROWS x BLOCK_T tile per program: about TILE elements, whole rows when T <= MAX_BLOCK_T."""
    block_t = min(triton.next_power_of_2(T), MAX_BLOCK_T)
    if INTERPRET:
        return dict(ROWS=max(1, TILE_INTERPRET // block_t), BLOCK_T=block_t, ONE_TILE=T <= block_t)
    rows = max(1, min(128, TILE // block_t))
    num_warps = 8 if rows * block_t >= 2048 else 4  # ptxas: <= 80 registers, no spills (sm_90)
    return dict(ROWS=rows, BLOCK_T=block_t, ONE_TILE=T <= block_t, num_warps=num_warps)


def _param_strides(p: torch.Tensor):
    """(stride over b, stride over c) for a (C,) or (B, C) parameter; (C,) broadcasts over b."""
    return (0, p.stride(0)) if p.dim() == 1 else (p.stride(0), p.stride(1))


class NormActFunction(torch.autograd.Function):
    """Triton forward and backward of ``norm_act`` (grads for x, scale, shift)."""

    @staticmethod
    def forward(ctx, x, scale, shift, relu, eps):
        B, C, T = x.shape
        y = torch.empty((B, C, T), dtype=x.dtype, device=x.device)
        mean, rstd = torch.empty(2, B * C, dtype=torch.float32, device=x.device)
        cfg = norm_act_config(T)
        with device_guard(x):
            _norm_act_fwd_kernel[(triton.cdiv(B * C, cfg["ROWS"]),)](
                x, scale, shift, y, mean, rstd, B * C, C, T,
                *x.stride(), *_param_strides(scale), *_param_strides(shift), eps, RELU=relu, **cfg)
        ctx.save_for_backward(x, scale, shift, mean, rstd)
        ctx.relu = relu
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward through the kernels
    def backward(ctx, dy):
        x, scale, shift, mean, rstd = ctx.saved_tensors
        B, C, T = x.shape
        dx = torch.empty((B, C, T), dtype=x.dtype, device=x.device)
        ds, dh = torch.empty(2, B, C, dtype=torch.float32, device=x.device)
        cfg = norm_act_config(T)
        with device_guard(x):
            _norm_act_bwd_kernel[(triton.cdiv(B * C, cfg["ROWS"]),)](
                x, dy, scale, shift, mean, rstd, dx, ds, dh, B * C, C, T,
                *x.stride(), *dy.stride(), *_param_strides(scale), *_param_strides(shift), RELU=ctx.relu, **cfg)
        if scale.dim() == 1:
            ds, dh = ds.sum(0), dh.sum(0)
        need = ctx.needs_input_grad
        return (dx if need[0] else None, ds.to(scale.dtype) if need[1] else None,
                dh.to(shift.dtype) if need[2] else None, None, None)


def _check(x, scale, shift, eps):
    op = "norm_act"
    check_float(op, "x", x, "(B, C, T)")
    B, C, T = x.shape
    for name, p in (("scale", scale), ("shift", shift)):
        check_float(op, name, p)
        if tuple(p.shape) not in ((C,), (B, C)):
            raise ValueError(f"{op}: {name} must have shape (C,)=({C},) or (B, C)=({B}, {C}) for "
                             f"x of shape {tuple(x.shape)}, got {tuple(p.shape)}")
        if p.device != x.device:
            raise ValueError(f"{op}: {name} is on {p.device} but x is on {x.device}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"{op}: eps must be a positive number, got {eps!r}")


def norm_act(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
             *, relu: bool = True, eps: float = 1e-5, use_triton: bool | None = None) -> torch.Tensor:
    """``relu((1 + scale) * instance_norm_T(x) + shift)``: x (B, C, T) -> (B, C, T); scale/shift (C,) or (B, C)."""
    _check(x, scale, shift, eps)
    if not use_triton_for(x, use_triton, "norm_act"):
        return norm_act_ref(x, scale, shift, relu=relu, eps=eps)
    return NormActFunction.apply(x, scale, shift, bool(relu), float(eps))
