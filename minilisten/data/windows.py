"""Windows, statistics and the torch Dataset over Segments.

- :func:`motion_stats`: per-dimension mean/std ``(56,)`` of listener (or speaker) motion, as the
  peers use to normalize (float64 accumulation, two passes).
- :func:`lm_listener_eval_clips`: LM-listener's evaluation clips of a segment (SYSTEM.md §8).
- :func:`training_windows`: fixed-length windows (as Segments, words re-based) for the LM stage.
- :class:`WindowDataset` + :func:`collate_windows`: fixed-length motion windows as tensors for
  the VQ-VAE (and anything that needs motion/beta/emotion/valence batches).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

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


def training_windows(segments: Sequence[Segment], length: int = 240, stride: int | None = None,
                     start: int = 0, progress: bool = True) -> list[Segment]:
    """All windows of exactly ``length`` frames every ``stride`` frames (default ``length``:
    non-overlapping) from frame ``start`` of each segment, as Segments (words re-based, history
    words within 3 s). Tails shorter than ``length`` and segments shorter than ``start + length``
    are dropped; the number dropped is logged, and an error says so when nothing is left."""
    if length < 1 or (stride is not None and stride < 1) or start < 0:
        raise ValueError(f"training_windows: expected length >= 1, stride >= 1, start >= 0, got "
                         f"length={length}, stride={stride}, start={start}")
    out, short = [], 0
    for seg in tqdm(segments, desc="windows", leave=False, disable=None if progress else True):
        w = seg.windows(length, stride, start=start)
        short += not w
        out.extend(w)
    if short:
        log.info("training_windows: %d of %d segments shorter than start + length = %d frames give no window",
                 short, len(segments), start + length)
    if segments and not out:
        raise ValueError(f"training_windows: expected segments with at least start + length = {start + length} "
                         f"frames, got at most {max(s.T for s in segments)}")
    return out


class WindowDataset(torch.utils.data.Dataset):
    """Fixed-length windows of Segments as tensors.

    Item ``i`` is window ``(segment j, start s)`` from ``range(0, T - length + 1, stride)``
    (``stride`` defaults to ``length``). With ``random_crop=True`` the start is instead drawn
    uniformly from ``[s, min(s + stride - 1, T - length)]`` with torch's RNG (so DataLoader
    workers differ and ``torch.manual_seed`` reproduces it): every valid start can occur while an
    epoch keeps the same size. Segments shorter than ``length`` are skipped (logged).

    An item is a dict of tensors: ``speaker_motion``, ``listener_motion`` ``(length, 56)``
    float32 (normalized by ``mean``/``std`` when given); ``listener_beta (100,)``, ``emotion
    (length, 8)``, ``valence (length,)`` when every segment has them (``self.fields`` lists the
    optional ones present; a field that only some segments have is an error, not zero-filled);
    ``index``, ``segment``, ``start``, ``listener`` (int64 scalars; ``listener`` indexes
    ``self.listener_ids``).
    """

    OPTIONAL = ("listener_beta", "emotion", "valence")

    def __init__(self, segments: Sequence[Segment], length: int = 240, stride: int | None = None,
                 random_crop: bool = False, mean: np.ndarray | None = None, std: np.ndarray | None = None):
        if length < 1 or (stride is not None and stride < 1):
            raise ValueError(f"WindowDataset: expected length >= 1 and stride >= 1, got length={length}, stride={stride}")
        self.segments = list(segments)
        self.length, self.stride, self.random_crop = int(length), int(stride or length), bool(random_crop)
        if (mean is None) != (std is None):
            raise ValueError("mean/std: expected both or neither, got only one")
        self.mean = self.std = None
        if mean is not None:
            for k, v in (("mean", mean), ("std", std)):
                if np.shape(v) != (D_MOTION,):
                    raise ValueError(f"{k}: expected shape ({D_MOTION},), got {np.shape(v)}")
            if not (np.asarray(std) > 0).all():
                raise ValueError(f"std: expected > 0 in every dimension, got min {np.min(std)}")
            self.mean = torch.as_tensor(np.asarray(mean, np.float32))
            self.std = torch.as_tensor(np.asarray(std, np.float32))
        self.fields = []
        for f in self.OPTIONAL:
            has = [getattr(s, f) is not None for s in self.segments]
            if all(has) and has:
                self.fields.append(f)
            elif any(has):
                j = has.index(False)
                raise ValueError(f"segments[{j}].{f}: expected a value (other segments have {f}), got None")
        self.listener_ids = sorted({s.listener_id for s in self.segments})
        lid = {k: i for i, k in enumerate(self.listener_ids)}
        self._listener = [lid[s.listener_id] for s in self.segments]
        # (segment, first start, last start) per item
        self.items: list[tuple[int, int, int]] = []
        short = 0
        for j, s in enumerate(self.segments):
            last = s.T - self.length
            short += last < 0
            for a in range(0, last + 1, self.stride):
                self.items.append((j, a, min(a + self.stride - 1, last)))
        if short:
            log.info("WindowDataset: %d of %d segments are shorter than %d frames and give no window",
                     short, len(self.segments), self.length)
        if self.segments and not self.items:
            raise ValueError(f"WindowDataset: expected segments of at least length={self.length} frames, "
                             f"got at most {max(s.T for s in self.segments)}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j, a, b = self.items[i]
        if self.random_crop and b > a:
            a = a + int(torch.randint(0, b - a + 1, ()).item())
        seg, sl = self.segments[j], slice(a, a + self.length)
        out = {}
        for k in ("speaker_motion", "listener_motion"):
            x = torch.from_numpy(np.array(getattr(seg, k)[sl], dtype=np.float32))
            out[k] = x if self.mean is None else (x - self.mean) / self.std
        if "listener_beta" in self.fields:
            out["listener_beta"] = torch.from_numpy(np.array(seg.listener_beta, dtype=np.float32))
        for k in ("emotion", "valence"):
            if k in self.fields:
                out[k] = torch.from_numpy(np.array(getattr(seg, k)[sl], dtype=np.float32))
        out["index"] = torch.tensor(i, dtype=torch.int64)
        out["segment"] = torch.tensor(j, dtype=torch.int64)
        out["start"] = torch.tensor(a, dtype=torch.int64)
        out["listener"] = torch.tensor(self._listener[j], dtype=torch.int64)
        return out


def collate_windows(batch: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of :class:`WindowDataset` items into a dict of batched tensors
    (``speaker_motion (B, length, 56)``, ``listener_beta (B, 100)``, ``index (B,)``, ...)."""
    if len(batch) == 0:
        raise ValueError("collate_windows: expected at least one item, got an empty batch")
    keys = list(batch[0])
    for n, item in enumerate(batch):
        if set(item) != set(keys):
            raise ValueError(f"collate_windows: item {n}: expected keys {sorted(keys)}, got {sorted(item)}")
    out = {}
    for k in keys:
        shapes = {tuple(item[k].shape) for item in batch}
        if len(shapes) > 1:
            raise ValueError(f"collate_windows: field {k!r}: expected one shape across the batch, got {sorted(shapes)}")
        out[k] = torch.stack([item[k] for item in batch])
    return out
