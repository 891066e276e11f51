"""The REACT metric family against hand-built cases and a transcription of the challenge's official code
(reactmultimodalchallenge/baseline_react2023, metric/{FRC,FRD,FRDvs,FRVar,S_MSE,TLCC}.py, as evaluate.py calls
them), with torch and a plain dynamic-programming DTW in place of tslearn."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilisten.metrics import FLAME_GROUPS, ccc, dtw, frcorr, frdist, frdiv, frdvs, frsyn, frvar


# ----------------------------------------------------------------- the official code, transcribed
def _off_corrcoef(x, y):
    c = np.cov(x, y)
    d = np.sqrt(np.diag(c))
    c = np.nan_to_num(c / d[:, None] / d[None, :])
    return np.clip(c, -1, 1)


def _off_ccc(y_true, y_pred):
    out = []
    for i in range(y_true.shape[1]):
        cor = _off_corrcoef(y_true[:, i], y_pred[:, i])[0][1]
        num = 2 * cor * np.std(y_true[:, i]) * np.std(y_pred[:, i])
        den = np.var(y_true[:, i]) + np.var(y_pred[:, i]) + (np.mean(y_true[:, i]) - np.mean(y_pred[:, i])) ** 2
        out.append(num / (den + 1e-8))
    return np.mean(out)


def _dp_dtw(a, b):   # tslearn.metrics.dtw's definition, by hand
    a, b = a.astype(np.float64), b.astype(np.float64)
    D = np.full((len(a) + 1, len(b) + 1), np.inf)
    D[0, 0] = 0
    for i in range(len(a)):
        for j in range(len(b)):
            D[i + 1, j + 1] = ((a[i] - b[j]) ** 2).sum() + min(D[i, j + 1], D[i + 1, j], D[i, j])
    return np.sqrt(D[-1, -1])


def _off_frc(pred, em, nb):
    out = []
    for k in range(pred.shape[0]):
        idx = np.argwhere(nb[k] == 1).reshape(-1)
        out.append(sum(max(_off_ccc(em[j], pred[k, i]) for j in idx) for i in range(pred.shape[1])))
    return np.mean(out)


def _off_frd(pred, em, nb, groups=((0, 15, 1 / 15), (15, 17, 1), (17, 25, 1 / 8))):
    out = []
    for k in range(pred.shape[0]):
        idx = np.argwhere(nb[k] == 1).reshape(-1)
        tot = 0
        for i in range(pred.shape[1]):
            tot += min(sum(w * _dp_dtw(pred[k, i].astype(np.float32)[:, s:e], em[j].astype(np.float32)[:, s:e])
                           for s, e, w in groups) for j in idx)
        out.append(tot)
    return np.mean(out)


def _off_smse(preds):
    preds = torch.as_tensor(preds)
    dist = 0
    for b in range(preds.shape[0]):
        item = preds[b]
        if item.shape[0] == 1:
            return 0.0
        flat = item.reshape(item.shape[0], -1)
        dist += torch.pow(torch.cdist(flat, flat), 2).sum() / (item.shape[0] * (item.shape[0] - 1) * flat.shape[1])
    return float(dist / preds.shape[0])


def _off_frvar(preds):
    return float(torch.mean(torch.var(torch.as_tensor(preds), dim=2)))


def _off_frdvs(preds):
    preds = torch.as_tensor(preds)
    p = preds.reshape(preds.shape[0], preds.shape[1], -1).transpose(0, 1)
    dist = torch.pow(torch.cdist(p, p), 2).sum() / (preds.shape[0] * (preds.shape[0] - 1) * preds.shape[1])
    return float(dist / p.shape[-1])


def _off_shift(x, y, lag):
    if lag > 0:
        return x[lag:], y[:-lag]
    if lag < 0:
        return x[:lag], y[-lag:]
    return x, y


def _off_tlcc(pred, sp, seconds=2, fps=25, first_only=True):
    offsets = []
    for k in range(sp.shape[0]):
        for i in range(pred.shape[1]):
            rs = []
            for lag in range(-int(seconds * fps - 1), int(seconds * fps)):
                pcc = []
                for d in range(sp.shape[-1]):
                    a, b = _off_shift(pred[k, i][:, d], sp[k][:, d], lag)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        pcc.append(np.corrcoef(a, b)[0, 1].item())
                rs.append(torch.mean(torch.Tensor(pcc)))
            offsets.append(abs(len(rs) // 2 - int(torch.argmax(torch.Tensor(rs)))))
            if first_only:
                break
    return float(np.mean(offsets))


def _case(rng, N=3, S=2, T=12, D=25):
    pred = rng.normal(size=(N, S, T, D)).astype(np.float32)
    gt = rng.normal(size=(N, T, D)).astype(np.float32)
    nb = (rng.random((N, N)) < 0.5).astype(int)
    nb[np.arange(N), np.arange(N)] = 1
    return pred, gt, nb


# ----------------------------------------------------------------- against the official code
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_react_metrics_equal_the_official_code(seed):
    rng = np.random.default_rng(seed)
    pred, gt, nb = _case(rng)
    pred[1, 0, :, 3] = 0.5        # a constant dimension: correlation 0 in FRCorr, NaN in TLCC
    assert frcorr(pred, gt, nb) == pytest.approx(_off_frc(pred, gt, nb), rel=1e-5)
    assert frdist(pred, gt, nb) == pytest.approx(_off_frd(pred, gt, nb), rel=1e-5)
    assert frdiv(pred) == pytest.approx(_off_smse(pred), rel=1e-4)
    assert frvar(pred) == pytest.approx(_off_frvar(pred), rel=1e-5)
    assert frdvs(pred) == pytest.approx(_off_frdvs(pred), rel=1e-4)
    T = 60
    pred, gt, nb = _case(rng, T=T)
    spk = np.cumsum(rng.normal(size=(3, T, 25)), 1).astype(np.float32)
    pred[:, :, 7:] = spk[:, None, :-7] + 0.3 * pred[:, :, 7:]     # follows the speaker 7 frames late
    pred[2, 0, :, 5] = 1.0
    for fps, sec in ((25, 2), (10, 1)):
        assert frsyn(pred, spk, fps=fps, seconds=sec) == _off_tlcc(pred, spk, sec, fps)
        assert frsyn(pred, spk, fps=fps, seconds=sec, all_samples=True) == _off_tlcc(pred, spk, sec, fps, False)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(2, 6), st.integers(0, 2 ** 16))
def test_dtw_is_tslearns_definition(d, n1, n2, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n1 + 1, d)), rng.normal(size=(n2, d))
    assert dtw(a, b) == pytest.approx(_dp_dtw(a, b), rel=1e-9)


# ----------------------------------------------------------------- hand-built cases
def test_ccc_by_hand():
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    assert ccc(x, x) == pytest.approx(1.0, abs=1e-7)
    assert ccc(x, -x) == pytest.approx(-2 * 1.25 / (1.25 + 1.25 + 25), abs=1e-7)   # means 2.5 vs -2.5
    assert ccc(x, x + 1) == pytest.approx(2 * 1.25 / (2.5 + 1), abs=1e-7)
    assert ccc(x, np.ones_like(x)) == 0.0


def test_dtw_by_hand():
    # [0, 1, 2] vs [0, 2]: the best path pairs 1 with 0 or 2 (cost 1): sqrt(1) = 1
    assert dtw(np.array([[0.0], [1.0], [2.0]]), np.array([[0.0], [2.0]])) == pytest.approx(1.0)
    assert dtw(np.zeros((4, 2)), np.zeros((7, 2))) == 0.0


def test_diversity_and_variance_by_hand():
    # one clip, two samples of one frame-pair: ||a - b||^2 = 4 + 0, per element of T*D = 2: 2 * 4 / (2 * 1 * 2)
    pred = np.array([[[[0.0], [0.0]], [[2.0], [0.0]]]])   # (1, 2, 2, 1)
    assert frdiv(pred) == pytest.approx(2.0)
    assert frvar(pred) == pytest.approx(np.mean([0.0, 2.0]))   # unbiased var of (2, 0) is 2
    two = np.stack([pred[0], pred[0] + 1])                      # (2, 2, 2, 1): clips differ by 1 everywhere
    assert frdvs(two) == pytest.approx(1.0)
    assert frdiv(pred[:, :1]) == 0.0


def test_frcorr_frdist_take_the_best_appropriate_reaction():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(2, 20, 4))
    pred = np.stack([np.stack([gt[1], gt[1]]), np.stack([gt[0], gt[1]])])   # (2, 2, 20, 4)
    groups = ((0, 4, 1.0),)
    assert frdist(pred, gt, np.ones((2, 2)), groups=groups) == pytest.approx(0.0, abs=1e-5)
    assert frcorr(pred, gt, np.ones((2, 2))) == pytest.approx(2.0, abs=1e-6)    # a sum over the 2 samples
    assert frdist(pred, gt, np.eye(2), groups=groups) > 0
    with pytest.raises(ValueError, match="appropriate"):
        frcorr(pred, gt, np.zeros((2, 2)))


def test_frsyn_finds_the_lag():
    rng = np.random.default_rng(4)
    spk = np.cumsum(rng.normal(size=(1, 80, 3)), 1)
    pred = np.zeros((1, 1, 80, 3))
    pred[0, 0, 5:] = spk[0, :-5]
    assert frsyn(pred, spk, fps=10, seconds=2) == 5


def test_flame_groups_cover_the_motion():
    assert [(s, e) for s, e, _ in FLAME_GROUPS] == [(0, 50), (50, 56)]
