"""Write corpora in peers' layouts (LM-listener), so that data made here can feed their code and our
readers are tested on the files a researcher downloads. What the layout cannot hold is dropped (SA
tokens, emotion, valence, word starts, listener ids), as in LM-listener's public release."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .segment import N_EXP, N_SHAPE
from .windows import motion_stats

_GAP_FRAMES = 300  # frames between consecutive segments of one fake "video" (absolute timeline)


def _lm_record(seg, start: int, with_beta: bool) -> dict:
    t0 = start / seg.fps
    rec = {"fname": f"{seg.name}.mp4", "split_start_frame": int(start), "split_end_frame": int(start + seg.T),
           "before_words": [{"text": w.text, "end": float(t0 + w.end)} for w in seg.history_words],
           "during_words": [{"text": w.text, "end": float(t0 + w.end)} for w in seg.words]}
    for p, motion, beta in ((0, seg.listener_motion, seg.listener_beta), (1, seg.speaker_motion, seg.speaker_beta)):
        rec[f"p{p}_exp"] = torch.tensor(motion[:, :N_EXP])
        rec[f"p{p}_pose"] = torch.tensor(motion[:, N_EXP:])
        if with_beta:
            beta = np.zeros(N_SHAPE, np.float32) if beta is None else beta
            rec[f"p{p}_shape"] = torch.tensor(beta).repeat(seg.T, 1)
    return rec


def save_lm_listener(corpus, directory: str | os.PathLike, *, with_beta: bool = True) -> Path:
    """Write ``corpus`` (``.train/.val/.test``) as ``segments_{split}.pth`` (p0 = listener) + train listener
    ``mean.npy``/``std.npy`` (56,); ``with_beta=False`` writes no ``p{0,1}_shape``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        recs = [_lm_record(seg, _GAP_FRAMES + i * (seg.T + _GAP_FRAMES), with_beta)
                for i, seg in enumerate(getattr(corpus, split))]
        torch.save(recs, d / f"segments_{split}.pth")
    mean, std = motion_stats(corpus.train)
    np.save(d / "mean.npy", mean)
    np.save(d / "std.npy", std)
    return d
