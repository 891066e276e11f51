"""Which path runs, Triton or the torch reference: one rule for every op in ``kernels/``. ``use_triton=False`` or
``MINILISTEN_KERNELS=torch`` -> reference; ``True`` -> Triton or a RuntimeError; ``None`` -> Triton on CUDA (or CPU
under ``TRITON_INTERPRET=1``), but the reference inside torch.compile tracing (Inductor fuses it) and for float64.
"""
from __future__ import annotations

import contextlib
import os

import torch

try:  # triton is optional at runtime (e.g. macOS wheels of torch ship without it)
    import triton

    @triton.jit
    def _probe_kernel(X):  # never launched: its type tells whether triton.jit is interpreted
        pass

    HAS_TRITON = True
    INTERPRET = type(_probe_kernel).__name__ == "InterpretedFunction"
except ImportError:  # pragma: no cover - exercised only where triton is missing
    HAS_TRITON = INTERPRET = False

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_available(t: torch.Tensor) -> bool:
    """True when the Triton path can run on ``t``'s device."""
    return HAS_TRITON and (t.device.type == "cuda" or (t.device.type == "cpu" and INTERPRET))


def use_triton_for(t: torch.Tensor, use_triton: bool | None, op: str) -> bool:
    """Apply the module's rule to tensor ``t`` for ``op``."""
    if use_triton is True:
        if not triton_available(t):
            raise RuntimeError(f"{op}: use_triton=True but Triton cannot run on {t.device} (installed: {HAS_TRITON}; "
                               "it needs CUDA, or CPU with TRITON_INTERPRET=1 set before triton is imported)")
        if t.dtype not in TRITON_DTYPES:
            raise RuntimeError(f"{op}: use_triton=True but the Triton path supports "
                               f"{[str(d) for d in TRITON_DTYPES]}, got {t.dtype}")
        return True
    if use_triton is False or torch.compiler.is_compiling() or t.dtype not in TRITON_DTYPES:
        return False
    return os.environ.get("MINILISTEN_KERNELS", "").strip().lower() != "torch" and triton_available(t)


def check_float(op: str, name: str, t: torch.Tensor, dims: str | None = None) -> None:
    """``t`` is a float tensor; with ``dims`` (e.g. "(N, d)"), a non-empty one of that many dimensions."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must have a floating dtype in {[str(d) for d in FLOAT_DTYPES]}, got {t.dtype}")
    if dims and t.dim() != dims.count(",") + 1:
        raise ValueError(f"{op}: {name} must be {dims.count(',') + 1}-D {dims}, got shape {tuple(t.shape)}")
    if dims and t.numel() == 0:
        raise ValueError(f"{op}: {name} is empty, shape {tuple(t.shape)}; every dim must be >= 1")


def device_guard(t: torch.Tensor):
    """Make ``t``'s GPU current while launching (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
