"""minilisten.metrics: FD against the scipy/LM-listener reference, hand-computed cases for every
other metric, hypothesis invariants, and the bad-input errors."""
import warnings

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minilisten.metrics import (
    ValenceRegressor,
    clip_metrics,
    diversity,
    diversity_pairs,
    evaluate_clips,
    fd,
    l2,
    l2_affect,
    perplexity,
    pfd,
    variation,
    vq_commit,
    vq_rec,
)


def fd_scipy(x, y, eps=0.0):
    """LM-listener's FD (SYSTEM.md §8): np.cov, scipy sqrtm, 1e-6 diagonal retry when not finite,
    complex -> real (an imaginary diagonal above 1e-3 is an error)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False) + eps * np.eye(x.shape[1]), np.cov(y, rowvar=False) + eps * np.eye(x.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
        if not np.isfinite(covmean).all():
            off = np.eye(s1.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3), np.abs(covmean.imag).max()
        covmean = covmean.real
    d = mu1 - mu2
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def _data(kind, T, D, seed):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.normal(size=(T, D)), rng.normal(size=(T, D)) * 0.5 + 0.3
    if kind == "low_rank":   # rank-3 motion + 1e-6 noise: nearly singular covariances
        f = lambda: rng.normal(size=(T, 3)) @ rng.normal(size=(3, D)) + 1e-6 * rng.normal(size=(T, D))
        return f(), f()
    if kind == "ill_scaled":  # per-dim scales 1e-4 .. 1e2, condition ~1e12
        s = np.logspace(-4, 2, D)
        return rng.normal(size=(T, D)) * s, (rng.normal(size=(T, D)) + 0.1) * s * 1.3
    raise ValueError(kind)


@pytest.mark.parametrize("kind,T,D", [
    ("normal", 240, 56),       # a standard LM-listener clip
    ("normal", 240, 112),      # P-FD dims
    ("normal", 57, 56),        # just more frames than dims
    ("normal", 56, 56),        # T == D: rank D-1
    ("normal", 24, 56),        # fewer frames than dims (shortest LM-listener clip)
    ("normal", 24, 112),       # fewer frames than P-FD dims
    ("normal", 2, 56),         # the minimum: rank-1 covariances
    ("low_rank", 240, 56),     # nearly singular
    ("ill_scaled", 240, 56),   # badly conditioned
])
@pytest.mark.parametrize("seed", [0, 1])
def test_fd_matches_scipy(kind, T, D, seed):
    x, y = _data(kind, T, D, seed)
    ref = fd_scipy(x, y)
    assert fd(x, y) == pytest.approx(ref, rel=1e-5, abs=1e-9)


def test_fd_different_lengths_and_eps_match_scipy():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(100, 20)), rng.normal(size=(37, 20)) * 2
    assert fd(x, y) == pytest.approx(fd_scipy(x, y), rel=1e-5)
    x, y = _data("normal", 24, 56, 4)
    assert fd(x, y, eps=1e-6) == pytest.approx(fd_scipy(x, y, eps=1e-6), rel=1e-5)
    assert fd(x, y, eps=0.5) == pytest.approx(fd_scipy(x, y, eps=0.5), rel=1e-8)


def test_fd_hand_computed():
    # 1-D: x ~ (mean 1, var 2), y ~ (mean 2, var 8): 1 + 2 + 8 - 2 sqrt(16) = 3
    assert fd([[0.0], [2.0]], [[0.0], [4.0]]) == pytest.approx(3.0)
    # 2-D independent dims: sum of the 1-D distances
    x = np.array([[0.0, 0.0], [2.0, 1.0]])       # var (2, 0.5), mean (1, 0.5)
    y = np.array([[0.0, 3.0], [4.0, 3.0]])       # var (8, 0),   mean (2, 3)
    assert fd(x, y) == pytest.approx(3.0 + (2.5 ** 2 + 0.5 + 0.0 - 0.0))


def test_fd_split_and_pfd():
    rng = np.random.default_rng(0)
    gt, sp = rng.normal(size=(60, 56)), rng.normal(size=(60, 56))
    pred = rng.normal(size=(60, 56)) * 0.7
    s = fd(pred, gt, split=True)
    assert s["exp"] == pytest.approx(fd(pred[:, :50], gt[:, :50]))
    assert s["pose"] == pytest.approx(fd(pred[:, 50:], gt[:, 50:]))
    assert pfd(pred, gt, sp) == pytest.approx(fd_scipy(np.hstack([sp, pred]), np.hstack([sp, gt])), rel=1e-5)
    ps = pfd(pred, gt, sp, split=True)
    assert ps["pose"] == pytest.approx(fd(np.hstack([sp[:, 50:], pred[:, 50:]]), np.hstack([sp[:, 50:], gt[:, 50:]])))
    # hand: a constant shift c of the listener leaves every covariance unchanged: P-FD = |c|^2
    c = np.zeros(56)
    c[[3, 52]] = [0.5, -2.0]
    assert pfd(gt + c, gt, sp) == pytest.approx(0.25 + 4.0, rel=1e-9)


def test_small_metrics_hand_computed():
    assert l2([[1.0, 2.0], [3.0, 4.0]], np.zeros((2, 2))) == pytest.approx(7.5)
    assert variation([[0.0, 1.0], [2.0, 1.0]]) == pytest.approx(0.5)          # var (1, 0)
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert diversity(x, pairs=([0, 1], [1, 2])) == pytest.approx(5.0)
    assert diversity(x, pairs=([0], [2])) == pytest.approx(10.0)
    # fps 2 -> 2-frame windows; the last partial window (5 vs 9) is dropped
    assert l2_affect([0, 2, 1, 1, 5], [0, 0, 0, 0, 9], fps=2) == pytest.approx(1.0)
    assert l2_affect([0, 2, 3, 3], [0, 0, 0, 0], fps=2) == pytest.approx((1 + 9) / 2)
    # a clip shorter than one window is one window
    assert l2_affect([1, 2, 3], [0, 0, 0], fps=30) == pytest.approx(4.0)
    assert vq_rec(np.ones((2, 8, 56)), np.zeros((2, 8, 56))) == pytest.approx(1.0)
    assert vq_commit(np.full((4, 3), 2.0), np.zeros((4, 3))) == pytest.approx(4.0)
    assert perplexity(np.array([0, 1, 2, 3]), 4) == pytest.approx(4.0, rel=1e-6)
    assert perplexity(np.array([[0, 0], [0, 0]]), 8) == pytest.approx(1.0, rel=1e-6)
    assert perplexity(np.array([0, 0, 1, 1]), 256) == pytest.approx(2.0, rel=1e-6)


def test_diversity_pairs_follow_the_peer():
    i, j = diversity_pairs(31, seed=0)
    assert len(i) == len(j) == 30 and len(set(i)) == 30 and len(set(j)) == 30
    i, j = diversity_pairs(30, seed=0)
    assert len(i) == 10
    assert np.array_equal(diversity_pairs(100, seed=5)[0], diversity_pairs(100, seed=5)[0])
    x = np.random.default_rng(0).normal(size=(50, 56))
    assert diversity(x, seed=1) == diversity(x, seed=1) != diversity(x, seed=2)


# ----------------------------------------------------------------------------- invariants
def motion(min_T=2, max_T=24, D=st.integers(1, 6)):
    return st.tuples(st.integers(min_T, max_T), D).flatmap(
        lambda s: arrays(np.float64, s, elements=st.floats(-10, 10, allow_nan=False, width=32)))


@settings(max_examples=60, deadline=None)
@given(motion(), st.data())
def test_fd_invariants(x, data):
    T, D = x.shape
    y = data.draw(arrays(np.float64, (data.draw(st.integers(2, 24)), D), elements=st.floats(-10, 10, width=32)))
    c = data.draw(arrays(np.float64, (D,), elements=st.floats(-5, 5, width=32)))
    scale = 1.0 + (x ** 2).sum() + (y ** 2).sum()
    assert fd(x, x) == pytest.approx(0.0, abs=1e-9 * scale)
    assert fd(x, y) == pytest.approx(fd(y, x), rel=1e-9, abs=1e-9 * scale)
    assert fd(x + c, y + c) == pytest.approx(fd(x, y), rel=1e-7, abs=1e-8 * scale)
    assert fd(x + c, x) == pytest.approx(c @ c, rel=1e-7, abs=1e-8 * scale)
    assert fd(3 * x, 3 * y) == pytest.approx(9 * fd(x, y), rel=1e-7, abs=1e-8 * scale)
    assert fd(x, y) >= 0


@settings(max_examples=60, deadline=None)
@given(motion(min_T=11, max_T=40), st.floats(-5, 5))
def test_small_metric_invariants(x, c):
    T, D = x.shape
    const = np.full((T, D), c)
    assert variation(const) == 0.0 and diversity(const) == 0.0
    assert variation(x + c) == pytest.approx(variation(x), rel=1e-6, abs=1e-9)
    assert diversity(x + c, seed=3) == pytest.approx(diversity(x, seed=3), rel=1e-6, abs=1e-6)
    assert l2(x + c, x) == pytest.approx(c * c, rel=1e-9, abs=1e-12)
    v = x[:, 0]
    assert l2_affect(v + c, v, fps=5) == pytest.approx(c * c, rel=1e-9, abs=1e-12)
    assert l2(x, x) == 0.0 and l2_affect(v, v, fps=5) == 0.0


# ----------------------------------------------------------------------------- Table 1
def _clips(n=3, T=40, seed=0):
    rng = np.random.default_rng(seed)
    mk = lambda: [rng.normal(size=(T + 8 * i, 56)) for i in range(n)]
    gt, sp, pred = mk(), mk(), mk()
    gv = [rng.normal(size=len(g)) for g in gt]
    pv = [v + 0.1 * rng.normal(size=len(v)) for v in gv]
    return pred, gt, sp, pv, gv


def test_evaluate_clips_is_the_unweighted_mean_of_clips():
    pred, gt, sp, pv, gv = _clips()
    out = evaluate_clips(pred, gt, sp, pv, gv, fps=30, seed=7)
    rows = [clip_metrics(pred[i], gt[i], sp[i], pv[i], gv[i], fps=30, seed=(7, i)) for i in range(3)]
    assert out["n_clips"] == 3
    assert sorted(out) == sorted([*rows[0], "n_clips"])
    for k in ("l2", "fd", "pfd", "variation", "diversity", "variation_gt", "diversity_gt", "l2_affect"):
        assert out[k] == pytest.approx(np.mean([r[k] for r in rows])), k
    assert out["fd"] == pytest.approx(np.mean([fd_scipy(p, g) for p, g in zip(pred, gt)]), rel=1e-5)
    assert out["l2_affect"] == pytest.approx(np.mean([l2_affect(p, g) for p, g in zip(pv, gv)]))
    assert evaluate_clips(pred, gt, sp, pv, gv, seed=7) == evaluate_clips(pred, gt, sp, pv, gv, seed=7)
    perfect = evaluate_clips(gt, gt, sp)
    assert perfect["l2"] == 0 and perfect["fd"] == pytest.approx(0, abs=1e-9) and "l2_affect" not in perfect
    assert perfect["diversity"] == perfect["diversity_gt"]    # same seeded pairs for pred and gt


def test_valence_regressor():
    rng = np.random.default_rng(0)
    w = rng.normal(size=56)
    motions = [rng.normal(size=(50, 56)) for _ in range(4)]
    vals = [m @ w + 0.5 for m in motions]
    r = ValenceRegressor(alpha=1e-6).fit(motions, vals)
    assert np.allclose(r.predict(motions[0]), vals[0], atol=1e-4)
    assert np.allclose(r.predict(motions[3]), vals[3], atol=1e-4)
    shrunk = ValenceRegressor(alpha=1e6).fit(motions, vals).predict(motions[0])       # ridge shrinks to the mean
    assert np.abs(shrunk - 0.5 - np.mean([v.mean() - 0.5 for v in vals])).max() < 0.5 * np.abs(vals[0] - 0.5).max()
    with pytest.raises(ValueError, match="unfitted"):
        ValenceRegressor().predict(motions[0])
    with pytest.raises(ValueError, match=r"valences\[1\]: expected shape \(50,\) \(as motions\[1\]\), got \(49,\)"):
        ValenceRegressor().fit(motions[:2], [vals[0], vals[1][:49]])
    with pytest.raises(ValueError, match=r"motions, valences: expected two non-empty lists of one length, got 2 and 1"):
        ValenceRegressor().fit(motions[:2], vals[:1])
    with pytest.raises(ValueError, match=r"motions, valences: expected two non-empty lists of one length, got 0 and 0"):
        ValenceRegressor().fit([], [])


def test_evaluate_scores_segments_and_fits_valence_only_when_all_have_it():
    from minilisten.data.segment import Segment
    from minilisten.metrics import evaluate
    rng = np.random.default_rng(3)

    def seg(T, valence=True):
        return Segment(rng.normal(size=(T, 56)).astype(np.float32), rng.normal(size=(T, 56)).astype(np.float32), 30.0,
                       valence=rng.normal(size=T).astype(np.float32) if valence else None)
    train, clips = [seg(60) for _ in range(3)], [seg(40), seg(48)]
    zero = [np.zeros_like(c.listener_motion) for c in clips]
    res = evaluate({"zero": zero, "gt": [c.listener_motion for c in clips]}, clips, train, seed=1)
    # L2 of an all-zero prediction by hand: the mean over clips of each clip's mean squared motion
    want = np.mean([np.mean(c.listener_motion.astype(np.float64) ** 2) for c in clips])
    assert res["zero"]["l2"] == pytest.approx(want) and res["gt"]["l2"] == 0 and res["gt"]["n_clips"] == 2
    # L2 Affect with a ridge fitted on train only (a hand-made regressor as the oracle)
    x = np.vstack([s.listener_motion for s in train]).astype(np.float64)
    y = np.concatenate([s.valence for s in train]).astype(np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-8
    z = (x - mu) / sd
    coef = np.linalg.solve(z.T @ z + np.eye(56), z.T @ (y - y.mean()))
    pv = [np.full(len(c.valence), (-mu / sd) @ coef + y.mean()) for c in clips]   # the valence of an all-zero face
    assert res["zero"]["l2_affect"] == pytest.approx(np.mean([l2_affect(p, c.valence) for p, c in zip(pv, clips)]))
    assert "l2_affect" not in evaluate({"zero": zero}, clips, train + [seg(60, valence=False)])["zero"]


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_name_field_expected_and_actual():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(240, 56))
    with pytest.raises(ValueError, match=r"pred: expected shape \(240, 56\) \(as gt\), got \(232, 56\)"):
        l2(g[:232], g)
    with pytest.raises(ValueError, match=r"pred: expected shape \(T, 56\), got \(240, 55\)"):
        fd(g[:, :55], g)
    bad = g.copy()
    bad[5, 3] = np.nan
    with pytest.raises(ValueError, match=r"pred: expected finite values, got nan at index \(5, 3\)"):
        l2(bad, g)
    with pytest.raises(ValueError, match=r"gt: expected finite values"):
        fd(g, bad)
    with pytest.raises(ValueError, match=r"pred: expected at least 2 frames, got 1"):
        fd(g[:1], g)
    with pytest.raises(ValueError, match=r"diversity: expected more than 10 frames for 10 random pairs, got 10"):
        diversity(g[:10])
    with pytest.raises(ValueError, match=r"speaker: expected shape \(240, 56\) \(as gt\), got \(200, 56\)"):
        pfd(g, g, g[:200])
    with pytest.raises(ValueError, match=r"pred_valence: expected shape \(30,\) \(as gt_valence\), got \(29,\)"):
        l2_affect(np.zeros(29), np.zeros(30))
    with pytest.raises(ValueError, match=r"pred_valence: expected shape \(T,\), got \(30, 1\)"):
        l2_affect(np.zeros((30, 1)), np.zeros(30))
    with pytest.raises(ValueError, match=r"codes: expected values in \[0, 4\), got range \[0, 4\]"):
        perplexity(np.array([0, 4]), 4)
    with pytest.raises(ValueError, match=r"codes: expected a non-empty integer array"):
        perplexity(np.array([0.5]), 4)
    with pytest.raises(ValueError, match=r"recon: expected shape \(2, 3\) \(as gt\), got \(3, 2\)"):
        vq_rec(np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"z_q: expected finite values, got nan at index \(1, 0\)"):
        vq_commit(np.zeros((2, 3)), np.array([[0, 0, 0], [np.nan, 0, 0]]))
    with pytest.raises(ValueError, match=r"eps: expected a number >= 0"):
        fd(g, g, eps=-1)


def test_evaluate_clips_bad_inputs():
    pred, gt, sp, pv, gv = _clips()
    with pytest.raises(ValueError, match=r"gt: expected a list of >= 1 clips \(as gt\), got 0"):
        evaluate_clips([], [], [])
    with pytest.raises(ValueError, match=r"speaker: expected a list of 3 clips \(as gt\), got 2"):
        evaluate_clips(pred, gt, sp[:2])
    with pytest.raises(ValueError, match=r"clip 1: pred: expected shape \(48, 56\) \(as gt\), got \(40, 56\)"):
        evaluate_clips([pred[0], pred[0], pred[2]], gt, sp)
    with pytest.raises(ValueError, match=r"gt_valence: expected a list of 3 clips \(as gt\), got None"):
        evaluate_clips(pred, gt, sp, pred_valence=pv)
    with pytest.raises(ValueError, match=r"pred_valence: expected an array, got None"):
        clip_metrics(pred[0], gt[0], sp[0], gt_valence=gv[0])
    with pytest.raises(ValueError, match=r"gt_valence: expected an array, got None"):
        clip_metrics(pred[0], gt[0], sp[0], pred_valence=pv[0])
    with pytest.raises(ValueError, match=r"clip 2: gt_valence: expected shape \(56,\) \(as gt\), got \(55,\)"):
        evaluate_clips(pred, gt, sp, pv, gv[:2] + [gv[2][:55]])
    short = [g[:10] for g in gt]
    with pytest.raises(ValueError, match=r"clip 0: diversity: expected more than 10 frames"):
        evaluate_clips(short, short, [s[:10] for s in sp])
    nan = [p.copy() for p in pred]
    nan[1][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"clip 1: pred: expected finite values, got inf at index \(0, 0\)"):
        evaluate_clips(nan, gt, sp)
