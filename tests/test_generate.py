"""Fast LR decoding (minilisten.generate) against the no-cache reference decoder, and the reference
decoder against contexts built by hand.

Every test uses the real ``ListenerLM`` on tiny random GPT-2 / LLaMA backbones and random speaker
streams with realistic token counts (``minilisten.data.synthetic.speaker_segment``).
"""
import pytest
import torch
from conftest import tiny_lm

from minilisten.data.synthetic import speaker_segment
from minilisten.generate import (
    BUCKETS,
    ContextFullError,
    FastTransformer,
    Generator,
    HFDecoder,
    generate_nocache,
)


def streams(lm, n: int, seconds: float = 4.0, seed: int = 0):
    hs, ss = [], []
    for k in range(n):
        h, s = lm.speaker_steps(speaker_segment(seconds, seed=seed + k))
        hs.append(h)
        ss.append(s)
    return hs, ss


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request):
    return tiny_lm(request.param)


def reference(lm, h, s, max_len=None) -> list[int]:
    """One stream through the reference decoder (batch of 1: no padding)."""
    return generate_nocache(lm, [h], [s], max_len)[0].tolist()


def hand_codes(lm, history, steps) -> list[int]:
    """Greedy codes from contexts concatenated here (no context policy: the stream must fit)."""
    codes = []
    for i in range(len(steps)):
        ids = list(history)
        for k in range(i):
            ids += steps[k] + [lm.vocab.lr_offset + codes[k]]
        ids += steps[i]
        codes.append(int(lm.lr_logits(torch.tensor([ids]))[0, -1].argmax()))
    return codes


def test_reference_equals_hand_built_contexts(lm):
    """The reference decoder (batched, padded) against contexts concatenated by hand."""
    hs, ss = streams(lm, 3, seconds=2.0, seed=70)
    with torch.no_grad():
        want = [hand_codes(lm, h, s) for h, s in zip(hs, ss)]
    assert len({len(sum(s, [])) for s in ss}) > 1                      # rows of different lengths: padding
    assert generate_nocache(lm, hs, ss).tolist() == want


def test_equals_reference(lm):
    hs, ss = streams(lm, 3)
    ref = [reference(lm, h, s) for h, s in zip(hs, ss)]
    assert len(set(map(tuple, ref))) == 3 and len(set(ref[0])) > 3     # non-trivial codes
    assert Generator(lm, batch=3).generate(hs, ss).tolist() == ref
    assert HFDecoder(lm, batch=3).generate(hs, ss).tolist() == ref
    assert HFDecoder(lm, batch=3, cache="static").generate(hs, ss).tolist() == ref
    assert generate_nocache(lm, hs, ss).tolist() == ref                # batched (padded) = one by one


def test_logits_match_hf(lm):
    """The compact forward reproduces the HF model's LR logits (fp32)."""
    hs, ss = streams(lm, 1)
    g = Generator(lm)
    g.advance(prefill={0: hs[0] + ss[0][0]})
    ref = lm.lr_logits(torch.tensor([hs[0] + ss[0][0]]))[0, -1]
    torch.testing.assert_close(g.logits[0], ref, atol=1e-5, rtol=1e-5)


def test_sliding_context_equals_reference(lm):
    """Streams several times longer than the context: the LM's sliding policy, re-prefills."""
    hs, ss = streams(lm, 2, seconds=12.0, seed=5)
    max_len = 96
    plan = lm.context_plan(hs[0], ss[0], max_len=max_len)
    assert len(set(plan)) >= 4, plan
    ref = [reference(lm, h, s, max_len=max_len) for h, s in zip(hs, ss)]
    g = Generator(lm, batch=2, max_len=max_len)
    assert g.generate(hs, ss).tolist() == ref
    assert HFDecoder(lm, batch=2, max_len=max_len).generate(hs, ss).tolist() == ref
    assert generate_nocache(lm, hs, ss, max_len=max_len).tolist() == ref


