"""Kernel benchmark from a source checkout: ``python bench/bench_kernels.py [--quick] [--aot 90,80] ...``.

A thin script around :mod:`minilisten.bench_kernels` (``python -m minilisten.bench_kernels`` from an
install); here the results go to ``bench/results`` unless ``--out`` says otherwise.
"""
import sys
from pathlib import Path

from minilisten.bench_kernels import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(Path(__file__).resolve().parent / "results")]
    sys.exit(main(argv))
