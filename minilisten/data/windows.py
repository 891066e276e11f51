"""Statistics and evaluation clips over Segments: :func:`motion_stats` (per-dimension mean/std ``(56,)``),
LM-listener's evaluation clips of a segment (:func:`lm_listener_eval_clips`, SYSTEM.md §8) and the clips every
evaluation scores (:func:`test_clips`)."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..errors import UserError
from .segment import Segment

log = logging.getLogger("minilisten.data")

#: LM-listener's evaluation protocol (its dataset_tokenize.py with --delay-start-frames 96,
#: --max-motion-length 240, min_motion_len 24, unit_length 8).
EVAL_START, EVAL_LENGTH, EVAL_MIN_LENGTH, EVAL_UNIT = 96, 240, 24, 8


def motion_stats(segments: Sequence[Segment], which: str = "listener",
                 min_std: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 0, float64 two-pass) of ``which`` motion (listener, speaker or both) over all frames of
    ``segments``: two ``(56,)`` float32 arrays; a constant dimension (std < ``min_std``) gets std 1.0, logged."""
    keys = {"listener": ("listener_motion",), "speaker": ("speaker_motion",),
            "both": ("listener_motion", "speaker_motion")}.get(which)
    if keys is None:
        raise UserError(f"which: expected 'listener', 'speaker' or 'both', got {which!r}")
    if len(segments) == 0:
        raise UserError("segments: expected at least one Segment to compute statistics, got 0")
    xs = [getattr(s, k) for s in segments for k in keys]
    n = sum(x.shape[0] for x in xs)
    mean = sum(x.sum(0, dtype=np.float64) for x in xs) / n
    std = np.sqrt(sum(((x.astype(np.float64) - mean) ** 2).sum(0) for x in xs) / n)
    flat = std < min_std
    if flat.any():
        log.warning("motion_stats: %d constant dimension(s) %s (std < %g) get std 1.0",
                    int(flat.sum()), np.flatnonzero(flat).tolist(), min_std)
        std[flat] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def lm_listener_eval_clips(segment: Segment, start: int = EVAL_START, length: int = EVAL_LENGTH,
                           min_length: int = EVAL_MIN_LENGTH, unit: int = EVAL_UNIT) -> list[Segment]:
    """LM-listener's evaluation clips of one segment: from ``start`` every ``length`` frames, ``L = min(T - s,
    length)`` kept when ``L >= min_length``, cut to ``L // unit * unit`` at offset 0 (the peer's is random)."""
    if not (start >= 0 and length >= unit >= 1 and min_length >= 1):
        raise UserError(f"lm_listener_eval_clips: expected start >= 0 and length >= unit >= 1, min_length >= 1, "
                         f"got start={start}, length={length}, unit={unit}, min_length={min_length}")
    clips = []
    for s in range(start, segment.T, length):
        n = min(segment.T - s, length)
        if n >= min_length and n // unit * unit >= unit:
            clips.append(segment.window(s, n // unit * unit))
    return clips


def test_clips(segments: Sequence[Segment], limit: int = 0) -> list[Segment]:
    """LM-listener's evaluation clips of ``segments`` or, where no segment holds one (Learning2Listen's 64 frames),
    each segment of >= 16 frames cut to a multiple of 8; ``limit`` > 0 keeps that many, evenly spaced."""
    clips = [c for s in segments for c in lm_listener_eval_clips(s)]
    if not clips:
        clips = [s.window(0, s.T // 8 * 8) for s in segments if s.T >= 16]
    if limit and len(clips) > limit:
        pick = np.linspace(0, len(clips) - 1, limit).round().astype(int)
        clips = [clips[i] for i in pick]
    return clips