def test_batch_equals_per_stream(lm):
    hs, ss = streams(lm, 4, seed=10)
    single = [Generator(lm).generate([h], [s])[0].tolist() for h, s in zip(hs, ss)]
    g = Generator(lm, batch=6)
    assert g.generate(hs, ss).tolist() == single
    # streams at different points share forwards: 0 and 2 restart while 1 steps on
    g.generate(hs[:2], ss[:2])
    g.advance(prefill={0: hs[2] + ss[2][0], 2: hs[3] + ss[3][0]}, step={1: []})
    assert g.codes[[0, 2]].tolist() == [single[2][0], single[3][0]]


@pytest.mark.parametrize("buckets, widths", [(None, {1, 3}), (BUCKETS, {1, 4})])
def test_idle_slots_are_not_computed(lm, monkeypatch, buckets, widths):
    """A step of some streams runs the forward on their rows only (idle slots cost nothing; with
    buckets, row counts are padded to powers of two with idle rows); the busy streams' codes equal
    the reference, and the idle streams' state is untouched."""
    hs, ss = streams(lm, 3, seconds=1.5, seed=30)   # fits the context: no sliding
    want = [reference(lm, h, s) for h, s in zip(hs, ss)]
    g = Generator(lm, batch=8, buckets=buckets)
    seen, fwd = [], g._fwd
    monkeypatch.setattr(g, "_fwd", lambda t, key_pos, slots: seen.append(t.shape[0]) or fwd(t, key_pos, slots))
    slot = {0: 5, 1: 2, 2: 7}
    got = {k: [] for k in slot}
    for k, b in slot.items():
        g.advance(prefill={b: hs[k] + ss[k][0]})
        got[k].append(int(g.codes[b]))
    n = min(map(len, ss))
    for i in range(1, n):
        before = g.model.pos.clone()
        fed = [0] if i % 2 else [0, 1, 2]
        g.advance(step={slot[k]: ss[k][len(got[k])] for k in fed})
        for k in fed:
            got[k].append(int(g.codes[slot[k]]))
        idle = [b for b in range(8) if b not in [slot[k] for k in fed]]
        assert g.model.pos[idle].tolist() == before[idle].tolist()
    assert set(seen) == widths
    assert all(got[k] == want[k][:len(got[k])] for k in slot) and len(got[0]) == n


@pytest.mark.parametrize("buckets, chunk", [(BUCKETS, 64), ((4, 8), 8)])
def test_buckets_and_chunked_prefill(lm, buckets, chunk):
    """Padded blocks (the CUDA default) and prefills split into chunks give the same codes."""
    hs, ss = streams(lm, 2, seed=3)
    ref = [reference(lm, h, s) for h, s in zip(hs, ss)]
    assert Generator(lm, batch=2, buckets=buckets, chunk=chunk).generate(hs, ss).tolist() == ref


def test_generate_segments(lm):
    segs = [speaker_segment(s, seed=20 + k) for k, s in enumerate((2.0, 3.0, 2.0))]
    out = Generator(lm, batch=2).generate_segments(segs)
    assert [o.tolist() for o in out] == [reference(lm, *lm.speaker_steps(seg)) for seg in segs]


def test_generic_path():
    """Backbones without a fast path (GPT-NeoX) decode through HF + StaticCache, sliding included."""
    lm = tiny_lm("neox")
    hs, ss = streams(lm, 2, seconds=6.0, seed=0)
    ref = [reference(lm, h, s, max_len=96) for h, s in zip(hs, ss)]
    g = HFDecoder(lm, batch=2, cache="static", max_len=96)
    assert len(set(ref[0])) > 3 and len(set(lm.context_plan(hs[0], ss[0], max_len=96))) > 1
    assert g.generate(hs, ss).tolist() == ref
    with pytest.raises(ValueError, match="expected model_type in"):
        Generator(lm)


