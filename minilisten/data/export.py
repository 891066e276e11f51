"""Write corpora in peers' on-disk layouts, so that data made here (e.g. a synthetic variant) can be
fed to LM-listener's code, and so that tests and benchmarks exercise our readers on files in the
exact layout a researcher downloads (the readers are in :mod:`minilisten.data.formats`).

- :func:`save_lm_listener`: ``segments_{train,val,test}.pth`` (lists of dicts, p0 = listener,
  ``p{0,1}_{exp,pose,shape}``, absolute ``split_start_frame``/``split_end_frame``, words as
  ``{"text", "end"}`` in absolute seconds) + ``mean.npy`` / ``std.npy``. What the layout cannot
  hold is dropped, as in LM-listener's public release: SA tokens, emotion, valence, word starts,
  listener ids (the reader names the listener after the directory).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .segment import N_EXP, N_SHAPE
from .windows import motion_stats

_GAP_FRAMES = 300  # frames between consecutive segments of one fake "video" (absolute timeline)


def _lm_record(seg, start: int) -> dict:
    t0 = start / seg.fps
    def part(m):
        return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))
    beta = np.zeros(N_SHAPE, np.float32) if seg.listener_beta is None else seg.listener_beta
    sbeta = np.zeros(N_SHAPE, np.float32) if seg.speaker_beta is None else seg.speaker_beta
    return {
        "fname": f"{seg.name}.mp4", "split_start_frame": int(start), "split_end_frame": int(start + seg.T),
        "p0_exp": part(seg.listener_motion[:, :N_EXP]), "p0_pose": part(seg.listener_motion[:, N_EXP:]),
        "p0_shape": part(np.repeat(beta[None], seg.T, 0)),
        "p1_exp": part(seg.speaker_motion[:, :N_EXP]), "p1_pose": part(seg.speaker_motion[:, N_EXP:]),
        "p1_shape": part(np.repeat(sbeta[None], seg.T, 0)),
        "before_words": [{"text": w.text, "end": float(t0 + w.end)} for w in seg.history_words],
        "during_words": [{"text": w.text, "end": float(t0 + w.end)} for w in seg.words],
    }


def save_lm_listener(corpus, directory: str | os.PathLike, *, with_beta: bool = True) -> Path:
    """Write ``corpus`` (``.train/.val/.test`` of Segments) in LM-listener's layout.

    ``with_beta=False`` writes no ``p{0,1}_shape`` (a source without shape estimates). Statistics
    (``mean.npy``/``std.npy``, (56,)) are those of the training listener motion."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        recs = []
        for i, seg in enumerate(getattr(corpus, split)):
            rec = _lm_record(seg, _GAP_FRAMES + i * (seg.T + _GAP_FRAMES))
            if not with_beta:
                rec.pop("p0_shape"), rec.pop("p1_shape")
            recs.append(rec)
        torch.save(recs, d / f"segments_{split}.pth")
    mean, std = motion_stats(corpus.train)
    np.save(d / "mean.npy", mean.astype(np.float32))
    np.save(d / "std.npy", std.astype(np.float32))
    return d
