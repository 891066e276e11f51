"""Motion statistics (:func:`motion_stats`) and evaluation clips: LM-listener's of a segment
(:func:`lm_listener_eval_clips`, SYSTEM.md §8) and those every evaluation scores (:func:`test_clips`)."""
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


def motion_stats(segments: Sequence[Segment], which: str = "listener") -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 0, float64 two-pass) of ``which`` motion (listener, speaker or both) over all frames of
    ``segments``: two ``(56,)`` float32 arrays; a constant dimension (std < 1e-6) gets std 1.0, logged."""
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
    flat = std < 1e-6
    if flat.any():
        log.warning("motion_stats: %d constant dimension(s) %s (std < 1e-6) get std 1.0",
                    int(flat.sum()), np.flatnonzero(flat).tolist())
        std[flat] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def lm_listener_eval_clips(segment: Segment) -> list[Segment]:
    """LM-listener's evaluation clips of one segment: from frame 96 every 240 frames, ``L = min(T - s, 240)``
    kept when ``L >= 24``, cut to ``L // 8 * 8`` at offset 0 (the peer's offset is random)."""
    clips = []
    for s in range(EVAL_START, segment.T, EVAL_LENGTH):
        n = min(segment.T - s, EVAL_LENGTH)
        if n >= EVAL_MIN_LENGTH:
            clips.append(segment.window(s, n // EVAL_UNIT * EVAL_UNIT))
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