def test_errors_leave_state_usable():
    lm = tiny_lm("gpt2")
    hs, ss = streams(lm, 2, seconds=2.0, seed=7)
    ref = reference(lm, hs[0], ss[0])
    g = Generator(lm, batch=2)
    g.advance(prefill={0: hs[0] + ss[0][0]})
    bad = [
        (dict(step={2: ss[0][1]}), r"stream: expected an index in \[0, 2\).*got 2"),
        (dict(step={0: [lm.vocab.size]}),
         r"step\[0\]: expected token ids in \[0, %d\), got %d" % (lm.vocab.size, lm.vocab.size)),
        (dict(step={1: ss[0][1]}), r"step\[1\]: stream 1 has no context yet"),
        (dict(prefill={1: []}), r"prefill\[1\]: expected at least 1 token, got 0"),
        (dict(step={0: [5] * 250}), r"stream 0: expected at most max_len=256 tokens"),
        (dict(step={0: ss[0][1]}, prefill={0: ss[0][1]}), r"stream 0 is also in prefill"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            g.advance(**kw)
    with pytest.raises(ContextFullError):
        g.advance(step={0: [5] * 250})
    with pytest.raises(ValueError, match=r"history: expected 1..2 streams \(allocated\), got 3"):
        g.generate(hs + hs[:1], ss + ss[:1])
    with pytest.raises(ValueError, match=r"same number .* of steps"):
        g.generate(hs, [ss[0], ss[1][:-1]])
    codes = [int(g.codes[0])]
    for s in ss[0][1:]:
        g.advance(step={0: s})
        codes.append(int(g.codes[0]))
    assert codes == ref
    with pytest.raises(ValueError, match="batch: expected an int >= 1"):
        Generator(lm, batch=0)
    with pytest.raises(ValueError, match=r"max_seq: expected 1..256"):
        Generator(lm, max_len=1000)


def test_state_is_fixed():
    """Decoding allocates its caches once: same tensors, same bytes after a long sliding decode."""
    lm = tiny_lm("llama")
    g = Generator(lm, batch=2, max_len=96)
    before = [(t.data_ptr(), t.shape) for t in g.model.state_tensors()]
    nbytes = g.state_bytes()
    hs, ss = streams(lm, 2, seconds=10.0, seed=30)
    assert len(set(lm.context_plan(hs[0], ss[0], max_len=96))) >= 4
    g.generate(hs, ss)
    assert [(t.data_ptr(), t.shape) for t in g.model.state_tensors()] == before
    # 2 layers x (k, v) x (B=2, n_kv=2, 96 + 1 slots, D=8) fp32 + pos, codes, logits + rotary tables
    assert g.state_bytes() == nbytes == 2 * 2 * (2 * 2 * 97 * 8) * 4 + 2 * 8 + 2 * 8 + 2 * 256 * 4 + 2 * 96 * 8 * 4


def test_state_is_module_buffers():
    """Caches, pos, codes, logits and rotary tables are buffers (gpt-fast's KVCache): ``.to()``
    moves and casts them with the weights; they are not saved in the state dict."""
    lm = tiny_lm("llama")
    g = Generator(lm, batch=2, max_len=64)
    m = g.model
    assert all({'k_cache', 'v_cache'} <= dict(b.attn.named_buffers()).keys() for b in m.blocks)
    buffers = {id(t) for t in m.buffers()}
    assert all(id(t) in buffers for t in m.state_tensors()) and len(m.state_tensors()) == 2 * 2 + 5
    assert not any("cache" in k or k in ("pos", "codes", "logits") for k in m.state_dict())
    m.to(torch.float64)
    assert {t.dtype for t in m.state_tensors()} == {torch.float64, torch.long}
    m.to("meta")
    assert all(t.device.type == "meta" for t in m.state_tensors())
    fresh = FastTransformer.from_lm(lm)
    assert fresh.pos is None and fresh.blocks[0].attn.k_cache is None           # allocated by setup_caches


def test_lm_untouched_and_bf16():
    """The fast copy leaves the ListenerLM as it was (dtype, device, HF rotary buffers); a bf16 copy
    still decodes the tiny models' codes."""
    lm = tiny_lm("llama")
    rot = lm.backbone.model.rotary_emb.inv_freq.clone()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    hs, ss = streams(lm, 2)
    out = Generator(lm, batch=2, dtype=torch.bfloat16).generate(hs, ss)
    assert torch.equal(lm.backbone.model.rotary_emb.inv_freq, rot) and rot.dtype == torch.float32
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in before.items())
    ref = torch.tensor([reference(lm, h, s) for h, s in zip(hs, ss)])
    assert (out == ref).float().mean() > 0.9


def test_lora_is_merged():
    """LoRA (peft) LLaMA: the generator decodes with the adapters merged, like the reference."""
    pytest.importorskip("peft")
    lm = tiny_lm("llama", lora=True, lora_r=4)
    torch.manual_seed(1)
    for n, p in lm.backbone.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    hs, ss = streams(lm, 2, seed=60)
    ref = [reference(lm, h, s) for h, s in zip(hs, ss)]
    assert Generator(lm, batch=2).generate(hs, ss).tolist() == ref


@pytest.mark.compile
def test_compiled_equals_reference_one_graph():
    """torch.compile path (inductor on CPU): same codes; one graph for every step length."""
    import torch._dynamo
    torch._dynamo.reset()
    lm = tiny_lm("gpt2")
    hs, ss = streams(lm, 2, seconds=3.0, seed=40)
    ref = [reference(lm, h, s) for h, s in zip(hs, ss)]
    assert len({len(x) for s in ss for x in s}) > 3                     # several step lengths
    from torch._dynamo.utils import counters
    counters.clear()
    g = Generator(lm, batch=2, compile=True)
    assert g.generate(hs, ss).tolist() == ref
    assert g.generate(hs, ss).tolist() == ref
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


@pytest.mark.compile
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bench/gpu_check.sh runs it)")
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cuda_graphs_equal_reference(arch):
    """On CUDA: the CUDA-graph path (reduce-overhead, bucketed blocks, several batch rows at different
    positions, a sliding context) gives the reference codes in fp32."""
    lm = tiny_lm(arch).cuda()
    hs, ss = streams(lm, 3, seconds=8.0, seed=50)
    ref = [reference(lm, h, s, max_len=128) for h, s in zip(hs, ss)]
    g = Generator(lm, batch=4, max_len=128, compile=True)
    assert g.generate(hs, ss).tolist() == ref
    assert g.generate(hs, ss).tolist() == ref          # replays of the recorded graphs
    assert g.generate(hs[:1], ss[:1]).tolist() == ref[:1]


@pytest.mark.parametrize("config", ["tiny", "tiny-llama"])
def test_bench_decode_rows(config):
    """The benchmark's own decode table on short streams: every method's codes equal the no-cache
    reference (the GPT-2 and the default LLaMA layout), and the rows carry the reported fields."""
    from minilisten.bench import CONFIGS, bench_decode, build_lm
    lm = build_lm(config)
    assert lm.backbone.config.model_type == CONFIGS[config]["arch"]
    rows = bench_decode(lm, "cpu", batches=(1, 2), window_seconds=2.0, long_seconds=2.0, reps=1,
                        methods=("a", "b", "c"), progress=lambda s: None)
    assert {r["scenario"] for r in rows} == {"window", "long", "W+emo"}
    assert {r["method"] for r in rows} == {"(a) nocache", "(b) hf-dynamic", "(c) ours-eager"}
    for r in rows:   # (a) is the reference the others are compared with; it is checked by hand above
        assert r["method"] == "(a) nocache" or r["agreement_vs_ref"] == 1.0, r
        assert r["lr_tokens_per_s"] > 0 and r["fps"] == pytest.approx(8 * r["lr_tokens_per_s"])
