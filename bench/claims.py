"""The claims matrix: do the paper's two central claims hold on every synthetic world, over seeds?

    python bench/claims.py                       # every variant of CORPORA x seeds 0 1 (~70 min, 2 cores)
    python bench/claims.py --variants small words-only --seeds 0 1 2

For each corpus variant (``minilisten.data.synthetic.CORPORA``) and seed, the demo pipeline runs at
a reduced size (:data:`CLAIMS_SIZES`; the variant's own corpus size) and the benchmark records:

- **Table 5**: validation Rec of the identity-disentangled (IN, AdaIN) vs the naive (∅, ∅) VQ-VAE,
  and the IN/AdaIN model's Rec with swapped beta. Claim: (IN, AdaIN) < (∅, ∅) wherever identity is
  carried by beta (every variant but ``beta-random``, the control).
- **Table 4**: L2 and FD of Naive, MM only, ID only, Full on the test clips. Claim (the paper's
  ordering): Full < ID only and MM only < Naive.

Each claim is reported per seed and as mean ± half-range over seeds, with "holds" when it holds for
every seed. Results go to ``bench/results/claims_<date>.json`` (rewritten after each run, so an
interrupted matrix keeps what it measured) and a Markdown table is printed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: DemoConfig fields for one cell of the matrix: the demo's model sizes, fewer steps.
CLAIMS_SIZES = dict(vq_steps=600, stage1_steps=60, stage2_steps=300, max_test_clips=64, decode_batch=16)


def _ms(xs) -> dict:
    xs = [float(x) for x in xs]
    return {"mean": float(np.mean(xs)), "half_range": float((max(xs) - min(xs)) / 2), "values": xs}


def cell(variant: str, seed: int, sizes: dict, workers: int) -> dict:
    import torch

    from minilisten.data.cli import DataConfig
    from minilisten.demo import DemoConfig, run_demo
    torch.set_num_threads(1)   # as the demo command (run_pipeline leaves the thread count to its caller)
    cfg = DemoConfig(data=DataConfig(corpus=variant, corpus_seed=seed), seed=seed, workers=workers, video=False,
                     **sizes)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rep = run_demo(cfg, d, progress=False)
        secs = time.perf_counter() - t0
    t5 = {("naive" if "naive" in k else "disentangled"): v for k, v in rep["table5"].items()}
    out = {"seconds": round(secs, 1), "notes": rep["notes"],
           "table5": {k: {m: v[m] for m in ("rec", "rec_swap", "ppl")} for k, v in t5.items()},
           "table4": {k: {m: v[m] for m in ("l2", "fd", "lr_acc")} for k, v in rep["table4"].items()}}
    return out


def verdicts(cells: list[dict]) -> dict:
    """Per claim: per-seed truth, mean ± half-range of the margins, and whether it held for every seed."""
    res = {}
    t5 = [c["table5"] for c in cells if "disentangled" in c["table5"]]
    if t5:
        d = [c["disentangled"]["rec"] for c in t5]
        n = [c["naive"]["rec"] for c in t5]
        res["vq_rec_in_adain"] = _ms(d)
        res["vq_rec_naive"] = _ms(n)
        res["vq_rec_swap"] = _ms([c["disentangled"]["rec_swap"] for c in t5])
        res["vq_claim_holds"] = all(a < b for a, b in zip(d, n))
    t4 = [c["table4"] for c in cells]
    for metric in ("l2", "fd"):
        for better, worse in (("Full", "ID only"), ("MM only", "Naive"), ("Full", "Naive")):
            pairs = [(c[better][metric], c[worse][metric]) for c in t4 if better in c and worse in c]
            if pairs and not all(a == b for a, b in pairs):   # rows that are the same model prove nothing
                res[f"{metric}: {better} < {worse}"] = all(a < b for a, b in pairs)
        for row in ("Naive", "MM only", "ID only", "Full"):
            vals = [c[row][metric] for c in t4 if row in c]
            if vals:
                res[f"{metric} {row}"] = _ms(vals)
    return res


def markdown(matrix: dict) -> str:
    head = ("| corpus | Rec (IN, AdaIN) | Rec (∅, ∅) | VQ claim | Rec swapped β | L2 Naive / MM / ID / Full | "
            "L2 Full<ID, MM<Naive | FD Full<ID, MM<Naive |")
    lines = [head, "|" + "---|" * 8]
    fmt = lambda m: f"{m['mean']:.4f} ± {m['half_range']:.4f}"  # noqa: E731
    yn = lambda v: "—" if v is None else ("holds" if v else "**fails**")  # noqa: E731
    for name, r in matrix.items():
        v = r["verdicts"]
        l2 = " / ".join(f"{v[f'l2 {k}']['mean']:.3f}" if f"l2 {k}" in v else "—"
                        for k in ("Naive", "MM only", "ID only", "Full"))
        lines.append(
            f"| {name} | {fmt(v['vq_rec_in_adain']) if 'vq_rec_in_adain' in v else '—'} | "
            f"{fmt(v['vq_rec_naive']) if 'vq_rec_naive' in v else '—'} | {yn(v.get('vq_claim_holds'))} | "
            f"{fmt(v['vq_rec_swap']) if 'vq_rec_swap' in v else '—'} | {l2} | "
            f"{yn(v.get('l2: Full < ID only'))}, {yn(v.get('l2: MM only < Naive'))} | "
            f"{yn(v.get('fd: Full < ID only'))}, {yn(v.get('fd: MM only < Naive'))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from minilisten.data.synthetic import CORPORA
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--workers", type=int, default=2, help="parallel training processes (1 thread each)")
    p.add_argument("--out", help="JSON path (default bench/results/claims_<date>.json)")
    for k, v in CLAIMS_SIZES.items():
        p.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    a = p.parse_args(argv)
    sizes = {k: getattr(a, k) for k in CLAIMS_SIZES}
    out = Path(a.out or ROOT / "bench" / "results" / f"claims_{dt.date.today():%Y%m%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    matrix: dict = {}
    t_all = time.perf_counter()
    from tqdm.auto import tqdm
    bar = tqdm(total=len(a.variants) * len(a.seeds), desc="claims matrix", dynamic_ncols=True)
    for name in a.variants:
        cells = {}
        for seed in a.seeds:
            cells[seed] = cell(name, seed, sizes, a.workers)
            bar.update()
            matrix[name] = {"cells": cells, "verdicts": verdicts(list(cells.values()))}
            report = {"command": "python bench/claims.py " + " ".join(sys.argv[1:] if argv is None else argv),
                      "date": dt.datetime.now().isoformat(timespec="seconds"), "sizes": sizes, "seeds": a.seeds,
                      "machine": {"cpu": platform.processor() or platform.machine(),
                                  "python": platform.python_version()},
                      "seconds": round(time.perf_counter() - t_all, 1), "matrix": matrix}
            out.write_text(json.dumps(report, indent=1, default=float))
    bar.close()
    print(markdown(matrix))
    print(f"\nwrote {out} ({time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
