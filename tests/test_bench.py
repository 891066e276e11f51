"""minilisten.bench's ARIG rows: structure and the ratios against hand-built numbers (no timing asserts)."""
import numpy as np
import pytest
import torch

from minilisten.arig import ARIG, ARIGConfig
from minilisten.bench import arig_vs_lr, bench_arig, format_arig_table


def test_bench_arig_rows_and_ratios(monkeypatch):
    import minilisten.arig as arig
    # the rows' structure, not torch.compile (tests/test_arig.py compiles decode_frame): the eager function
    monkeypatch.setattr(arig, "compiled_decode_frame", lambda device_type: arig.decode_frame)
    torch.manual_seed(0)
    m = ARIG(ARIGConfig(d_model=16, n_head=2, d_ff=32, window=6, diff_width=16, word_buckets=64, n_sa=32)).eval()
    rows = bench_arig("cpu", batches=(1, 3), steps=(2, 4), frames=4, recompute_frames=2, reps=1, model=m,
                      progress=lambda s: None, compile_batches=(1,))   # compiled rows at batch 1 only
    want = {1: ("ARIG cached step", "ARIG cached, compiled", "ARIG recompute window"),
            3: ("ARIG cached step", "ARIG recompute window")}
    assert [(r["batch"], r["sample_steps"], r["method"]) for r in rows] == [
        (b, s, meth) for b in (1, 3) for s in (2, 4) for meth in want[b]]
    for b, s in [(b, s) for b in (1, 3) for s in (2, 4)]:
        group = [r for r in rows if (r["batch"], r["sample_steps"]) == (b, s)]
        recomp = group[-1]
        assert recomp["frames_timed"] == 2 and recomp["speedup_vs_recompute"] == pytest.approx(1.0)
        for r in group:
            assert r["fps"] == pytest.approx(r["batch"] * 1e3 / r["p50_ms"])
            assert r["p95_ms"] >= r["p50_ms"] > 0 and r["config"]["window"] == 6
        for r in group[:-1]:
            assert r["frames_timed"] == 4
            assert r["speedup_vs_recompute"] == pytest.approx(recomp["p50_ms"] / r["p50_ms"])
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
