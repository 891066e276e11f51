"""Many appropriate reactions (the REACT challenge's protocol): S sampled reactions per speaker clip from each
method, the appropriateness matrix, and the REACT table (FRCorr, FRDist, FRDiv, FRVar, FRDvs, FRSyn of
:mod:`minilisten.metrics`, FLAME groups). What the table shows and does not: docs/results.md."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from .data.synthetic import listener_alternatives
from .data.windows import test_clips
from .errors import UserError
from .metrics import FLAME_GROUPS, frcorr, frdist, frdiv, frdvs, frsyn, frvar

TEMPERATURES = (0.5, 0.7, 1.0, 1.3)   # the grid Ours' sampling temperature is chosen from, on val
COLUMNS = (("frcorr", "FRCorr ↑", 1), ("frdist", "FRDist ↓", 1), ("frdiv", "FRDiv ↑", 1), ("frvar", "FRVar", 1),
           ("frdvs", "FRDvs ↑", 1), ("frsyn", "FRSyn ↓", 1))


def appropriate_set(ds, segments, limit: int = 0):
    """``(clips, listener_gt (N', T, 56), appropriate (N, N'), what)`` for the evaluation clips (:func:`test_clips`)
    of ``segments`` of their most common length (REACT scores equal-length clips): on a synthetic corpus every
    identity's response to the same speaker is appropriate (N' = N * identities); on other data only the clip's own
    listener (identity)."""
    clips = test_clips(segments, limit)
    if not clips:
        raise UserError("segments: expected segments of >= 16 frames for the REACT table, got none")
    counts = Counter(c.T for c in clips)
    T = max(counts, key=lambda n: (counts[n], n))
    keep = [i for i, c in enumerate(clips) if c.T == T]
    clips = [clips[i] for i in keep]
    if "world" not in ds.info:
        own = np.stack([c.listener_motion for c in clips])
        return clips, own, np.eye(len(clips), dtype=np.int64), "one listener per clip (appropriate = identity)"
    alts = [listener_alternatives(ds, s) for s in segments]
    M = len(alts[0])
    per = []   # per identity m: its reactions cut into clips as the segments are
    for m in range(M):
        variant = [replace(s, listener_motion=a[m]) for s, a in zip(segments, alts)]
        per.append([c.listener_motion for c in test_clips(variant, limit)])
    gt = np.stack([per[m][i] for i in keep for m in range(M)])
    appropriate = np.kron(np.eye(len(clips), dtype=np.int64), np.ones((1, M), np.int64))
    return clips, gt, appropriate, f"{M} appropriate reactions per clip (each identity's response to the same speaker)"


def react_scores(pred: np.ndarray, listener_gt, appropriate, speaker_gt, fps: float) -> dict[str, float]:
    """The six REACT metrics of ``pred`` (N, S, T, 56) on FLAME motion (:data:`FLAME_GROUPS`)."""
    return dict(frcorr=frcorr(pred, listener_gt, appropriate),
                frdist=frdist(pred, listener_gt, appropriate, groups=FLAME_GROUPS),
                frdiv=frdiv(pred), frvar=frvar(pred), frdvs=frdvs(pred),
                frsyn=frsyn(pred, speaker_gt, fps=fps))


def sampled_reactions(clips, train, samples: int, seed: int = 0, lm=None, vq=None, sampling=None, arig=None,
                      batch: int = 16) -> dict[str, np.ndarray]:
    """Method -> reactions ``(N, S, T, 56)`` for the REACT table: Ours sampled (S draws, one batch), ARIG-style (S
    seeds), Random (S seeds); Ours greedy, NN facial motion and GT are deterministic: their one reaction S times
    (REACT sums FRCorr and FRDist over the samples, so every row needs S)."""
    from .arig import arig_generate
    from .baselines import NNFacialMotion, RandomListener, predict_all
    from .generate import generate_motion
    rows = {}
    if lm is not None:
        rows[f"Ours sampled (T={sampling.temperature:g}, top-p={sampling.top_p:g})"] = np.stack(
            generate_motion(lm, vq, clips, batch, sampling=sampling, samples=samples, seed=seed)[1])
        rows["Ours greedy"] = np.stack(generate_motion(lm, vq, clips, batch)[1])
    if arig is not None:
        rows["ARIG-style"] = np.stack([np.stack(arig_generate(arig, clips, seed=seed + s * len(clips)))
                                       for s in range(samples)], 1)
    rows["Random"] = np.stack([np.stack(predict_all(RandomListener(seed=seed + s).fit(train), clips))
                               for s in range(samples)], 1)
    rows["NN facial motion"] = np.stack(predict_all(NNFacialMotion(window=clips[0].T, seed=seed).fit(train), clips))
    rows["GT"] = np.stack([c.listener_motion for c in clips])
    return {k: np.repeat(v[:, None], samples, 1) if v.ndim == 3 else v for k, v in rows.items()}


def react_table(ds, split: str, samples: int, seed: int = 0, lm=None, vq=None, sampling=None, arig=None,
                limit: int = 0, batch: int = 16) -> tuple[dict[str, dict], str]:
    """REACT scores of every method on ``split`` of ``ds`` and a line saying what is appropriate."""
    clips, gt, appropriate, what = appropriate_set(ds, getattr(ds, split), limit)
    speaker = np.stack([c.speaker_motion for c in clips])
    preds = sampled_reactions(clips, ds.train, samples, seed, lm, vq, sampling, arig, batch)
    rows = {name: react_scores(p, gt, appropriate, speaker, clips[0].fps) for name, p in preds.items()}
    return rows, f"{len(clips)} clips of {clips[0].T} frames, {samples} samples; {what}"


def choose_sampling(ds, samplings, samples: int, lm, vq, seed: int = 0, limit: int = 0,
                    batch: int = 16) -> tuple:
    """The sampling of the lowest FRDist on the validation split (never the test split): ``(best, {sampling:
    FRDist})``."""
    from .generate import generate_motion
    if not ds.val:
        raise UserError("--temperature: choosing one needs a validation split, the data has none; pass one value")
    clips, gt, appropriate, _ = appropriate_set(ds, ds.val, limit)
    found = {}
    for s in samplings:
        pred = np.stack(generate_motion(lm, vq, clips, batch, sampling=s, samples=samples, seed=seed)[1])
        found[s] = frdist(pred, gt, appropriate, groups=FLAME_GROUPS)
    return min(found, key=found.get), found
