"""minilisten.bench against hand-computed numbers: a fake clock that only the fake workloads move, so every time,
FPS and ratio below is known in advance (no timing asserts on the real machine)."""
import pytest
import torch
from conftest import tiny_lm

import minilisten.arig as arig
import minilisten.bench as bench
import minilisten.generate as generate
from minilisten.arig import ARIG, ARIGConfig


class Clock:
    """A fake ``perf_counter``: time moves only by ``spend``."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def spend(self, seconds):
        self.t += seconds


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(bench, "perf_counter", c)
    return c


def test_interleaved_times_each_call_after_a_warm_up_round(clock):
    spent = {"slow": iter([9.0, 0.5, 0.3, 0.4]), "fast": iter([0.1, 0.2, 0.1, 0.3, 0.2])}
    order = []

    def make(name):
        def fn(i):
            order.append((name, i))
            clock.spend(next(spent[name]))
            return f"{name}{i}"
        return fn

    def broken(i):
        raise RuntimeError("out of memory")
    msgs = []
    times, outs = bench.interleaved({"slow": make("slow"), "fast": make("fast"), "broken": broken}, reps=2,
                                    device="cpu", calls={"fast": 2}, cold=("fast",), progress=msgs.append)
    assert times == {"slow": pytest.approx([0.5, 0.3]), "fast": pytest.approx([0.1, 0.2, 0.1, 0.3])}
    assert outs == {"slow": "slow0", "fast": "fast1"}
    # round 0 warms up "slow" only ("fast" is cold), then the rounds interleave the methods
    assert order == [("slow", 0), ("slow", 0), ("fast", 0), ("fast", 1), ("slow", 0), ("fast", 0), ("fast", 1)]
    assert any("broken failed: RuntimeError" in m for m in msgs) and any("warm-up (compilation) 9 s" in m for m in msgs)


def test_decode_rows_from_known_step_times(clock, monkeypatch):
    """Fake decoders that take a known time per LR step: (a) 12 ms, (b) 5/7/6 ms over the rounds (median 6),
    (c) 4 ms, (d) 3 ms after a 20-s compile. One LR token = 8 frames."""
    b_steps = iter([1.0, 5e-3, 7e-3, 6e-3] * 4)
    made = []

    def codes(hs, ss, wrong=0):
        out = torch.zeros(len(hs), len(ss[0]), dtype=torch.long)
        out.view(-1)[:wrong] = 1
        return out

    def nocache(lm, hs, ss):
        clock.spend(12e-3 * len(ss[0]))
        return codes(hs, ss)

    class HF:
        def __init__(self, lm, batch):
            pass

        def generate(self, hs, ss):
            clock.spend(next(b_steps) * len(ss[0]))
            return codes(hs, ss)

    class Gen:
        def __init__(self, lm, batch, dtype=None, compile=False):
            self.compile, self.calls = compile, 0
            made.append((batch, compile))

        def generate(self, hs, ss):
            self.calls += 1
            clock.spend(20.0 if self.compile and self.calls == 1 else (3e-3 if self.compile else 4e-3) * len(ss[0]))
            return codes(hs, ss, wrong=0 if self.compile else 1)   # (c) differs from (a) in one token
    monkeypatch.setattr(generate, "generate_nocache", nocache)
    monkeypatch.setattr(generate, "HFDecoder", HF)
    monkeypatch.setattr(generate, "Generator", Gen)
    gens = {}
    rows = bench.bench_decode(tiny_lm(), "cpu", batches=(1, 2), window_seconds=4.0, long_seconds=6.0, reps=3,
                              progress=lambda s: None, gens=gens)
    assert [(r["scenario"], r["batch"]) for r in rows[::4]] == [("window", 1), ("window", 2), ("long", 1), ("W+emo", 1)]
    assert [r["method"] for r in rows[:4]] == ["(a) nocache", "(b) hf-dynamic", "(c) ours-eager", "(d) ours-compiled"]
    want = {"(a) nocache": (12.0, 1.0, 0.5), "(b) hf-dynamic": (6.0, 2.0, 1.0), "(c) ours-eager": (4.0, 3.0, 1.5),
            "(d) ours-compiled": (3.0, 4.0, 2.0)}
    for r in rows:
        ms, vs_a, vs_b = want[r["method"]]
        assert r["ms_per_step"] == pytest.approx(ms) and r["seconds"] == pytest.approx(ms * r["steps"] / 1e3)
        assert r["fps"] == pytest.approx(r["batch"] * 8000 / ms)   # 8 frames per LR step, every stream
        assert r["lr_tokens_per_s"] == pytest.approx(r["batch"] * 1000 / ms)
        assert (r["speedup_vs_a"], r["speedup_vs_b"]) == (pytest.approx(vs_a), pytest.approx(vs_b))
        wrong = 1 if r["method"] == "(c) ours-eager" else 0
        assert r["agreement_vs_ref"] == pytest.approx(1 - wrong / (r["batch"] * r["steps"]))
        assert len(r["seconds_all"]) == 3
    # one compiled generator per batch, reused across the scenarios (and kept for the streaming part)
    assert sorted(gens) == [(1, "d"), (2, "d")] and sum(c is True for _, c in made) == 2


def test_sample_rows_from_known_step_times(clock, monkeypatch):
    """K sampled reactions as one batch: a fake fast decoder taking 4 ms per LR step at K = 1 and 10 ms at K = 10
    (K rows of 8 frames each step); its inputs are the one input repeated K times, seeds 0..K-1, temperature 1."""
    seen = []

    class Gen:
        def __init__(self, lm, batch, dtype=None, sampling=None):
            self.batch, self.sampling = batch, sampling

        def generate(self, hs, ss, seeds=None):
            seen.append((self.batch, len(hs), len(ss), tuple(seeds), self.sampling.temperature, hs[0] == hs[-1]))
            clock.spend((4e-3 if self.batch == 1 else 10e-3) * len(ss[0]))
            return torch.zeros(len(hs), len(ss[0]), dtype=torch.long)
    monkeypatch.setattr(generate, "Generator", Gen)
    rows = bench.bench_samples(tiny_lm(), "cpu", seconds=4.0, reps=2, progress=lambda s: None)
    assert [r["samples"] for r in rows] == [1, 10]
    assert seen[0] == (1, 1, 1, (0,), 1.0, True) and seen[1] == (10, 10, 10, tuple(range(10)), 1.0, True)
    assert rows[0]["fps"] == pytest.approx(8000 / 4) and rows[0]["per_reaction_fps"] == pytest.approx(8000 / 4)
    assert rows[1]["fps"] == pytest.approx(10 * 8000 / 10) and rows[1]["per_reaction_fps"] == pytest.approx(8000 / 10)


def _tiny_arig():
    torch.manual_seed(0)
    return ARIG(ARIGConfig(d_model=16, n_head=2, d_ff=32, window=6, diff_width=16, word_buckets=64, n_sa=32)).eval()


def test_arig_rows_from_known_frame_times(clock, monkeypatch):
    """Cached step 2 ms, compiled 0.5 ms, recomputing the window 9 + 1 ms per frame."""
    m = _tiny_arig()
    monkeypatch.setattr(arig, "decode_frame", lambda *a: clock.spend(2e-3))
    monkeypatch.setattr(arig, "compiled_decode_frame", lambda device_type: lambda *a: clock.spend(0.5e-3))

    def features(x):
        clock.spend(9e-3)
        return x["spk"], None
    monkeypatch.setattr(m, "features", features)
    monkeypatch.setattr(m, "sample", lambda z, noise, steps: clock.spend(1e-3))
    rows = bench.bench_arig("cpu", batches=(1, 3), steps=(2, 4), frames=4, recompute_frames=2, reps=2, model=m,
                            progress=lambda s: None, compile_batches=(1,))   # compiled rows at batch 1 only
    want = {1: ("ARIG cached step", "ARIG cached, compiled", "ARIG recompute window"),
            3: ("ARIG cached step", "ARIG recompute window")}
    assert [(r["batch"], r["sample_steps"], r["method"]) for r in rows] == [
        (b, s, meth) for b in (1, 3) for s in (2, 4) for meth in want[b]]
    known = {"ARIG cached step": (2.0, 8, 5.0), "ARIG cached, compiled": (0.5, 8, 20.0),
             "ARIG recompute window": (10.0, 4, 1.0)}
    for r in rows:
        ms, timed, vs_recompute = known[r["method"]]
        assert (r["p50_ms"], r["p95_ms"]) == (pytest.approx(ms), pytest.approx(ms))
        assert r["frames_timed"] == timed and r["speedup_vs_recompute"] == pytest.approx(vs_recompute)
        assert r["fps"] == pytest.approx(r["batch"] * 1000 / ms) and r["config"]["window"] == 6


def test_arig_vs_lr_ratios_from_known_fps():
    rows = [dict(batch=1, fps=500.0), dict(batch=3, fps=1500.0), dict(batch=7, fps=1.0)]
    decode = [dict(scenario="window", batch=1, method="(c) ours-eager", fps=800.0),
              dict(scenario="long", batch=1, method="(c) ours-eager", fps=1.0),
              dict(scenario="window", batch=3, method="(d) ours-compiled", fps=1600.0)]
    bench.arig_vs_lr(rows, decode, dict(median_ms=10.0))   # a push of 8 frames every 10 ms: 800 FPS
    assert rows[0]["fps_vs_lr"] == {"(c) ours-eager": 0.625} and rows[0]["fps_vs_lr_streaming"] == 0.625
    assert rows[1]["fps_vs_lr"] == {"(d) ours-compiled": 0.9375} and "fps_vs_lr_streaming" not in rows[1]
    assert rows[2]["fps_vs_lr"] == {}
    table = bench.table(rows, bench.ARIG_COLS).splitlines()
    assert table[0].split() == ["batch", "fps", "fps_vs_lr", "(c)", "ours-eager", "fps_vs_lr_streaming",
                                "fps_vs_lr", "(d)", "ours-compiled"]
    assert table[1].split() == ["1", "500.0", "0.625", "0.625", "-"]


def test_table_formats_and_flattens():
    rows = [dict(name="a", ms=1.25, n=3, skip=1.0, vs={"x": 1234.56}), dict(name="bbb", ms=None, n=10)]
    assert bench.table(rows, "name ms n vs") == (
        "name    ms   n    vs x\n"
        "   a  1.25   3  1234.6\n"
        " bbb     -  10       -")


def test_kernel_time_on_cpu_drops_the_warm_up_round(clock):
    spent = iter(range(1, 21))   # µs: 1 ... 10 (warm-up), then 11 ... 20
    med, p20, p80 = bench._kernel_time(lambda: clock.spend(1e-6 * next(spent)), torch.device("cpu"), quick=True)
    assert (med, p20, p80) == (pytest.approx(15.5), pytest.approx(12.8), pytest.approx(18.2))


def test_kernel_rows_count_the_ideal_bytes(monkeypatch):
    """Every CPU provider runs once; each timing is 1000 µs, so GB/s and the bound follow from the bytes alone."""
    ran = []
    monkeypatch.setattr(bench, "_kernel_time", lambda fn, *a, **k: ran.append(fn()) or (1000.0, 900.0, 1100.0))
    rows = bench.bench_kernels(torch.device("cpu"), quick=True)
    assert [(r["op"], r["mode"], r["provider"]) for r in rows] == [
        ("nearest_code", "fwd", "eager"), ("nearest_code", "fwd", "reference"), ("norm_act", "fwd", "eager"),
        ("norm_act", "fwd", "reference"), ("norm_act", "fwd+bwd", "eager"), ("norm_act", "fwd+bwd", "reference")]
    assert len(ran) == 7 and not any("error" in r for r in rows)   # + the copy-bandwidth probe
    bw = 2 * 32 * 2 ** 20 / 1000e-6 / 1e9   # 32 MiB read and written in 1000 µs
    # z read, z_q written (4096 x 512 fp32 each), the codebook read (256 x 512), idx int64 + dist fp32 written
    nearest = 2 * 4096 * 512 * 4 + 256 * 512 * 4 + 4096 * 12
    norm = 16 * 512 * 240 * 4   # one (B, C, T) fp32 tensor: fwd moves 2 of them, fwd+bwd 5
    for r, nbytes in zip(rows, [nearest] * 2 + [2 * norm] * 2 + [5 * norm] * 2):
        assert r["bytes"] == nbytes and r["gbps"] == pytest.approx(nbytes / 1000e-6 / 1e9)
        assert r["bound_us"] == pytest.approx(nbytes / bw / 1e3) and r["speedup_vs_eager"] == 1.0
    assert rows[0]["tflops"] == pytest.approx(2 * 4096 * 256 * 512 / 1000e-6 / 1e12)
