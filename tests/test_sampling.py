"""Sampled LR decoding (issue 25): the masks of ``pick`` on hand-built logits, seeded generators per stream
(a stream decodes the same inside any batch), the fast decoders equal to the no-cache reference for the same
seeds, greedy unchanged, K samples per clip in one batch."""
import math

import numpy as np
import pytest
import torch
from conftest import tiny_lm, tiny_vq

from minilisten.data.synthetic import speaker_segment
from minilisten.errors import UserError
from minilisten.generate import Generator, HFDecoder, Sampling, generate_motion, generate_nocache, pick

HOT = Sampling(temperature=1.0)


def streams(lm, n, seconds=3.0, seed=0):
    pairs = [lm.speaker_steps(speaker_segment(seconds, seed=seed + k)) for k in range(n)]
    return [h for h, _ in pairs], [s for _, s in pairs]


def draws(logits, sampling, n=4000, seed=0):
    """Empirical distribution of ``pick`` over n rows of the same logits, one shared generator."""
    g = torch.Generator().manual_seed(seed)
    out = pick(torch.tensor([logits] * n), sampling, [g] * n)
    return np.bincount(out.numpy(), minlength=len(logits)) / n


P4 = [0.5, 0.3, 0.15, 0.05]
LOG4 = [math.log(p) for p in P4]


@pytest.mark.parametrize("sampling, want", [
    (Sampling(1.0), P4),
    (Sampling(1.0, top_k=2), [0.5 / 0.8, 0.3 / 0.8, 0, 0]),
    (Sampling(1.0, top_p=0.7), [0.5 / 0.8, 0.3 / 0.8, 0, 0]),      # 0.5 < 0.7 <= 0.8: two tokens
    (Sampling(1.0, top_p=0.8), [0.5 / 0.8, 0.3 / 0.8, 0, 0]),      # exactly reached: still two
    (Sampling(1.0, top_p=0.81), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
    (Sampling(1.0, top_p=0.1), [1, 0, 0, 0]),                       # at least one token
    (Sampling(1.0, top_k=3, top_p=0.84), [0.5 / 0.8, 0.3 / 0.8, 0, 0]),  # top-p over the renormalised top 3
    (Sampling(2.0), np.sqrt(P4) / np.sqrt(P4).sum()),               # p ** (1 / T)
])
def test_pick_masks_and_temperature(sampling, want):
    got = draws(LOG4, sampling)
    assert all(g == 0 for g, w in zip(got, want) if w == 0)
    np.testing.assert_allclose(got, want, atol=0.03)


def test_pick_greedy_is_argmax_and_rows_use_their_generator():
    logits = torch.randn(5, 7)
    assert torch.equal(pick(logits, Sampling(), []), logits.argmax(-1))
    assert torch.equal(pick(logits, None, []), logits.argmax(-1))
    gens = [torch.Generator().manual_seed(s) for s in range(5)]
    row3 = pick(logits[3:4], HOT, [torch.Generator().manual_seed(3)])
    assert pick(logits, HOT, gens)[3] == row3[0]                    # the batch does not matter


@pytest.mark.parametrize("kw, field", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("inf")), "temperature"),
    (dict(temperature="1"), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_k=2.0), "top_k"),
    (dict(top_k=True), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
])
def test_invalid_sampling(kw, field):
    value = next(iter(kw.values()))
    with pytest.raises(UserError, match=rf"Sampling\.{field}: expected .*, got {value!r}"):
        Sampling(**kw)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request):
    return tiny_lm(request.param)


def test_greedy_unchanged(lm):
    hs, ss = streams(lm, 2)
    ref = generate_nocache(lm, hs, ss)
    assert torch.equal(Generator(lm, batch=2, sampling=Sampling()).generate(hs, ss, seeds=[3, 4]), ref)
    assert torch.equal(generate_nocache(lm, hs, ss, sampling=Sampling(0.0), seeds=[5, 6]), ref)


def test_seeded_sampling(lm):
    """Same seeds -> same tokens (and not the greedy ones); a stream alone equals the same stream in a batch."""
    hs, ss = streams(lm, 3, seed=10)
    g = Generator(lm, batch=4, sampling=HOT)
    out = g.generate(hs, ss, seeds=[7, 8, 9])
    assert torch.equal(g.generate(hs, ss, seeds=[7, 8, 9]), out)
    assert not torch.equal(g.generate(hs, ss, seeds=[1, 8, 9])[0], out[0])
    assert (out != generate_nocache(lm, hs, ss)).float().mean() > 0.5
    alone = Generator(lm, sampling=HOT).generate(hs[1:2], ss[1:2], seeds=[8])
    assert torch.equal(alone[0], out[1])
    assert torch.equal(g.generate(hs[::-1], ss[::-1], seeds=[9, 8, 7]), out.flip(0))


