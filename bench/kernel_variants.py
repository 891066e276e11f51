"""The kernel benchmark with more nearest-code providers (CUDA): tf32x3 precision, the unfused EMA histogram
(``code_stats``: what fusing it could save at most) and other tilings than ``nearest_code_config``'s, to check it.

    python bench/kernel_variants.py [--full] [--out bench/results]
"""
import argparse
import datetime
import json
from pathlib import Path

import torch

from minilisten.bench import KERNEL_COLS, bench_kernels, environment, table
from minilisten.kernels import nearest_code as NC

TILINGS = {torch.float32: [(64, 64, 16, 4), (64, 64, 32, 4), (128, 64, 32, 8)],   # (BLOCK_N, K, D, warps)
           torch.bfloat16: [(64, 128, 64, 4), (128, 64, 64, 4), (64, 64, 64, 4)]}


def variants(z, cb):
    p = {"triton+stats": lambda: NC.code_stats(NC.quantize(z, cb, use_triton=True)[0], z, cb.shape[0])}
    if z.dtype == torch.float32:
        p["triton-tf32x3"] = lambda: NC.quantize(z, cb, use_triton=True, precision="tf32x3")
    for bn, bk, bd, w in TILINGS[z.dtype]:
        c = dict(BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd, num_warps=w, num_stages=3)
        p[f"triton[{bn}/{bk}/{bd}/{w}]"] = lambda c=c: NC._nearest_code_triton(z, cb, "ieee", True, config=c)
    return p


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="all sizes (default: the quick ones)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernel_variants.py: the Triton variants need a CUDA GPU")
    device = torch.device("cuda")
    rows = bench_kernels(device, quick=not args.full, variants=variants)
    print(table(rows, KERNEL_COLS))
    path = Path(args.out) / f"kernel_variants_{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(dict(env=environment(device), rows=rows), indent=1))
    print(f"# wrote {path}")
