"""Triton kernels vs their torch references (CPU: Triton interpreter via conftest; GPU: compiled).

Tolerances: fp32 explicit atol/rtol; bf16 by the flash-attention rule
``max|out - ref_fp32| <= 2 * max|out_torch_bf16 - ref_fp32| + atol`` (torch's own bf16 error).
"""
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minilisten.kernels import dispatch
from minilisten.kernels import nearest_code as NC
from minilisten.kernels import norm_act as NA

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = dispatch.triton_available(torch.empty(0, device=DEV))
needs_triton = pytest.mark.skipif(not TRITON, reason="Triton path unavailable (no CUDA, no interpreter)")
HYP = dict(deadline=None, derandomize=True, database=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _examples(n_cpu: int) -> int:
    # on CUDA most new shapes compile a new kernel specialization (~1 s each): fewer examples
    return n_cpu if DEV == "cpu" else max(8, n_cpu // 2)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(shape, dtype, seed, scale=1.0, layout="contiguous"):
    """Random tensor on DEV; layout "strided" gives a non-unit last stride, "transposed" a
    column-major view (both non-contiguous)."""
    g = _gen(seed)
    if layout == "strided":
        t = torch.randn(*shape[:-1], 2 * shape[-1], generator=g)[..., ::2]
    elif layout == "transposed":
        t = torch.randn(*reversed(shape), generator=g).permute(*reversed(range(len(shape))))
    else:
        t = torch.randn(*shape, generator=g)
    return (t * scale).to(device=DEV, dtype=dtype)


def _flash_rule(out, ref32, out_torch, what):
    err = (out.double() - ref32.double()).abs().max().item()
    torch_err = (out_torch.double() - ref32.double()).abs().max().item()
    atol = 2.0 ** -8 * max(1.0, ref32.abs().max().item())
    assert err <= 2 * torch_err + atol, f"{what}: err {err:.3g} > 2 * torch err {torch_err:.3g} + {atol:.3g}"


# ================================================================================================
# nearest_code / quantize


def _check_nearest(z, cb, idx, dist, zq=None, rel=1e-5):
    """Chosen code is a true minimizer (fp64, up to the fp32 rounding of ||c||^2 - 2 z.c), dist is
    its exact distance, z_q its row; away from near-ties the index equals torch.argmin's."""
    z64, c64 = z.double().cpu(), cb.double().cpu()
    d64 = (z64 ** 2).sum(1)[:, None] - 2 * z64 @ c64.t() + (c64 ** 2).sum(1)[None]  # (N, K), fp64
    idx, dist = idx.cpu(), dist.cpu()
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32
    assert idx.shape == (z.shape[0],) and dist.shape == (z.shape[0],)
    assert int(idx.min()) >= 0 and int(idx.max()) < cb.shape[0]
    tol = rel * ((z64 ** 2).sum(1) + (c64 ** 2).sum(1).max()) + 1e-6  # cancellation scale
    chosen = d64.gather(1, idx[:, None])[:, 0]
    best, best_idx = d64.min(1)
    assert torch.all(chosen <= best + tol), (chosen - best - tol).max()
    if cb.shape[0] > 1:  # rows whose runner-up is clearly farther: the index itself must match
        clear = d64.sort(1).values[:, 1] - best > 2 * tol
    else:
        clear = torch.ones_like(best, dtype=torch.bool)
    assert torch.equal(idx[clear], best_idx[clear])
    torch.testing.assert_close(dist.double(), chosen, atol=1e-5, rtol=1e-5)
    if zq is not None:
        assert zq.dtype == cb.dtype and torch.equal(zq.cpu(), cb.cpu()[idx])


@needs_triton
@settings(max_examples=_examples(20), **HYP)
@given(N=st.integers(1, 300), Kc=st.integers(1, 300), d=st.integers(1, 96),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       layout=st.sampled_from(["contiguous", "strided", "transposed"]),
       dup=st.booleans(), with_zq=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_quantize_matches_reference(N, Kc, d, dtype, layout, dup, with_zq, seed):
    z = _rand((N, d), dtype, seed, layout=layout)
    cb = _rand((Kc, d), dtype, seed + 1, layout="contiguous" if layout == "strided" else layout)
    if dup and Kc > 1:  # exact duplicate codes: the lower index must win
        cb = cb.clone()
        cb[Kc - 1] = cb[Kc // 3]
    if with_zq:
        idx, dist, zq = NC.quantize(z, cb, use_triton=True)
    else:
        (idx, dist), zq = NC.nearest_code(z, cb, use_triton=True), None
    _check_nearest(z, cb, idx, dist, zq)
    ir, dr, _ = NC.quantize(z, cb, use_triton=False)
    _check_nearest(z, cb, ir, dr)
    if dup and Kc > 1:
        assert not (idx == Kc - 1).any() and not (ir == Kc - 1).any()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_triton", [True, False])
def test_ties_resolve_to_lowest_index(dtype, use_triton):
    # small integers: every distance is exact in fp32, so the ties below are exact
    g = _gen(0)
    Kc, d = 200, 24  # several K tiles
    cb = torch.randint(-3, 4, (Kc, d), generator=g).to(DEV, dtype)
    cb[77] = cb[5]
    cb[150] = cb[5]  # duplicates of code 5 in later tiles
    cb[199] = cb[120]
    z = torch.cat([cb[[5, 77, 150, 120, 199]], torch.zeros(1, d, device=DEV, dtype=dtype)])
    idx, dist, zq = NC.quantize(z, cb, use_triton=use_triton)
    expect = ((z.double()[:, None] - cb.double()[None]) ** 2).sum(-1).argmin(1)  # lowest index
    assert NC.nearest_code_config(len(z), Kc, d, dtype, z.device)["BLOCK_K"] < 150  # crosses tiles
    assert idx[:5].tolist() == [5, 5, 5, 120, 120]
    assert torch.equal(idx.cpu(), expect.cpu())
    assert torch.equal(dist[:5].cpu(), torch.zeros(5))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nearest_small_blocks_many_tiles(dtype):
    # the smallest legal tiles: 4 programs x 5 code tiles x 3 feature steps, all with masked tails
    z, cb = _rand((50, 40), dtype, 30), _rand((70, 40), dtype, 31)
    cb[65] = cb[3]  # a duplicate four tiles later
    z[7] = cb[3]
    cfg = dict(BLOCK_N=16, BLOCK_K=16, BLOCK_D=16)
    idx, dist, zq = NC._nearest_code_triton(z, cb, "ieee", True, config=cfg)
    _check_nearest(z, cb, idx, dist, zq)
    assert idx[7].item() == 3


@needs_triton
def test_precision_modes_and_single_code():
    z, cb = _rand((50, 33), torch.float32, 1), _rand((70, 33), torch.float32, 2)
    for p in NC.PRECISIONS:
        idx, dist = NC.nearest_code(z, cb, use_triton=True, precision=p)
        _check_nearest(z, cb, idx, dist, rel=1e-5 if p != "tf32" else 2e-3)
    idx, dist = NC.nearest_code(z, cb[:1], use_triton=True)
    assert torch.equal(idx.cpu(), torch.zeros(50, dtype=torch.int64))


def _nearest_grads(z, cb, use_triton, gd, gq):
    z = z.detach().requires_grad_()
    cb = cb.detach().requires_grad_()
    _, dist, zq = NC.quantize(z, cb, use_triton=use_triton)
    torch.autograd.backward([dist, zq], [gd, gq])
    return dist, zq, z.grad, cb.grad


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_backward_matches_reference(dtype):
    z, cb = _rand((120, 20), dtype, 3), _rand((40, 20), dtype, 4)
    gd, gq = _rand((120,), torch.float32, 5), _rand((120, 20), dtype, 6)
    out_t = _nearest_grads(z, cb, True, gd, gq)
    out_r = _nearest_grads(z, cb, False, gd, gq)
    names = ["dist", "z_q", "grad z", "grad codebook"]
    for a, b, name in zip(out_t, out_r, names):
        assert a.dtype == b.dtype and a.shape == b.shape, name
    if dtype == torch.float32:
        for a, b, name in zip(out_t, out_r, names):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    else:  # the bf16 reference accumulates the z_q gradient in bf16: compare both to fp32
        out_32 = _nearest_grads(z.float(), cb.float(), False, gd, gq.float())
        for a, b, c, name in zip(out_t, out_32, out_r, names):
            _flash_rule(a, b, c, name)


def test_quantize_gradcheck_reference():
    z = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    cb = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: NC.quantize(a, b)[1:], (z, cb))


@needs_triton
def test_quantize_gradcheck_triton_fp32_finite_differences():
    # the Triton backward against central differences of the Triton forward (fp32, small eps)
    z, cb = _rand((40, 6), torch.float32, 7), _rand((5, 6), torch.float32, 8)
    z.requires_grad_()
    _, dist, _ = NC.quantize(z, cb, use_triton=True)
    (gz,) = torch.autograd.grad(dist.sum(), z)
    eps = 1e-2
    num = torch.zeros_like(z)
    for j in range(z.shape[1]):  # rows are independent: perturb one column of every row at once
        zp, zm = z.detach().clone(), z.detach().clone()
        zp[:, j] += eps
        zm[:, j] -= eps
        num[:, j] = (NC.quantize(zp, cb, use_triton=True)[1]
                     - NC.quantize(zm, cb, use_triton=True)[1]) / (2 * eps)
    torch.testing.assert_close(gz, num, atol=2e-3, rtol=2e-3)


@needs_triton
def test_code_stats():
    z = _rand((300, 7), torch.bfloat16, 9)
    cb = _rand((13, 7), torch.bfloat16, 10)
    idx, _, _ = NC.quantize(z, cb)
    counts, sums = NC.code_stats(idx, z, 13)
    onehot = torch.nn.functional.one_hot(idx, 13).float()
    torch.testing.assert_close(counts, onehot.sum(0))
    torch.testing.assert_close(sums, onehot.t() @ z.float(), atol=1e-4, rtol=1e-5)
    with pytest.raises(TypeError, match="idx"):
        NC.code_stats(idx.int(), z, 13)
    with pytest.raises(ValueError, match="N = len"):
        NC.code_stats(idx[:-1], z, 13)
    with pytest.raises(ValueError, match="K must be"):
        NC.code_stats(idx, z, 0)


@pytest.mark.parametrize("use_triton", [None, False])
@pytest.mark.parametrize("fn", [NC.nearest_code, NC.quantize])
def test_nearest_code_bad_input(fn, use_triton):
    z, cb = torch.randn(4, 8), torch.randn(6, 8)
    cases = [
        ((z, torch.randn(6, 7)), ValueError, "codebook has d=7 but z has d=8"),
        ((torch.randn(0, 8), cb), ValueError, "z is empty"),
        ((z, torch.randn(0, 8)), ValueError, "codebook is empty"),
        ((torch.randn(4, 0), torch.randn(6, 0)), ValueError, "is empty"),
        ((torch.randn(8), cb), ValueError, r"z must be 2-D \(N, d\), got shape \(8,\)"),
        ((torch.randn(2, 4, 8), cb), ValueError, "z must be 2-D"),
        ((z, torch.randn(1, 6, 8)), ValueError, "codebook must be 2-D"),
        ((torch.ones(4, 8, dtype=torch.int64), cb), TypeError, "z must have a floating dtype"),
        ((z, torch.ones(6, 8, dtype=torch.int32)), TypeError, "codebook must have a floating dtype"),
        ((z.bfloat16(), cb), TypeError, "share a dtype"),
        (([[0.0] * 8], cb), TypeError, "z must be a torch.Tensor"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn(*args, use_triton=use_triton)
    with pytest.raises(ValueError, match="precision must be one of"):
        fn(z, cb, use_triton=use_triton, precision="fp8")


# ================================================================================================
# norm_act


def _norm_case(B, C, T, dtype, ada, seed, layout="contiguous"):
    x = _rand((B, C, T), dtype, seed, scale=3.0, layout=layout) + 0.5
    pshape = (B, C) if ada else (C,)
    scale = _rand(pshape, torch.float32, seed + 1, scale=0.5)
    shift = _rand(pshape, torch.float32, seed + 2, scale=0.5)
    dy = _rand((B, C, T), dtype, seed + 4)
    return x, scale, shift, dy


def _norm_run(x, scale, shift, dy, relu, use_triton=None, upcast=True, as_fp32=False):
    """Output and grads (x, scale, shift) of one path. ``as_fp32``: fp32 reference on upcast
    inputs; ``upcast=False``: the reference computed in x's dtype (torch's own error)."""
    cast = (lambda t: t.float()) if as_fp32 else (lambda t: t)
    leaves = [cast(x).detach().requires_grad_(), scale.detach().requires_grad_(),
              shift.detach().requires_grad_()]
    if upcast:
        y = NA.norm_act(*leaves, relu=relu, use_triton=use_triton)
    else:
        y = NA.norm_act_ref(*leaves, relu=relu, upcast=False)
    grads = torch.autograd.grad(y, leaves, cast(dy))
    return [y, *grads]


def _compare_norm(x, scale, shift, dy, relu, what=""):
    out = _norm_run(x, scale, shift, dy, relu, use_triton=True)
    names = ["y", "dx", "dscale", "dshift"]
    assert out[0].dtype == x.dtype and out[0].shape == x.shape and out[1].dtype == x.dtype
    assert out[2].dtype == scale.dtype and out[2].shape == scale.shape
    if x.dtype == torch.float32:
        ref = _norm_run(x, scale, shift, dy, relu, use_triton=False)
        for a, b, n in zip(out, ref, names):
            T = x.shape[-1]
            tol = 1e-5 * max(1.0, T ** 0.5) if n in ("dscale", "dshift") else 1e-5
            torch.testing.assert_close(a, b, atol=tol, rtol=1e-5, msg=f"{what} {n}")
    else:
        ref32 = _norm_run(x, scale, shift, dy, relu, use_triton=False, as_fp32=True)
        low = _norm_run(x, scale, shift, dy, relu, upcast=False)
        for a, b, c, n in zip(out, ref32, low, names):
            _flash_rule(a, b, c, f"{what} {n}")


@needs_triton
@settings(max_examples=_examples(25), **HYP)
@given(B=st.integers(1, 4), C=st.integers(1, 12), T=st.integers(1, 300),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), ada=st.booleans(), relu=st.booleans(),
       layout=st.sampled_from(["contiguous", "strided", "transposed"]), seed=st.integers(0, 2 ** 16))
def test_norm_act_matches_reference(B, C, T, dtype, ada, relu, layout, seed):
    _compare_norm(*_norm_case(B, C, T, dtype, ada, seed, layout), relu, f"{B, C, T}")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,max_block", [
    ((2, 3, 200), 64),  # chunked path: 4 chunks, last one partial
    ((3, 5, 128), 64),  # chunked path, two full chunks
    ((1, 2, 4099), 4096),  # the real MAX_BLOCK_T, one element past it
])
def test_norm_act_long_rows_chunked(dtype, shape, max_block):
    with mock.patch.object(NA, "MAX_BLOCK_T", max_block):
        assert not NA.norm_act_config(shape[-1])["ONE_TILE"]
        _compare_norm(*_norm_case(*shape, dtype, True, 11), True, f"chunked {shape}")


@needs_triton
def test_norm_act_many_programs():
    # tiny tiles: 11 programs of 2 rows, the last one half empty
    with mock.patch.object(NA, "TILE", 64), mock.patch.object(NA, "TILE_INTERPRET", 64):
        assert NA.norm_act_config(20)["ROWS"] == 2
        for ada in (True, False):
            _compare_norm(*_norm_case(3, 7, 20, torch.float32, ada, 15), True, "many programs")


@pytest.mark.parametrize("use_triton", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_act_T1_edge(use_triton, dtype):
    if use_triton and not TRITON:
        pytest.skip("Triton path unavailable")
    # T = 1: var = 0 -> x_hat = 0, y = relu(shift), and dx = 0
    x, scale, shift, dy = _norm_case(3, 4, 1, dtype, True, 12)
    y, dx, ds, dh = _norm_run(x, scale, shift, dy, True, use_triton=use_triton)
    expect = torch.relu(shift)[..., None].to(dtype)
    # bf16: one ulp (the Triton interpreter truncates fp32 -> bf16 where the GPU rounds to nearest)
    rtol = 0 if dtype == torch.float32 else 2.0 ** -7
    torch.testing.assert_close(y, expect, atol=0, rtol=rtol)
    assert torch.equal(dx, torch.zeros_like(dx)) and torch.equal(ds, torch.zeros_like(ds))
    torch.testing.assert_close(dh, (dy.float()[..., 0] * (shift > 0)), atol=0, rtol=0)


def test_norm_act_gradcheck_reference():
    g = _gen(13)
    for pshape in [(5,), (2, 5)]:
        x = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
        s = (0.5 * torch.randn(pshape, generator=g, dtype=torch.float64)).requires_grad_()
        h = (0.5 * torch.randn(pshape, generator=g, dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(lambda *a: NA.norm_act(*a), (x, s, h))
        assert torch.autograd.gradgradcheck(lambda *a: NA.norm_act(*a, relu=False), (x, s, h))


@needs_triton
def test_norm_act_triton_fp32_finite_differences():
    # the Triton backward against central differences of the Triton forward (fp32)
    x, scale, shift, _ = _norm_case(1, 2, 5, torch.float32, True, 14)
    x.requires_grad_()
    (gx,) = torch.autograd.grad(NA.norm_act(x, scale, shift, relu=False, use_triton=True).pow(2).sum(), x)
    num = torch.zeros_like(x)
    eps = 1e-2
    for idx in range(x.numel()):
        xp, xm = x.detach().clone().view(-1), x.detach().clone().view(-1)
        xp[idx] += eps
        xm[idx] -= eps
        f = lambda t: NA.norm_act(t.view_as(x), scale, shift, relu=False, use_triton=True).pow(2).sum()
        num.view(-1)[idx] = (f(xp) - f(xm)) / (2 * eps)
    torch.testing.assert_close(gx, num, atol=2e-2, rtol=2e-2)
    # the Triton backward is not differentiable again: double backward must fail loudly
    y = NA.norm_act(x, scale, shift, use_triton=True)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        g.sum().backward()


@pytest.mark.parametrize("use_triton", [None, False])
def test_norm_act_bad_input(use_triton):
    x, s = torch.randn(2, 3, 5), torch.randn(3)
    cases = [
        ((torch.randn(3, 5), s, s), {}, ValueError, r"x must be 3-D \(B, C, T\), got shape \(3, 5\)"),
        ((torch.randn(1, 2, 3, 5), s, s), {}, ValueError, "x must be 3-D"),
        ((torch.randn(2, 3, 0), s, s), {}, ValueError, "x is empty"),
        ((torch.randn(0, 3, 5), s, s), {}, ValueError, "x is empty"),
        ((x, torch.randn(4), s), {}, ValueError, r"scale must have shape \(C,\)=\(3,\) or \(B, C\)=\(2, 3\)"),
        ((x, s, torch.randn(3, 2)), {}, ValueError, "shift must have shape"),
        ((x, torch.randn(2, 3, 1), s), {}, ValueError, "scale must have shape"),
        # no fused residual: a 4th positional argument (the old residual slot) is an error,
        # never silently taken as relu
        ((x, s, s, torch.randn(2, 3, 5)), {}, TypeError, "positional argument"),
        ((x.long(), s, s), {}, TypeError, "x must have a floating dtype"),
        ((x, s.int(), s), {}, TypeError, "scale must have a floating dtype"),
        ((x, s, s), {"eps": 0.0}, ValueError, "eps must be a positive number"),
    ]
    for args, kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            NA.norm_act(*args, **kw, use_triton=use_triton)


# ================================================================================================
# dispatch


@needs_triton
def test_dispatch_rule(monkeypatch):
    monkeypatch.delenv("MINILISTEN_KERNELS", raising=False)  # conftest sets it for model tests
    z = _rand((10, 4), torch.float32, 0).requires_grad_()
    cb = _rand((6, 4), torch.float32, 1)
    x, s, h, _ = _norm_case(2, 3, 8, torch.float32, False, 2)
    x.requires_grad_()
    path = lambda t: "triton" if "Function" in type(t.grad_fn).__name__ else "torch"
    assert path(NC.nearest_code(z, cb)[1]) == "triton" and path(NA.norm_act(x, s, h)) == "triton"
    assert path(NC.nearest_code(z, cb, use_triton=False)[1]) == "torch"
    assert path(NA.norm_act(x, s, h, use_triton=False)) == "torch"
    monkeypatch.setenv("MINILISTEN_KERNELS", "torch")
    assert path(NC.quantize(z, cb)[1]) == "torch" and path(NA.norm_act(x, s, h)) == "torch"
    assert path(NA.norm_act(x, s, h, use_triton=True)) == "triton"  # the explicit argument wins
    monkeypatch.delenv("MINILISTEN_KERNELS")
    # float64 always runs the reference; forcing Triton on it is an error
    assert path(NA.norm_act(x.double(), s.double(), h.double())) == "torch"
    with pytest.raises(RuntimeError, match="supports"):
        NC.nearest_code(z.double(), cb.double(), use_triton=True)


def test_dispatch_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(dispatch, "INTERPRET", False)
    x = torch.randn(2, 3, 4)
    assert not dispatch.triton_available(x)
    with pytest.raises(RuntimeError, match="use_triton=True but"):
        NA.norm_act(x, torch.zeros(3), torch.zeros(3), use_triton=True)
    torch.testing.assert_close(NA.norm_act(x, torch.zeros(3), torch.zeros(3)),
                               NA.norm_act_ref(x, torch.zeros(3), torch.zeros(3)))


@pytest.mark.compile
def test_compile_traces_reference():
    # inside torch.compile the reference is traced (no graph break): Inductor fuses it itself
    x, s, h, _ = _norm_case(2, 3, 8, torch.float32, True, 3)
    z, cb = _rand((10, 4), torch.float32, 0), _rand((6, 4), torch.float32, 1)
    f = torch.compile(lambda *a: NA.norm_act(*a), backend="eager", fullgraph=True)
    torch.testing.assert_close(f(x, s, h), NA.norm_act_ref(x, s, h))
    q = torch.compile(lambda a, b: NC.quantize(a, b), backend="eager", fullgraph=True)
    assert torch.equal(q(z, cb)[0], NC.quantize_ref(z, cb)[0])


# ================================================================================================
# GPU compiler without a GPU: what the interpreter tolerates but the compiler rejects


def test_kernels_compile_for_sm90():
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).resolve().parents[1] / "bench" / "aot_check.py"
    out = subprocess.run([sys.executable, str(script), "90"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("sm_90")]
    assert len(lines) == 6 and all(" regs " in ln for ln in lines), out.stdout


# ================================================================================================
# GPU only: the paper's sizes exercise the large block configurations (wgmma / mma paths)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,precision", [(torch.float32, "ieee"), (torch.float32, "tf32x3"),
                                             (torch.bfloat16, None)])
@pytest.mark.parametrize("N,Kc", [(8192, 256), (20000, 1024)])
def test_cuda_paper_sizes_nearest(dtype, precision, N, Kc):
    z, cb = _rand((N, 512), dtype, 20), _rand((Kc, 512), dtype, 21)
    idx, dist, zq = NC.quantize(z, cb, precision=precision)
    # fp64 check on a subset of rows (the full (N, K, d) difference tensor is too big)
    rows = torch.arange(0, N, 97, device=DEV)
    rel = 1e-5 if precision != "tf32x3" else 1e-4
    _check_nearest(z[rows], cb, idx[rows], dist[rows], zq[rows], rel=rel)
    ir, _ = NC.nearest_code(z, cb, use_triton=False)
    assert (idx == ir).float().mean().item() > 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [30, 240, 5000])
def test_cuda_paper_sizes_norm(dtype, T):
    B = 64 if T <= 240 else 2
    _compare_norm(*_norm_case(B, 512, T, dtype, True, 22), True, f"cuda T={T}")


# --- the top-level name `kernels` ------------------------------------------------------------
# From a checkout's root (python -m ..., python -m pytest) the repository root is on sys.path, so
# `import kernels` finds our kernels/ directory. transformers >= 5.25 imports Hugging Face's
# `kernels` package under that name; ours must step aside for it, and never pose as it.

def _import_kernels_from_root(*flags, pythonpath=None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    code = "import kernels; print(kernels.CUDAProperties, kernels.__file__)"
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_checkout_kernels_dir_steps_aside_for_another_installed_kernels(tmp_path):
    other = tmp_path / "site" / "kernels"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("from .props import CUDAProperties\n")
    (other / "props.py").write_text("CUDAProperties = 'the-other-kernels'\n")
    r = _import_kernels_from_root(pythonpath=tmp_path / "site")   # '' (the root) comes first
    assert r.returncode == 0, r.stderr
    name, path = r.stdout.split()
    assert name == "the-other-kernels" and path == str(other / "__init__.py")


def test_checkout_kernels_dir_is_not_importable_as_kernels():
    r = _import_kernels_from_root("-S")                            # no site-packages: no other
    assert r.returncode != 0
    assert "ModuleNotFoundError: No module named 'kernels'" in r.stderr
    assert "importable only as minilisten.kernels" in r.stderr
