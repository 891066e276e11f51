"""Shared pytest setup.

Triton kernels run through the Triton interpreter on CPU-only machines: ``TRITON_INTERPRET=1`` must
be set before anything imports triton, so it is set here, first. On a CUDA machine (or with
``MINILISTEN_GPU_TESTS=1``, as ``bench/gpu_check.sh`` sets) it is left alone so the real compiled
kernels run. ``torch.cuda.is_available()`` does not import triton.
"""
import os

import torch

if os.environ.get("MINILISTEN_GPU_TESTS") != "1" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # Model tests (VQ-VAE, demo, ...) use the torch reference on CPU: the interpreter is ~100x
    # slower. Kernel tests ask for the Triton path explicitly (use_triton=True).
    os.environ.setdefault("MINILISTEN_KERNELS", "torch")

torch.set_num_threads(1)  # 2 threads on a loaded 2-core box was 10-50x slower in our measurements


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "compile: uses torch.compile (deselect with -m 'not compile')")
