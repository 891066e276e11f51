"""Triton kernels with plain PyTorch references (installed as ``minilisten.kernels``).

Public API (the rest of minilisten calls only these; which path runs is decided here):
- ``nearest_code(z (N, d), codebook (K, d)) -> (idx (N,) int64, dist (N,) fp32)``
- ``quantize(z (N, d), codebook (K, d)) -> (idx, dist, z_q (N, d))``
- ``norm_act(x (B, C, T), scale, shift, *, relu=True, eps=1e-5) -> (B, C, T)``:
  instance norm over T, then ``(1 + scale) * x_hat + shift`` with scale/shift of shape (C,)
  (learned IN affine) or (B, C) (AdaIN from beta), then ReLU.
- ``code_stats(idx (N,), z (N, d), K) -> (counts (K,), sums (K, d))``: the batch histogram and
  per-code sums that the EMA codebook update needs (fp32).

Dispatch (``dispatch.py``): the Triton path runs on CUDA tensors, and on CPU when
``TRITON_INTERPRET=1`` was set before triton was imported (tests); the torch reference runs
otherwise, or everywhere when ``MINILISTEN_KERNELS=torch`` is set or ``use_triton=False`` is
passed; ``use_triton=True`` forces Triton (error if it cannot run). float64 inputs and code traced
by ``torch.compile`` always take the reference. Both paths have the same autograd semantics.
Each op file holds its Triton kernels, its torch reference (``*_ref``) and its autograd.Function.
"""
if __name__ == "kernels":
    # Imported under the top-level name `kernels`: a checkout's root is on sys.path (`python -m`
    # from the repository) and this directory shadows Hugging Face's `kernels` package, which
    # transformers >= 5.25 imports. This directory is only ever minilisten.kernels, so step aside:
    # load whichever other `kernels` is installed in our place, or fail as if none were found.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _spec = _machinery.PathFinder.find_spec(
        "kernels", [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _root])
    if _spec is None:
        raise ModuleNotFoundError(f"No module named 'kernels' ({_os.path.dirname(__file__)} is "
                                  "minilisten's kernels, importable only as minilisten.kernels)",
                                  name="kernels")
    _module = _util.module_from_spec(_spec)
    _sys.modules["kernels"] = _module        # `import kernels` returns what sys.modules holds
    _spec.loader.exec_module(_module)
else:
    from .dispatch import triton_available
    from .nearest_code import code_stats, nearest_code, nearest_code_ref, quantize, quantize_ref
    from .norm_act import norm_act, norm_act_ref

    __all__ = ["nearest_code", "quantize", "norm_act", "code_stats", "triton_available",
               "nearest_code_ref", "quantize_ref", "norm_act_ref"]
