"""The paper's evaluation metrics (Tables 1, 4, 5) with LM-listener's conventions (its ``evaluate_listener.py``):
per clip on raw 56-d coefficients ``(T, 56)`` (expression ``[0:50]`` and pose ``[50:56]`` jointly), averaged over
clips; FD exact in float64 through a nuclear norm (docs/results.md, "Metrics"). The REACT family (``fr*``) takes the
REACT 2023/2024 challenge's shapes and defaults: ``pred (N, S, T, D)`` with S samples per clip, ground truths
``(N, T, D)``, ``appropriate (N, N)`` 0/1 (row k: the listener reactions appropriate for clip k).
"""
from __future__ import annotations

import numpy as np

from .data.segment import D_MOTION, EXP, POSE
from .errors import UserError

PARTS = (("exp", EXP), ("pose", POSE))   # DIM's split of the 56 coefficients
REACT_GROUPS = ((0, 15, 1 / 15), (15, 17, 1.0), (17, 25, 1 / 8))   # 15 AUs, valence + arousal, 8 expressions
FLAME_GROUPS = ((0, 50, 1 / 50), (50, 56, 1 / 6))                 # FLAME expression, pose (head + jaw)


def _array(name: str, x, ndim: int | None = 2, dim: int | None = None, min_frames: int = 1, like=None) -> np.ndarray:
    """``x`` checked as a finite float64 array; ``like=(ref_name, shape)``: of exactly that shape."""
    if x is None:
        raise UserError(f"{name}: expected an array, got None")
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if ndim is not None and (a.ndim != ndim or dim not in (None, a.shape[-1])):
        want = "(T,)" if ndim == 1 else f"(T, {dim or 'D'})"
        raise UserError(f"{name}: expected shape {want}, got {a.shape}")
    if like is not None and a.shape != like[1]:
        raise UserError(f"{name}: expected shape {like[1]} (as {like[0]}), got {a.shape}")
    if a.dtype.kind not in "fiu":
        raise UserError(f"{name}: expected a real-valued array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if (len(a) if a.ndim else 0) < min_frames:
        raise UserError(f"{name}: expected at least {min_frames} frames, got {len(a) if a.ndim else 0}")
    if not np.isfinite(a).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise UserError(f"{name}: expected finite values, got {a[bad]} at index {bad}")
    return a


def _pair(pred, gt, ndim: int | None = 2, dim: int | None = None, min_frames: int = 1, names=("pred", "gt")):
    g = _array(names[1], gt, ndim, dim, min_frames)
    return _array(names[0], pred, ndim, dim, min_frames, like=(names[1], g.shape)), g


def l2(pred, gt, ndim: int | None = 2, names=("pred", "gt")) -> float:
    """Mean squared error of ``pred`` and ``gt``, ``(T, D)`` (``ndim=None``: any) of one shape."""
    p, g = _pair(pred, gt, ndim, names=names)
    return float(np.mean((p - g) ** 2))


def _cov_factor(x: np.ndarray, eps: float) -> np.ndarray:
    """``A`` with ``A^T A = cov(x) + eps I`` (``np.cov``, ddof 1)."""
    a = (x - x.mean(0)) / np.sqrt(x.shape[0] - 1)
    if eps > 0:
        a = np.vstack([a, np.sqrt(eps) * np.eye(x.shape[1])])
    return np.linalg.qr(a, mode="r")


def fd(pred, gt, eps: float = 0.0, split: bool = False):
    """Fréchet distance of Gaussians fitted to the frames of ``pred (T1, D)`` and ``gt (T2, D)`` (``eps`` added to the
    covariances' diagonals); ``split=True`` (DIM, D = 56): ``{"exp": FD of [0:50], "pose": FD of [50:56]}``."""
    g = _array("gt", gt, 2, D_MOTION if split else None, min_frames=2)
    p = _array("pred", pred, 2, g.shape[1], min_frames=2)
    if split:
        return {k: fd(p[:, sl], g[:, sl], eps) for k, sl in PARTS}
    if not eps >= 0:
        raise UserError(f"eps: expected a number >= 0, got {eps!r}")
    a1, a2 = _cov_factor(p, eps), _cov_factor(g, eps)
    diff = p.mean(0) - g.mean(0)
    tr_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()   # tr sqrtm(S1 S2)
    d = diff @ diff + (a1 ** 2).sum() + (a2 ** 2).sum() - 2.0 * tr_sqrt
    return float(max(d, 0.0))


def pfd(pred, gt, speaker, eps: float = 0.0, split: bool = False):
    """Paired FD of ``[speaker, pred]`` against ``[speaker, gt]`` (all ``(T, 56)``); ``split`` as :func:`fd`."""
    p, g = _pair(pred, gt, 2, D_MOTION, 2)
    s = _array("speaker", speaker, 2, D_MOTION, 2, like=("gt", g.shape))
    if not split:
        return fd(np.hstack([s, p]), np.hstack([s, g]), eps)
    return {k: fd(np.hstack([s[:, sl], p[:, sl]]), np.hstack([s[:, sl], g[:, sl]]), eps) for k, sl in PARTS}


def variation(x) -> float:
    """Per-coefficient variance over time (ddof 0), averaged over coefficients. ``x: (T, D)``."""
    a = _array("motion", x)
    return float(np.var(a - a[:1], axis=0).mean())     # shifted by frame 0: a constant gives exactly 0


def diversity_pairs(T: int, n_pairs: int | None = None, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """The frame pairs of ``diversity``: two draws of ``n_pairs`` (default 30; 10 when ``T <= 30``) of ``range(T)``."""
    if n_pairs is not None and (isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 1):
        raise UserError(f"diversity: n_pairs: expected None or an int >= 1, got {n_pairs!r}")
    n = n_pairs if n_pairs is not None else (30 if T > 30 else 10)
    if not T > n:
        raise UserError(f"diversity: expected more than {n} frames for {n} random pairs, got {T}")
    rng = np.random.default_rng(seed)
    return rng.choice(T, n, replace=False), rng.choice(T, n, replace=False)


def diversity(x, n_pairs: int | None = None, seed=0, pairs=None) -> float:
    """Mean Euclidean distance between random frame pairs (or ``pairs=(i, j)``) of one clip ``x (T, D)``."""
    a = _array("motion", x)
    i, j = pairs if pairs is not None else diversity_pairs(a.shape[0], n_pairs, seed)
    if len(i) == 0 or len(i) != len(j):
        raise UserError(f"diversity: pairs: expected two index lists of one length >= 1, got {len(i)} and {len(j)}")
    return float(np.linalg.norm(a[np.asarray(i)] - a[np.asarray(j)], axis=1).mean())


def l2_affect(pred_valence, gt_valence, fps: float = 30, window_s: float = 1.0) -> float:
    """MSE between valences ``(T,)`` averaged over windows of ``round(fps * window_s)`` frames (docs/results.md)."""
    p, g = _pair(pred_valence, gt_valence, ndim=1, names=("pred_valence", "gt_valence"))
    w = int(round(fps * window_s))
    if w < 1:
        raise UserError(f"fps * window_s: expected at least 1 frame, got {fps} * {window_s}")
    w = min(w, p.shape[0])
    n = p.shape[0] // w
    pm, gm = p[: n * w].reshape(n, w).mean(1), g[: n * w].reshape(n, w).mean(1)
    return float(np.mean((pm - gm) ** 2))


class ValenceRegressor:
    """Valence from listener motion: ridge regression on standardized 56-d frames, fitted on the training split; our
    offline stand-in for the paper's EMOCA emotion network (generated motion has no valence label)."""

    def __init__(self, alpha: float = 1.0):
        if not alpha >= 0:
            raise UserError(f"alpha: expected a number >= 0, got {alpha!r}")
        self.alpha, self.coef = float(alpha), None

    def fit(self, motions, valences) -> "ValenceRegressor":
        """``motions``: list of ``(T_i, 56)``, ``valences``: list of ``(T_i,)``."""
        if len(motions) == 0 or len(valences) != len(motions):
            raise UserError(f"motions, valences: expected two non-empty lists of one length, got {len(motions)} "
                            f"and {len(valences)} arrays")
        xs = [_array(f"motions[{i}]", m, 2, D_MOTION) for i, m in enumerate(motions)]
        ys = [_array(f"valences[{i}]", v, 1, like=(f"motions[{i}]", x.shape[:1]))
              for i, (v, x) in enumerate(zip(valences, xs))]
        x, y = np.vstack(xs), np.concatenate(ys)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-8
        z = (x - self.mean) / self.std
        self.intercept = float(y.mean())
        self.coef = np.linalg.solve(z.T @ z + self.alpha * np.eye(z.shape[1]), z.T @ (y - self.intercept))
        return self

    def predict(self, motion) -> np.ndarray:
        """``motion: (T, 56)`` -> valence ``(T,)``."""
        if self.coef is None:
            raise UserError("ValenceRegressor: expected a fitted model (call fit first), got an unfitted one")
        return (_array("motion", motion, 2, self.coef.shape[0]) - self.mean) / self.std @ self.coef + self.intercept


def vq_rec(recon, gt) -> float:
    """Reconstruction (Table 5): MSE between decoded and ground-truth motion (any equal shapes)."""
    return l2(recon, gt, None, ("recon", "gt"))


def vq_commit(z_e, z_q) -> float:
    """Commitment (Table 5): MSE between encoder outputs and their quantized codes (any equal shapes)."""
    return l2(z_e, z_q, None, ("z_e", "z_q"))


def perplexity(codes, n_codes: int) -> float:
    """``exp(-sum_k p_k log(p_k + 1e-7))`` of the histogram of ``codes`` (ints in ``[0, n_codes)``, any shape)."""
    c = np.asarray(codes.detach().cpu() if hasattr(codes, "detach") else codes)
    if c.size == 0 or not np.issubdtype(c.dtype, np.integer):
        raise UserError(f"codes: expected a non-empty integer array, got shape {c.shape} dtype {c.dtype}")
    if c.min() < 0 or c.max() >= n_codes:
        raise UserError(f"codes: expected values in [0, {n_codes}), got range [{c.min()}, {c.max()}]")
    p = np.bincount(c.ravel(), minlength=n_codes) / c.size
    return float(np.exp(-(p * np.log(p + 1e-7)).sum()))


def clip_metrics(pred, gt, speaker, pred_valence=None, gt_valence=None, fps: float = 30, seed=0) -> dict[str, float]:
    """All Table 1 columns for one clip: ``pred, gt, speaker (T, 56)``, valences ``(T,)``; one draw of pairs."""
    p, g = _pair(pred, gt, 2, D_MOTION, 2)
    pairs = diversity_pairs(p.shape[0], seed=seed)
    out = {"l2": l2(p, g), "fd": fd(p, g), "pfd": pfd(p, g, speaker),
           "variation": variation(p), "diversity": diversity(p, pairs=pairs),
           "variation_gt": variation(g), "diversity_gt": diversity(g, pairs=pairs)}
    if pred_valence is not None or gt_valence is not None:
        gv = _array("gt_valence", gt_valence, 1, like=("gt", p.shape[:1]))
        out["l2_affect"] = l2_affect(pred_valence, gv, fps)
    return out


def evaluate_clips(pred, gt, speaker, pred_valence=None, gt_valence=None, fps: float = 30,
                   seed: int = 0) -> dict[str, float]:
    """Table 1 over lists of clips: the unweighted mean of :func:`clip_metrics` (seed ``(seed, i)``) and ``n_clips``."""
    lists = {"gt": gt, "pred": pred, "speaker": speaker}
    if pred_valence is not None or gt_valence is not None:
        lists.update(pred_valence=pred_valence, gt_valence=gt_valence)
    n = 0 if gt is None else len(gt)
    for name, v in lists.items():
        if v is None or n == 0 or len(v) != n:
            raise UserError(f"{name}: expected a list of {n or '>= 1'} clips (as gt), got "
                            f"{'None' if v is None else len(v)}")
    pv, gv = ([None] * n if v is None else v for v in (pred_valence, gt_valence))
    rows = []
    for i in range(n):
        try:
            rows.append(clip_metrics(pred[i], gt[i], speaker[i], pv[i], gv[i], fps, (seed, i)))
        except UserError as e:
            raise UserError(f"clip {i}: {e}") from None
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"n_clips": n}


def score(preds: list[np.ndarray], clips, valence_model: ValenceRegressor | None = None, seed: int = 0) -> dict:
    """Table 1 metrics of ``preds`` (one ``(T, 56)`` per clip) on ``clips`` (Segments); L2 Affect with a model."""
    kw = {}
    if valence_model is not None:
        kw = dict(pred_valence=[valence_model.predict(p) for p in preds], gt_valence=[c.valence for c in clips])
    return evaluate_clips(preds, [c.listener_motion for c in clips], [c.speaker_motion for c in clips],
                          fps=clips[0].fps, seed=seed, **kw)


def evaluate(preds: dict[str, list[np.ndarray]], clips, train, seed: int = 0) -> dict[str, dict]:
    """:func:`score` of every method of ``preds`` (name -> motion per clip); L2 Affect (a :class:`ValenceRegressor`
    fitted on ``train``) when ``train`` and ``clips`` all have valence."""
    valence = None
    if all(s.valence is not None for s in list(train) + list(clips)):
        valence = ValenceRegressor().fit([s.listener_motion for s in train], [s.valence for s in train])
    return {name: score(p, clips, valence, seed) for name, p in preds.items()}


def _react_inputs(pred, gt=None, appropriate=None):
    """``pred (N, S, T, D)``, ``gt (N', T, D)`` (N' = N without ``appropriate``), ``appropriate (N, N')`` -> bool."""
    pred = np.asarray(pred, np.float64)
    if pred.ndim != 4 or pred.shape[0] < 1 or pred.shape[1] < 1:
        raise UserError(f"pred: expected shape (N, S, T, D) with N, S >= 1, got {pred.shape}")
    if gt is not None:
        gt = np.asarray(gt, np.float64)
        n = "N'" if appropriate is not None else pred.shape[0]
        if gt.ndim != 3 or gt.shape[1:] != pred.shape[2:] or (appropriate is None and len(gt) != len(pred)):
            raise UserError(f"ground truth: expected shape ({n}, {pred.shape[2]}, {pred.shape[3]}), got {gt.shape}")
    if appropriate is not None:
        appropriate = np.asarray(appropriate) == 1
        want = (pred.shape[0], gt.shape[0])
        if appropriate.shape != want or not appropriate.any(1).all():
            raise UserError(f"appropriate: expected a {want} 0/1 matrix with a 1 in every row, got shape "
                            f"{appropriate.shape}" + ("" if appropriate.shape != want else ", a row without a 1"))
    return pred, gt, appropriate


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Concordance correlation of (T, D) arrays, averaged over D, as REACT computes it (docs/results.md)."""
    mx, my, vx, vy = x.mean(0), y.mean(0), x.var(0), y.var(0)
    cov = ((x - mx) * (y - my)).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.nan_to_num(np.clip(cov / np.sqrt(vx * vy), -1, 1))
    return float(np.mean(2 * r * np.sqrt(vx * vy) / (vx + vy + (mx - my) ** 2 + 1e-8)))


def dtw(x: np.ndarray, y: np.ndarray) -> float:
    """DTW distance of (T, d) and (T', d) as tslearn.metrics.dtw defines it, by dtaidistance's C code."""
    from dtaidistance import dtw_ndim
    return float(dtw_ndim.distance(np.ascontiguousarray(x, np.float64), np.ascontiguousarray(y, np.float64),
                                   use_c=True))


def _best_sum(pred, gt, ok, dist, best) -> float:
    """Mean over clips k of the sum over k's samples of the ``best`` (min/max) ``dist`` to an appropriate gt."""
    return float(np.mean([sum(best(dist(p, gt[j]) for j in np.flatnonzero(ok[k])) for p in pred[k])
                          for k in range(len(pred))]))


def frcorr(pred, listener_gt, appropriate) -> float:
    """FRCorr ↑: mean over clips of the sum over samples of the best CCC with an appropriate reaction."""
    return _best_sum(*_react_inputs(pred, listener_gt, appropriate), ccc, max)


def frdist(pred, listener_gt, appropriate, groups=REACT_GROUPS) -> float:
    """FRDist ↓: mean over clips of the sum over samples of the smallest group-weighted DTW to an appropriate one."""
    pred, gt, ok = _react_inputs(pred, listener_gt, appropriate)

    def dist(a, b):
        return sum(w * dtw(a[:, s:e], b[:, s:e]) for s, e, w in groups)
    return _best_sum(pred.astype(np.float32), gt.astype(np.float32), ok, dist, min)


def _spread(x: np.ndarray) -> float:
    """``(G, M, F)`` -> the mean over G of the mean squared distance between its M rows, per element."""
    from scipy.spatial.distance import pdist
    G, M, F = x.shape
    return float(np.mean([2 * pdist(a, "sqeuclidean").sum() for a in x]) / (M * (M - 1) * F))


def frdiv(pred) -> float:
    """FRDiv ↑ (REACT's S-MSE): mean squared distance between the S samples of a clip, per element; 0 if S = 1."""
    pred = _react_inputs(pred)[0]
    return 0.0 if pred.shape[1] == 1 else _spread(pred.reshape(*pred.shape[:2], -1))


def frvar(pred) -> float:
    """FRVar: variance over time (unbiased, as torch.var), averaged over clips, samples and dimensions."""
    pred = _react_inputs(pred)[0]
    return float(pred.var(axis=2, ddof=1).mean()) if pred.shape[2] > 1 else float("nan")


def frdvs(pred) -> float:
    """FRDvs ↑: mean squared distance between clips' reactions for the same sample index, per element."""
    pred = _react_inputs(pred)[0]
    return float("nan") if pred.shape[0] == 1 else _spread(pred.reshape(*pred.shape[:2], -1).transpose(1, 0, 2))


def _tlcc_offset(x: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    """|lag| of the peak dimension-averaged Pearson correlation (REACT's calculate_tlcc: a NaN wins, as argmax)."""
    rs = []
    for lag in range(-max_lag, max_lag + 1):
        a, b = (x[lag:], y[:len(y) - lag]) if lag > 0 else (x[:len(x) + lag], y[-lag:]) if lag < 0 else (x, y)
        a, b = a - a.mean(0), b - b.mean(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rs.append(np.mean((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))))
    return abs(max_lag - int(np.argmax(rs)))   # np.argmax: the first NaN if any


def frsyn(pred, speaker_gt, fps: float = 25.0, seconds: float = 2.0, all_samples: bool = False) -> float:
    """FRSyn ↓ (REACT's TLCC): mean |lag| in frames of the peak cross-correlation of a reaction with its speaker; of
    each clip's first sample, as REACT's evaluate.py, unless ``all_samples`` (docs/results.md)."""
    pred, spk, _ = _react_inputs(pred, speaker_gt)
    max_lag = int(seconds * fps) - 1
    S = pred.shape[1] if all_samples else 1
    return float(np.mean([_tlcc_offset(pred[k, i], spk[k], max_lag) for k in range(len(pred)) for i in range(S)]))
