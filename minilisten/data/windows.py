"""Statistics and evaluation clips over Segments.

- :func:`motion_stats`: per-dimension mean/std ``(56,)`` of listener (or speaker) motion, as the
  peers use to normalize (float64 accumulation, two passes).
- :func:`lm_listener_eval_clips`: LM-listener's evaluation clips of a segment (SYSTEM.md §8).

The trainers cut their own training windows (``train_vq.CropSampler``: random crops;
``train_lm``: windows of ``Segment.window``); fixed windows of a segment are ``Segment.windows``.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from .segment import D_MOTION, Segment

log = logging.getLogger("minilisten.data")

#: LM-listener's evaluation protocol (its dataset_tokenize.py with --delay-start-frames 96,
#: --max-motion-length 240, min_motion_len 24, unit_length 8).
EVAL_START, EVAL_LENGTH, EVAL_MIN_LENGTH, EVAL_UNIT = 96, 240, 24, 8


def motion_stats(segments: Sequence[Segment], which: str = "listener",
                 min_std: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 0) over all frames of ``segments``: two ``(56,)`` float32 arrays.

    ``which``: ``"listener"``, ``"speaker"`` or ``"both"``. Sums run in float64 (mean first, then
    squared deviations, so no E[x²]−E[x]² cancellation). A dimension whose std is below
    ``min_std`` (constant in the data) gets std 1.0 so normalizing it stays finite; this is
    logged with the dimensions concerned.
    """
    keys = {"listener": ("listener_motion",), "speaker": ("speaker_motion",),
            "both": ("listener_motion", "speaker_motion")}.get(which)
    if keys is None:
        raise ValueError(f"which: expected 'listener', 'speaker' or 'both', got {which!r}")
    if len(segments) == 0:
        raise ValueError("segments: expected at least one Segment to compute statistics, got 0")
    total = np.zeros(D_MOTION, np.float64)
    n = 0
    for s in segments:
        for k in keys:
            x = getattr(s, k)
            total += x.sum(0, dtype=np.float64)
            n += x.shape[0]
    mean = total / n
    sq = np.zeros(D_MOTION, np.float64)
    for s in segments:
        for k in keys:
            sq += ((getattr(s, k).astype(np.float64) - mean) ** 2).sum(0)
    std = np.sqrt(sq / n)
    flat = std < min_std
    if flat.any():
        log.warning("motion_stats: %d constant dimension(s) %s (std < %g) get std 1.0",
                    int(flat.sum()), np.flatnonzero(flat).tolist(), min_std)
        std[flat] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def lm_listener_eval_clips(segment: Segment, start: int = EVAL_START, length: int = EVAL_LENGTH,
                           min_length: int = EVAL_MIN_LENGTH, unit: int = EVAL_UNIT) -> list[Segment]:
    """LM-listener's evaluation clips of one segment, as Segments (words re-based, history words
    within 3 s). Clip starts ``start, start + length, ...`` (< T); a clip has
    ``L = min(T − s, length)`` frames, is kept when ``L >= min_length`` and is cut to
    ``L // unit * unit`` frames. The peer takes that shorter crop at a random offset inside the
    ``L`` frames; we take it at offset 0 so evaluation is deterministic."""
    if not (start >= 0 and length >= unit >= 1 and min_length >= 1):
        raise ValueError(f"lm_listener_eval_clips: expected start >= 0 and length >= unit >= 1, min_length >= 1, "
                         f"got start={start}, length={length}, unit={unit}, min_length={min_length}")
    clips = []
    for s in range(start, segment.T, length):
        n = min(segment.T - s, length)
        if n >= min_length and n // unit * unit >= unit:
            clips.append(segment.window(s, n // unit * unit))
    return clips
