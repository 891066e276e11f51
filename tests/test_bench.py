"""minilisten.bench's ARIG rows: structure and the ratios against hand-built numbers (no timing asserts)."""
import numpy as np
import pytest
import torch

from minilisten.arig import ARIG, ARIGConfig
from minilisten.bench import arig_vs_lr, bench_arig, format_arig_table


def test_bench_arig_rows_and_ratios():
    torch.manual_seed(0)
    m = ARIG(ARIGConfig(d_model=16, n_head=2, d_ff=32, window=6, diff_width=16, word_buckets=64, n_sa=32)).eval()
    rows = bench_arig("cpu", batches=(1, 3), steps=(2, 4), frames=4, recompute_frames=2, reps=1, model=m,
                      progress=lambda s: None)
    assert [(r["batch"], r["sample_steps"], r["method"]) for r in rows] == [
        (b, s, meth) for b in (1, 3) for s in (2, 4) for meth in ("ARIG cached step", "ARIG recompute window")]
    for cached, recomp in zip(rows[::2], rows[1::2]):
        assert cached["frames_timed"] == 4 and recomp["frames_timed"] == 2
        for r in (cached, recomp):
            assert r["fps"] == pytest.approx(r["batch"] * 1e3 / r["p50_ms"])
            assert r["p95_ms"] >= r["p50_ms"] > 0 and r["config"]["window"] == 6
        assert cached["speedup_vs_recompute"] == pytest.approx(recomp["p50_ms"] / cached["p50_ms"])
        assert recomp["speedup_vs_recompute"] == pytest.approx(1.0)
    # ratios to the LR-token rows of the same run: hand-built rows (LR FPS 800 at batch 1, 1600 at batch 3)
    decode = [dict(scenario="window", batch=1, method="(c) ours-eager", fps=800.0),
              dict(scenario="long", batch=1, method="(c) ours-eager", fps=1.0),
              dict(scenario="window", batch=3, method="(d) ours-compiled", fps=1600.0)]
    arig_vs_lr(rows, decode, dict(median_ms=10.0))   # streaming: 8 frames per 10 ms = 800 FPS
    for r in rows:
        if r["batch"] == 1:
            assert r["fps_vs_lr"] == {"(c) ours-eager": pytest.approx(r["fps"] / 800.0)}
            assert r["fps_vs_lr_streaming"] == pytest.approx(r["fps"] / 800.0)
        else:
            assert r["fps_vs_lr"] == {"(d) ours-compiled": pytest.approx(r["fps"] / 1600.0)}
            assert "fps_vs_lr_streaming" not in r
    table = format_arig_table(rows)
    assert table.count("\n") == len(rows) + 1 and "vs (c)" in table and "vs (d)" in table
    assert np.isfinite([r["fps"] for r in rows]).all()