@pytest.mark.parametrize("sampling", [HOT, Sampling(0.8, top_k=20, top_p=0.9)])
def test_fast_equals_reference(lm, sampling):
    """The static-cache decoder, the HF decoders and the no-cache reference draw the same tokens for the same
    seeds, across context slides."""
    hs, ss = streams(lm, 2, seconds=8.0, seed=20)
    assert len(set(lm.context_plan(hs[0], ss[0], max_len=96))) > 2
    ref = generate_nocache(lm, hs, ss, max_len=96, sampling=sampling, seeds=[11, 12])
    for chunk in (64, 8):   # chunk 8: prefills in several forwards, some of which emit no code
        g = Generator(lm, batch=2, max_len=96, sampling=sampling, chunk=chunk)
        assert torch.equal(g.generate(hs, ss, [11, 12]), ref)
    assert torch.equal(HFDecoder(lm, batch=2, max_len=96, sampling=sampling).generate(hs, ss, [11, 12]), ref)


def test_reset_seeds_a_stream():
    lm = tiny_lm("gpt2")
    hs, ss = streams(lm, 1, seconds=1.0)
    g = Generator(lm, batch=2, sampling=HOT)
    runs = []
    for _ in range(2):
        g.reset([1], seeds=[5])
        g.advance(prefill={1: hs[0] + ss[0][0]})
        codes = [int(g.codes[1])]
        for s in ss[0][1:]:
            g.advance(step={1: s})
            codes.append(int(g.codes[1]))
        runs.append(codes)
    assert runs[0] == runs[1] == generate_nocache(lm, hs, ss, sampling=HOT, seeds=[5])[0].tolist()
    with pytest.raises(UserError, match=r"seed: expected an int in \[0, 2\*\*63\), got -1"):
        g.reset([0], seeds=[-1])
    with pytest.raises(UserError, match=r"seeds: expected one seed per stream \(2\), got 1"):
        g.reset(seeds=[1])


def test_generate_motion_samples():
    lm, vq = tiny_lm("gpt2", r=vq_rate()), tiny_vq()
    clips = [speaker_segment(s, seed=k) for k, s in enumerate((2.0, 3.0))]
    codes, motion = generate_motion(lm, vq, clips, sampling=HOT, samples=3, seed=4)
    assert [c.shape for c in codes] == [(3, c.T // lm.config.r) for c in clips]
    assert [m.shape for m in motion] == [(3, c.T // lm.config.r * lm.config.r, 56) for c in clips]
    one_codes, one_motion = generate_motion(lm, vq, clips, sampling=HOT, seed=4)
    for k in range(2):
        np.testing.assert_array_equal(codes[k][0], one_codes[k])
        np.testing.assert_allclose(motion[k][0], one_motion[k], atol=1e-5)
        assert len({tuple(c) for c in codes[k]}) == 3                  # three different reactions
    greedy_codes, _ = generate_motion(lm, vq, clips)
    assert [c.tolist() for c in greedy_codes] == [generate_nocache(lm, *[[x] for x in lm.speaker_steps(c)])[0].tolist()
                                                  for c in clips]


def vq_rate():
    return tiny_vq().config.rate


def test_tiny_temperature_is_greedy_not_nan():
    """logits / 1e-40 overflows to inf (softmax NaN, multinomial raises) unless the max is subtracted first."""
    logits = torch.tensor([[3.0, 1.0, 2.9, -5.0], [0.0, 0.0, 7.0, 1.0]])
    gens = [torch.Generator().manual_seed(k) for k in range(2)]
    assert pick(logits, Sampling(temperature=1e-40), gens).tolist() == [0, 2]


def test_generate_motion_decorrelates_clips_and_refuses_greedy_copies():
    """Two copies of one clip in one call are different clips to the sampler: their reactions differ."""
    lm, vq = tiny_lm("gpt2", r=vq_rate()), tiny_vq()
    clip = speaker_segment(3.0, seed=5)
    codes, _ = generate_motion(lm, vq, [clip, clip], sampling=HOT, samples=2, seed=1)
    assert codes[0].tolist() != codes[1].tolist()
    with pytest.raises(ValueError, match=r"samples: expected 1 with greedy decoding"):
        generate_motion(lm, vq, [clip], samples=2)
