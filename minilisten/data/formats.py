"""Reading and writing corpora: LM-listener, Learning2Listen, and our own on-disk format.

Every reader returns a :class:`Corpus` (``.train`` / ``.val`` / ``.test`` lists of
:class:`~minilisten.data.segment.Segment`, listener motion ``.mean`` / ``.std`` of shape
``(56,)``, ``.missing_fields``), so the rest of minilisten never sees a peer's layout.

Layouts (SYSTEM.md §8 has the facts read from the peers' code):

- **LM-listener** (:func:`load_lm_listener`): a directory with ``segments_{train,val,test}.pth``,
  each a ``list`` of ``dict`` (one per contiguous segment, p0 = LISTENER, p1 = speaker, 30 fps):
  ``p{0,1}_exp (T, 50)``, ``p{0,1}_pose (T, 6)``, ``p{0,1}_shape (T, 100)``, ``fname``,
  ``split_start_frame`` / ``split_end_frame`` (absolute frames, end exclusive), ``before_words`` /
  ``during_words`` (dicts with ``text`` and ``end`` in absolute seconds of the video). Unknown
  keys (``p0_detail``, ``p1_detail``, ``start``, ...) are ignored. Statistics come from
  ``mean.npy`` / ``std.npy``, else ``p0_mean.npy`` / ``p0_std.npy``, else are computed from the
  train listener motion. Files are read with ``torch.load(weights_only=True)`` plus an allowlist
  of numpy arrays/scalars (still no arbitrary code); anything else raises and names
  ``allow_pickle=True`` as the explicit way to unpickle a file you trust.
- **Learning2Listen** (:func:`load_learning2listen`): ``data/<speaker>/{train,test}/``
  ``p{0,1}_{list,speak}_faces_clean_deca.npy (N, 64, 184)`` (exp 50 | pose 6 | detail 128),
  ``p{0,1}_speak_audio_clean_deca.npy (N, 256, 128)`` (mel), ``p{0,1}_speak_files_clean_deca.npy
  (N, 64, 3)`` ([video id, unused, frame]). Row i of ``p{o}_list_faces`` (the listener) pairs with
  row i of ``p{1-o}_speak_*`` (the speaker); o = 1 for fallon, else 0. Each row becomes one
  64-frame Segment. No words, no beta, no val split.
- **minilisten** (:func:`save_corpus` / :func:`load_corpus`): one directory with ``meta.json``
  (format tag, fps, per-segment metadata and words, per split) and ``arrays.safetensors`` (per
  split, every array field concatenated over segments in order). Round-trips exactly.

:func:`load_dataset` detects which of the three a directory holds and dispatches.
Every bad file raises ``FileNotFoundError`` / ``ValueError`` naming the file, the field, the
expected and the actual value.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from .. import safe_pickle
from ..checkpoint import atomic_write_text
from .segment import D_MOTION, N_EMOTIONS, N_EXP, N_POSE, N_SHAPE, Segment, Word
from .windows import motion_stats

log = logging.getLogger("minilisten.data")

SPLITS = ("train", "val", "test")
LM_LISTENER_FPS = 30.0
L2L_FPS = 30.0
#: LM-listener stores only a word's end time; its start is estimated as ``end - WORD_SECONDS``,
#: but never before the previous word's end, nor before the segment start (for ``words``).
WORD_SECONDS = 0.3
#: Optional Segment fields that a source may lack (``missing_fields`` lists those absent everywhere).
OPTIONAL_FIELDS = ("listener_beta", "speaker_beta", "words", "history_words", "sa_tokens", "emotion", "valence")

FORMAT_TAG = "minilisten-corpus"
FORMAT_VERSION = 1
META_FILE, ARRAYS_FILE = "meta.json", "arrays.safetensors"


# ---------------------------------------------------------------------------------------- Corpus
@dataclass
class Corpus:
    """Segments per split plus listener motion statistics.

    ``mean`` / ``std``: ``(56,)`` float32 statistics of the listener motion (from the source's
    files when it has them, else computed from ``train``; ``info["stats"]`` says which).
    ``missing_fields``: Segment fields that are None/empty in every segment (the source lacks them).
    ``n_sa``: acoustic-token vocabulary size when known. ``info``: extras kept by
    :func:`save_corpus` (nested dicts/lists of JSON values and numpy arrays).
    """
    train: list[Segment] = field(default_factory=list)
    val: list[Segment] = field(default_factory=list)
    test: list[Segment] = field(default_factory=list)
    fps: float | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    source: str = "minilisten"
    missing_fields: tuple[str, ...] = ()
    n_sa: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, list[Segment]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def __repr__(self) -> str:
        n = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return (f"Corpus(source={self.source!r}, {n}, fps={self.fps}, "
                f"missing_fields={self.missing_fields})")


def _missing_fields(segments: Iterable[Segment]) -> tuple[str, ...]:
    present = set()
    for s in segments:
        for f in OPTIONAL_FIELDS:
            v = getattr(s, f)
            if v is not None and not (isinstance(v, tuple) and not v):   # words are tuples, () = none
                present.add(f)
    return tuple(f for f in OPTIONAL_FIELDS if f not in present)


def _common_fps(segments: list[Segment]) -> float | None:
    rates = {s.fps for s in segments}
    return rates.pop() if len(rates) == 1 else None


def _finish(corpus: Corpus, path, warn_missing: bool) -> Corpus:
    """Fill ``missing_fields``, ``fps`` and (when absent) ``mean``/``std`` from train."""
    segs = corpus.train + corpus.val + corpus.test
    corpus.missing_fields = _missing_fields(segs)
    if corpus.fps is None:
        corpus.fps = _common_fps(segs)
    if corpus.mean is None and corpus.train:
        corpus.mean, corpus.std = motion_stats(corpus.train, "listener")
        corpus.info["stats"] = "computed from train listener motion"
    if warn_missing and corpus.missing_fields:
        log.warning("%s data at %s has no %s: those Segment fields are None/empty",
                    corpus.source, path, ", ".join(corpus.missing_fields))
    return corpus


def _progress(it, desc: str, progress: bool, total=None):
    # disable=None: shown on a terminal, silent in logs/CI; disable=True: never.
    return tqdm(it, desc=desc, total=total, leave=False, disable=None if progress else True)


# --------------------------------------------------------------------------------- checks/arrays
def _as_array(where: str, key: str, v) -> np.ndarray:
    if torch.is_tensor(v):
        v = v.detach().cpu()
        if v.is_floating_point() and v.dtype not in (torch.float32, torch.float64, torch.float16):
            v = v.float()  # bf16 and friends have no numpy dtype
        return v.numpy()
    if isinstance(v, np.ndarray):
        return v
    raise ValueError(f"{where}: field {key!r}: expected a tensor or array, got {type(v).__name__}")


def _check_motion_part(where: str, key: str, a: np.ndarray, width: int, T: int | None) -> np.ndarray:
    """``a`` must be ``(T, width)`` finite floats; returns float32."""
    exp = f"(T, {width})" if T is None else f"({T}, {width})"
    if a.ndim != 2 or a.shape[1] != width or (T is not None and a.shape[0] != T):
        raise ValueError(f"{where}: field {key!r}: expected shape {exp}, got {tuple(a.shape)}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{where}: field {key!r}: expected float values, got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    _check_finite(where, key, a)
    return a


def _check_finite(where: str, key: str, a: np.ndarray) -> None:
    ok = np.isfinite(a)
    if not ok.all():
        bad = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise ValueError(f"{where}: field {key!r}: expected finite values, got {a[bad]} at index {bad}")


def _load_stats_file(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: expected a plain float array of shape ({D_MOTION},), could not read it: {e}") from e
    a = np.asarray(a)
    if a.size != D_MOTION or a.ndim not in (1, 2, 3) or a.shape[-1] != D_MOTION:
        raise ValueError(f"{path}: expected shape ({D_MOTION},), got {tuple(a.shape)}")
    a = a.reshape(D_MOTION).astype(np.float32)
    _check_finite(str(path), path.stem, a)
    return a


def _read_stats(directory: Path, pairs) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    for m, s in pairs:
        pm, ps = directory / m, directory / s
        if pm.is_file() and ps.is_file():
            mean, std = _load_stats_file(pm), _load_stats_file(ps)
            if (std <= 0).any():
                i = int(np.argmin(std))
                raise ValueError(f"{ps}: expected std > 0 in every dimension, got {std[i]} at index {i}")
            return mean, std, f"{m}, {s}"
        if pm.is_file() != ps.is_file():
            have, lack = (pm, ps) if pm.is_file() else (ps, pm)
            raise FileNotFoundError(f"{lack}: missing (its pair {have.name} exists; expected both or neither)")
    return None, None, None


# ---------------------------------------------------------------------------------- LM-listener
def _torch_load(path: Path, allow_pickle: bool):
    return safe_pickle.load_torch(path, allow_pickle)


def _word_list(where: str, key: str, v) -> list[tuple[str, float | None, float]]:
    """Peer words: list of dicts with ``text`` and ``end`` (``start`` when present)."""
    if v is None:
        return []
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"{where}: field {key!r}: expected a list of dicts with 'text' and 'end', got {type(v).__name__}")
    out = []
    for j, w in enumerate(v):
        if not isinstance(w, dict) or "text" not in w or "end" not in w:
            got = sorted(w) if isinstance(w, dict) else type(w).__name__
            raise ValueError(f"{where}: field {key!r}[{j}]: expected a dict with 'text' and 'end', got {got}")
        try:
            end = float(w["end"])
            start = None if w.get("start") is None else float(w["start"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: field {key!r}[{j}]: expected numeric 'end'/'start', "
                             f"got {w['end']!r}/{w.get('start')!r}") from e
        if not math.isfinite(end) or (start is not None and not math.isfinite(start)):
            raise ValueError(f"{where}: field {key!r}[{j}] ({w['text']!r}): expected finite times, "
                             f"got start={start}, end={end}")
        out.append((str(w["text"]), start, end))
    return out


def _place_words(items, t0: float, duration: float, word_seconds: float):
    """Absolute peer words -> (words, history, n_dropped), times relative to ``t0``.

    Ends at or before the segment start become history (as the peer does); ends after the segment
    are dropped (the peer drops them too; counted). A missing start is estimated as
    ``end - word_seconds``, not before the previous word's end; a start before the segment is
    clipped to 0 for ``words`` (as :meth:`Segment.window` does for a straddling word).
    A given start after its end is kept as is, so Segment validation reports it.
    """
    words, hist, dropped, prev_end = [], [], 0, -math.inf
    for text, start, end in items:
        e = end - t0
        if start is None:
            s = min(max(e - word_seconds, prev_end), e)
        else:
            s = start - t0
        prev_end = e
        if e <= 0.0:
            hist.append(Word(text, s, e))
        elif e <= duration + 1e-6:
            words.append(Word(text, max(s, 0.0) if s <= e else s, min(e, duration)))
        else:
            dropped += 1
    return words, hist, dropped


def _lm_segment(file: Path, i: int, rec, fps: float, listener_id, word_seconds: float):
    where = f"{file}[{i}]"
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a dict (one segment), got {type(rec).__name__}")
    for k in ("p0_exp", "p0_pose", "p1_exp", "p1_pose"):
        if k not in rec:
            raise ValueError(f"{where}: missing field {k!r} (LM-listener segment keys: p0_exp, p0_pose, "
                             f"p0_shape, p1_exp, p1_pose, p1_shape, split_start_frame, split_end_frame, "
                             f"before_words, during_words; got {sorted(map(str, rec))})")
    p0_exp = _check_motion_part(where, "p0_exp", _as_array(where, "p0_exp", rec["p0_exp"]), N_EXP, None)
    T = p0_exp.shape[0]
    parts = {"p0_exp": p0_exp}
    for k, w in (("p0_pose", N_POSE), ("p1_exp", N_EXP), ("p1_pose", N_POSE)):
        parts[k] = _check_motion_part(where, k, _as_array(where, k, rec[k]), w, T)
    betas, spread = {}, 0.0
    for k in ("p0_shape", "p1_shape"):
        if rec.get(k) is not None:
            sh = _check_motion_part(where, k, _as_array(where, k, rec[k]), N_SHAPE, T)
            betas[k] = sh.astype(np.float64).mean(0).astype(np.float32)
            if k == "p0_shape":
                spread = float(sh.std(0).max()) if T > 1 else 0.0
    start_f = rec.get("split_start_frame")
    end_f = rec.get("split_end_frame")
    for k, v in (("split_start_frame", start_f), ("split_end_frame", end_f)):
        if v is not None and not isinstance(v, (int, np.integer)) and not (torch.is_tensor(v) and v.numel() == 1):
            raise ValueError(f"{where}: field {k!r}: expected an int frame index, got {v!r}")
    start_f = None if start_f is None else int(start_f)
    end_f = None if end_f is None else int(end_f)
    if start_f is not None and end_f is not None and end_f - start_f != T:
        raise ValueError(f"{where}: field 'split_end_frame': expected split_start_frame + T = "
                         f"{start_f} + {T} = {start_f + T} (end exclusive), got {end_f}")
    before = _word_list(where, "before_words", rec.get("before_words"))
    during = _word_list(where, "during_words", rec.get("during_words"))
    if (before or during) and start_f is None:
        raise ValueError(f"{where}: field 'split_start_frame': needed to place words (absolute times), got None")
    t0 = 0.0 if start_f is None else start_f / fps
    duration = T / fps
    for j, (text, _, end) in enumerate(before):
        if end - t0 > 1e-6:
            raise ValueError(f"{where}: field 'before_words'[{j}] ({text!r}): expected end <= the segment start "
                             f"{t0:.3f} s (split_start_frame / fps), got end={end:.3f} s")
    _, hist_b, _ = _place_words(before, t0, duration, word_seconds)
    words, hist_d, dropped = _place_words(during, t0, duration, word_seconds)
    fname = str(rec.get("fname", ""))
    name = f"{fname}:{start_f}-{end_f}" if start_f is not None else f"{file.stem}[{i}]"
    lid = listener_id(rec) if callable(listener_id) else listener_id
    try:
        seg = Segment(
            speaker_motion=np.concatenate([parts["p1_exp"], parts["p1_pose"]], 1),
            listener_motion=np.concatenate([parts["p0_exp"], parts["p0_pose"]], 1),
            fps=fps, listener_id=lid, listener_beta=betas.get("p0_shape"), speaker_beta=betas.get("p1_shape"),
            words=words, history_words=hist_b + hist_d, name=name,
        )
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    return seg, dropped, spread


def load_lm_listener(path: str | os.PathLike, *, splits: Iterable[str] = SPLITS, fps: float = LM_LISTENER_FPS,
                     listener_id: str | Callable[[dict], str] | None = None, allow_pickle: bool = False,
                     word_seconds: float = WORD_SECONDS, progress: bool = True) -> Corpus:
    """Read an LM-listener dataset directory (``segments_{train,val,test}.pth`` + stats files).

    Mapping: ``listener_motion = [p0_exp | p0_pose]``, ``speaker_motion = [p1_exp | p1_pose]``
    ``(T, 56)``; ``listener_beta`` / ``speaker_beta`` = the mean over T of ``p0_shape`` /
    ``p1_shape`` (EMOCA estimates shape per frame; the largest per-dimension std over time is
    kept in ``info["listener_beta_max_std"]`` and logged when above 0.05). ``during_words`` ->
    ``words`` and ``before_words`` -> ``history_words`` with times relative to
    ``split_start_frame / fps``; a missing start is estimated (:data:`WORD_SECONDS`); during-words
    ending at/before the start go to history and those ending after the segment are dropped (the
    peer drops them too; ``info["dropped_words"]`` counts them). ``listener_id``: a string, a
    function of the raw dict, or None for the directory name (LM-listener data has one listener).
    ``allow_pickle=True`` unpickles objects other than tensors/arrays: only for files you trust.
    """
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: LM-listener dataset directory not found "
                                f"(expected segments_{{train,val,test}}.pth in it)")
    splits = tuple(splits)
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"splits: expected names from {SPLITS}, got {s!r}")
    missing = [f"segments_{s}.pth" for s in splits if not (d / f"segments_{s}.pth").is_file()]
    if missing:
        have = sorted(p.name for p in d.iterdir())
        raise FileNotFoundError(f"{d}: missing {', '.join(missing)} (LM-listener layout: segments_{{train,val,test}}.pth, "
                                f"mean.npy, std.npy); found {have[:20]}")
    if listener_id is None:
        listener_id = d.resolve().name
    corpus = Corpus(source="lm-listener", fps=float(fps))
    dropped, spread = 0, 0.0
    for s in splits:
        file = d / f"segments_{s}.pth"
        data = _torch_load(file, allow_pickle)
        if not isinstance(data, (list, tuple)):
            raise ValueError(f"{file}: expected a list of dicts (one per segment), got {type(data).__name__}")
        segs = []
        for i, rec in enumerate(_progress(data, f"read {file.name}", progress)):
            seg, n_drop, sp = _lm_segment(file, i, rec, float(fps), listener_id, word_seconds)
            segs.append(seg)
            dropped += n_drop
            spread = max(spread, sp)
        setattr(corpus, s, segs)
    corpus.info.update(dropped_words=dropped, listener_beta_max_std=spread)
    if dropped:
        log.info("%s: dropped %d during_words ending after their segment (as LM-listener does)", d, dropped)
    if spread > 0.05:
        log.warning("%s: p0_shape varies over time (largest per-dim std %.3g); listener_beta is its mean over T",
                    d, spread)
    corpus.mean, corpus.std, src = _read_stats(d, (("mean.npy", "std.npy"), ("p0_mean.npy", "p0_std.npy")))
    if src:
        corpus.info["stats"] = src
    return _finish(corpus, d, warn_missing=True)


# ------------------------------------------------------------------------------ Learning2Listen
L2L_WIDTH = 184  # exp 50 | pose 6 | detail 128
L2L_MEL = 128


def _l2l_file(split_dir: Path, person: int, kind: str) -> Path:
    return split_dir / f"p{person}_{kind}_clean_deca.npy"


def _l2l_is_speaker_dir(d: Path) -> bool:
    return any(_l2l_file(d / s, p, "list_faces").is_file() for s in ("train", "test") for p in (0, 1))


def _l2l_speaker_dirs(d: Path) -> list[Path]:
    if _l2l_is_speaker_dir(d):
        return [d]
    root = d / "data" if (d / "data").is_dir() else d
    return sorted(p for p in root.iterdir() if p.is_dir() and _l2l_is_speaker_dir(p))


def _np_load(path: Path, allow_pickle: bool, mmap: bool = False) -> np.ndarray:
    """``.npy`` through :mod:`minilisten.safe_pickle`: object arrays are unpickled with the
    restricted unpickler (numpy arrays / plain values only), never with code execution."""
    return safe_pickle.load_npy(path, allow_pickle, mmap)


def load_learning2listen(path: str | os.PathLike, *, speakers: Iterable[str] | None = None,
                         splits: Iterable[str] = ("train", "test"), fps: float = L2L_FPS,
                         allow_pickle: bool = False, progress: bool = True) -> Corpus:
    """Read Learning2Listen ``.npy`` files: ``path`` is the repo root, its ``data/`` or one
    ``data/<speaker>`` directory. Each row i becomes a Segment of N frames (64): listener =
    ``p{o}_list_faces[i, :, :56]``, speaker = ``p{1-o}_speak_faces[i, :, :56]`` with o = 1 for
    fallon else 0; ``listener_id`` = the speaker directory name (the show's host); the name
    carries the video id and first frame from ``p{1-o}_speak_files`` when present. The 128 detail
    columns are dropped; the mel audio is shape-checked but not mapped (it is not acoustic tokens).
    The source has no words, no shape beta, no emotion/valence and no val split: those fields stay
    None/empty, are listed in ``missing_fields`` and logged. Stats are computed from train."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: Learning2Listen directory not found "
                                f"(expected data/<speaker>/{{train,test}}/p0_list_faces_clean_deca.npy)")
    dirs = _l2l_speaker_dirs(d)
    if speakers is not None:
        want = list(speakers)
        by_name = {p.name: p for p in dirs}
        lacking = [s for s in want if s not in by_name]
        if lacking:
            raise FileNotFoundError(f"{d}: no Learning2Listen speaker directories {lacking}; found {sorted(by_name)}")
        dirs = [by_name[s] for s in want]
    if not dirs:
        raise FileNotFoundError(f"{d}: no Learning2Listen data: expected "
                                f"<speaker>/{{train,test}}/p{{0,1}}_list_faces_clean_deca.npy "
                                f"here or under data/")
    splits = tuple(splits)
    for s in splits:
        if s not in ("train", "test"):
            raise ValueError(f"splits: Learning2Listen has train and test, got {s!r}")
    corpus = Corpus(source="learning2listen", fps=float(fps))
    for sd in dirs:
        o = 1 if sd.name == "fallon" else 0
        for split in splits:
            split_dir = sd / split
            lf, sf = _l2l_file(split_dir, o, "list_faces"), _l2l_file(split_dir, 1 - o, "speak_faces")
            af, ff = _l2l_file(split_dir, 1 - o, "speak_audio"), _l2l_file(split_dir, 1 - o, "speak_files")
            for f in (lf, sf):
                if not f.is_file():
                    raise FileNotFoundError(f"{f}: missing (Learning2Listen pairs p{o}_list_faces with p{1 - o}_speak_faces "
                                            f"for speaker {sd.name!r}, split {split!r})")
            lis, spk = _np_load(lf, allow_pickle), _np_load(sf, allow_pickle)
            for f, a in ((lf, lis), (sf, spk)):
                if a.ndim != 3 or a.shape[2] != L2L_WIDTH or a.shape[1] < 1:
                    raise ValueError(f"{f}: field 'faces': expected shape (N, 64, {L2L_WIDTH}) "
                                     f"(exp 50 | pose 6 | detail 128), got {tuple(a.shape)}")
                if not np.issubdtype(a.dtype, np.floating):
                    raise ValueError(f"{f}: field 'faces': expected float values, got dtype {a.dtype}")
            if spk.shape[:2] != lis.shape[:2]:
                raise ValueError(f"{sf}: field 'faces': expected shape {lis.shape[:2] + (L2L_WIDTH,)} "
                                 f"(rows/frames as {lf.name}), got {tuple(spk.shape)}")
            N, T = lis.shape[:2]
            lis = lis[:, :, :D_MOTION].astype(np.float32)
            spk = spk[:, :, :D_MOTION].astype(np.float32)
            lis.flags.writeable = spk.flags.writeable = False   # ours alone: the Segments share rows, no copy
            _check_finite(str(lf), "faces[:, :, :56]", lis)
            _check_finite(str(sf), "faces[:, :, :56]", spk)
            files = None
            if ff.is_file():
                files = _np_load(ff, allow_pickle)
                if files.ndim != 3 or files.shape != (N, T, 3):
                    raise ValueError(f"{ff}: field 'files': expected shape ({N}, {T}, 3) "
                                     f"([video id, unused, frame]), got {tuple(files.shape)}")
            if af.is_file():
                audio = _np_load(af, allow_pickle, mmap=True)
                if audio.shape != (N, 4 * T, L2L_MEL):
                    raise ValueError(f"{af}: field 'audio': expected shape ({N}, {4 * T}, {L2L_MEL}) "
                                     f"(mel, 4 per frame), got {tuple(audio.shape)}")
            segs = getattr(corpus, split)
            for i in _progress(range(N), f"read {sd.name}/{split}", progress):
                name = f"{sd.name}/{split}/{i}"
                if files is not None:
                    name += f":{files[i, 0, 0]}@{files[i, 0, 2]}"
                segs.append(Segment(speaker_motion=spk[i], listener_motion=lis[i], fps=fps,
                                    listener_id=sd.name, name=name))
    corpus.info["speakers"] = [p.name for p in dirs]
    return _finish(corpus, d, warn_missing=True)


# ------------------------------------------------------------------------------ our own format
_ARRAY_FIELDS = {  # name -> (per-frame?, trailing shape, dtype)
    "speaker_motion": (True, (D_MOTION,), np.float32),
    "listener_motion": (True, (D_MOTION,), np.float32),
    "emotion": (True, (N_EMOTIONS,), np.float32),
    "valence": (True, (), np.float32),
    "listener_beta": (False, (N_SHAPE,), np.float32),
    "speaker_beta": (False, (N_SHAPE,), np.float32),
    "sa_tokens": (None, (), np.int64),  # its own length per segment
}
_OPTIONAL_ARRAYS = ("emotion", "valence", "listener_beta", "speaker_beta", "sa_tokens")


_CORPUS_FIELDS = (*SPLITS, "fps", "mean", "std", "source", "missing_fields", "n_sa", "info")


def _json_scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _corpus_splits(corpus) -> tuple[dict[str, list[Segment]], dict]:
    """Accept a Corpus, any object with .train/.val/.test, a {split: segments} dict or a list."""
    if isinstance(corpus, dict):
        splits, extra = {k: list(corpus.get(k, [])) for k in SPLITS}, {}
        unknown = set(corpus) - set(SPLITS)
        if unknown:
            raise ValueError(f"corpus: expected split keys {SPLITS}, got extra {sorted(unknown)}")
    elif isinstance(corpus, (list, tuple)):
        splits, extra = {"train": list(corpus), "val": [], "test": []}, {}
    elif all(hasattr(corpus, k) for k in SPLITS):
        splits = {k: list(getattr(corpus, k)) for k in SPLITS}
        extra = {}
        for k in ("mean", "std", "n_sa", "source", "fps"):
            if getattr(corpus, k, None) is not None:
                extra[k] = getattr(corpus, k)
        info = dict(getattr(corpus, "info", None) or {})
        try:  # JSON-able scalar attributes of other corpus types (e.g. the synthetic corpus' config)
            attrs = vars(corpus)
        except TypeError:
            attrs = {}
        for k, v in attrs.items():
            if k not in _CORPUS_FIELDS and _json_scalar(v):
                info.setdefault(k, v)
        extra["info"] = info
    else:
        raise ValueError(f"corpus: expected a Corpus, an object with .train/.val/.test, a dict of splits or a "
                         f"list of Segments, got {type(corpus).__name__}")
    for k, segs in splits.items():
        for i, s in enumerate(segs):
            if not isinstance(s, Segment):
                raise ValueError(f"corpus.{k}[{i}]: expected a Segment, got {type(s).__name__}")
    return splits, extra


def _encode_info(x, path: str, arrays: dict):
    """JSON-able copy of ``info``: numpy arrays go to ``arrays`` (bit-exact) as
    ``{"__array__": key}``, numpy scalars become Python numbers, tuples become lists."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise ValueError(f"corpus.{path}: expected str keys (JSON), got {k!r} ({type(k).__name__})")
            out[k] = _encode_info(v, f"{path}.{k}", arrays)
        return out
    if isinstance(x, (list, tuple)):
        return [_encode_info(v, f"{path}[{i}]", arrays) for i, v in enumerate(x)]
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise ValueError(f"corpus.{path}: expected a numeric array, got an object array")
        key = f"{path}#{len(arrays)}"
        arrays[key] = x
        return {"__array__": key}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"corpus.{path}: expected a finite number (JSON), got {x}")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise ValueError(f"corpus.{path}: expected JSON-able values or numpy arrays, got {type(x).__name__}")


def _decode_info(x, arrays: dict, where: str):
    if isinstance(x, dict):
        if set(x) == {"__array__"}:
            if x["__array__"] not in arrays:
                raise ValueError(f"{where}: missing array {x['__array__']!r} referenced by meta.json info")
            return arrays[x["__array__"]]
        return {k: _decode_info(v, arrays, where) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode_info(v, arrays, where) for v in x]
    return x


def _words_json(words: list[Word]) -> list:
    return [[str(w.text), float(w.start), float(w.end)] for w in words]


def save_corpus(corpus, directory: str | os.PathLike, *, progress: bool = True) -> Path:
    """Write ``corpus`` to ``directory/meta.json`` + ``directory/arrays.safetensors``.

    ``arrays.safetensors`` holds, per split, every array field concatenated over its segments in
    order (``train/listener_motion (sum T, 56)``, ``train/sa_tokens (sum M,)``, ``train/listener_beta
    (n, 100)``, ...; optional fields only for the segments that have them) plus ``mean``/``std``.
    ``meta.json`` holds the format tag, fps, n_sa, info and per segment: name, listener_id, fps,
    T, sa_rate, number of acoustic tokens, which optional arrays it has, words and history words
    as ``[text, start, end]``. Floats are written with full precision: :func:`load_corpus` returns
    identical Segments. ``corpus.info`` is kept too: its numpy arrays go into the arrays file as
    ``info...#n`` (bit-exact), the rest into meta.json (tuples come back as lists, numpy scalars
    as Python numbers). Arrays are written first, meta.json last (each atomically).
    """
    from safetensors.numpy import save_file

    splits, extra = _corpus_splits(corpus)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta_splits = {}
    for split, segs in splits.items():
        chunks = {k: [] for k in _ARRAY_FIELDS}
        recs = []
        for s in _progress(segs, f"save {split}", progress):
            has = [k for k in _OPTIONAL_ARRAYS if getattr(s, k) is not None]
            for k in ("speaker_motion", "listener_motion", *has):
                chunks[k].append(getattr(s, k))
            recs.append({
                "name": s.name, "listener_id": s.listener_id, "fps": s.fps, "T": s.T,
                "sa_rate": float(s.sa_rate), "n_sa_tokens": None if s.sa_tokens is None else int(s.sa_tokens.shape[0]),
                "has": has, "words": _words_json(s.words), "history_words": _words_json(s.history_words),
            })
        for k, (per_frame, trail, dt) in _ARRAY_FIELDS.items():
            if not chunks[k]:
                arrays[f"{split}/{k}"] = np.zeros((0, *trail), dt)
            else:
                join = np.stack if per_frame is False else np.concatenate
                arrays[f"{split}/{k}"] = join(chunks[k]).astype(dt, copy=False)
        meta_splits[split] = recs
    for k in ("mean", "std"):
        if extra.get(k) is not None:
            v = np.asarray(extra[k], dtype=np.float32).reshape(-1)
            if v.shape != (D_MOTION,):
                raise ValueError(f"corpus.{k}: expected shape ({D_MOTION},), got {np.shape(extra[k])}")
            _check_finite("corpus", k, v)
            arrays[k] = v
    info = _encode_info(extra.get("info", {}), "info", arrays)
    arrays = {k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in arrays.items()}
    tmp = d / f".{ARRAYS_FILE}.{os.getpid()}.tmp"
    try:
        save_file(arrays, str(tmp))
        os.replace(tmp, d / ARRAYS_FILE)
    finally:
        if tmp.exists():
            tmp.unlink()
    n_sa = extra.get("n_sa")
    if n_sa is not None:
        if isinstance(n_sa, bool) or not isinstance(n_sa, (int, np.integer)) or n_sa < 0:
            raise ValueError(f"corpus.n_sa: expected None or an int >= 0 (the SA vocabulary size), got {n_sa!r}")
        for split in SPLITS:
            sa = arrays[f"{split}/sa_tokens"]
            if sa.size and sa.max() >= n_sa:
                raise ValueError(f"corpus.{split}: sa_tokens: expected ids in [0, {n_sa}) (corpus.n_sa), got {sa.max()}")
    meta = {
        "format": FORMAT_TAG, "version": FORMAT_VERSION, "arrays": ARRAYS_FILE,
        "fps": None if extra.get("fps") is None else float(extra["fps"]),
        "n_sa": None if n_sa is None else int(n_sa),
        "source": str(extra.get("source", "minilisten")),
        "info": info,
        "n_frames": {k: int(sum(r["T"] for r in v)) for k, v in meta_splits.items()},
        "splits": meta_splits,
    }
    try:
        text = json.dumps(meta, indent=1, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"corpus: metadata not JSON-serializable: {e}") from e
    atomic_write_text(d / META_FILE, text)
    return d


def _read_meta(d: Path) -> dict:
    mp = d / META_FILE
    if not mp.is_file():
        raise FileNotFoundError(f"{mp}: missing (a minilisten corpus directory holds {META_FILE} + {ARRAYS_FILE})")
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{mp}: not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_TAG:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{mp}: field 'format': expected {FORMAT_TAG!r}, got {got!r}")
    v = meta.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= FORMAT_VERSION:
        raise ValueError(f"{mp}: field 'version': expected an int in [1, {FORMAT_VERSION}], got {v!r}")
    if meta.get("info") is not None and not isinstance(meta["info"], dict):
        raise ValueError(f"{mp}: field 'info': expected a JSON object or null, got {type(meta['info']).__name__}")
    n_sa = meta.get("n_sa")
    if n_sa is not None and (not isinstance(n_sa, int) or isinstance(n_sa, bool) or n_sa < 0):
        raise ValueError(f"{mp}: field 'n_sa': expected null or an int >= 0 (the SA vocabulary size), got {n_sa!r}")
    arrays = meta.get("arrays", ARRAYS_FILE)
    if not isinstance(arrays, str) or Path(arrays).name != arrays or arrays in ("", ".", ".."):
        raise ValueError(f"{mp}: field 'arrays': expected a file name inside the corpus directory "
                         f"(e.g. {ARRAYS_FILE!r}), got {arrays!r}")
    if not isinstance(meta.get("splits"), dict):
        raise ValueError(f"{mp}: field 'splits': expected a dict of split -> segment list, "
                         f"got {type(meta.get('splits')).__name__}")
    return meta


def _meta_words(where: str, key: str, v) -> list[Word]:
    if not isinstance(v, list):
        raise ValueError(f"{where}: field {key!r}: expected a list of [text, start, end], got {type(v).__name__}")
    out = []
    for j, w in enumerate(v):
        if not (isinstance(w, list) and len(w) == 3 and isinstance(w[0], str)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in w[1:])):
            raise ValueError(f"{where}: field {key!r}[{j}]: expected [text, start, end], got {w!r}")
        out.append(Word(w[0], float(w[1]), float(w[2])))
    return out


def load_corpus(directory: str | os.PathLike, *, progress: bool = True) -> Corpus:
    """Read a directory written by :func:`save_corpus` (see there for the layout). Every bad file
    raises ``ValueError`` / ``FileNotFoundError`` naming it (a value of the wrong JSON type too)."""
    try:
        return _load_corpus(directory, progress)
    except (TypeError, KeyError, AttributeError, IndexError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"{Path(directory) / META_FILE}: expected the layout save_corpus writes, got a malformed "
                         f"value ({what})") from e


def _load_corpus(directory, progress: bool) -> Corpus:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: corpus directory not found (expected {META_FILE} + {ARRAYS_FILE})")
    meta = _read_meta(d)
    mp, ap = d / META_FILE, d / str(meta.get("arrays", ARRAYS_FILE))
    if ap.exists() and not ap.resolve().is_relative_to(d.resolve()):
        raise ValueError(f"{mp}: field 'arrays': expected a file inside the corpus directory {d}, "
                         f"got {meta['arrays']!r} resolving to {ap.resolve()}")
    if not ap.is_file():
        raise FileNotFoundError(f"{ap}: missing (named by {mp})")
    try:
        arrays = load_file(str(ap))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{ap}: not a readable safetensors file: {e}") from e
    unknown = set(meta["splits"]) - set(SPLITS)
    if unknown:
        raise ValueError(f"{mp}: field 'splits': expected keys from {SPLITS}, got {sorted(unknown)}")
    corpus = Corpus(source=str(meta.get("source", "minilisten")), fps=meta.get("fps"), n_sa=meta.get("n_sa"),
                    info=_decode_info(dict(meta.get("info") or {}), arrays, str(ap)))
    for split, recs in meta["splits"].items():
        if not isinstance(recs, list):
            raise ValueError(f"{mp}: field 'splits.{split}': expected a list of segment records, got {type(recs).__name__}")
        # expected sizes, then check the arrays before slicing
        need = {k: 0 for k in _ARRAY_FIELDS}
        for i, r in enumerate(recs):
            where = f"{mp}: splits.{split}[{i}]"
            for k in ("T", "fps", "has", "words", "history_words"):
                if k not in r:
                    raise ValueError(f"{where}: missing field {k!r}")
            if not isinstance(r["T"], int) or r["T"] < 1:
                raise ValueError(f"{where}: field 'T': expected a positive int, got {r['T']!r}")
            bad = [h for h in r["has"] if h not in _OPTIONAL_ARRAYS]
            if bad:
                raise ValueError(f"{where}: field 'has': expected names from {_OPTIONAL_ARRAYS}, got {bad}")
            if "sa_tokens" in r["has"] and not isinstance(r.get("n_sa_tokens"), int):
                raise ValueError(f"{where}: field 'n_sa_tokens': expected an int (has sa_tokens), "
                                 f"got {r.get('n_sa_tokens')!r}")
            for k in ("speaker_motion", "listener_motion", *r["has"]):
                per_frame = _ARRAY_FIELDS[k][0]
                need[k] += r["T"] if per_frame else (r["n_sa_tokens"] if per_frame is None else 1)
        for k, (_, trail, dt) in _ARRAY_FIELDS.items():
            key = f"{split}/{k}"
            if key not in arrays:
                raise ValueError(f"{ap}: missing array {key!r} (written by save_corpus for every split)")
            a = arrays[key]
            if a.shape != (need[k], *trail):
                raise ValueError(f"{ap}: array {key!r}: expected shape {(need[k], *trail)} (from {mp.name}), "
                                 f"got {tuple(a.shape)}")
            if a.dtype != dt:
                raise ValueError(f"{ap}: array {key!r}: expected dtype {np.dtype(dt)}, got {a.dtype}")
            # read-only view of memory only we hold: the Segments share its slices instead of copying them
            arrays[key] = np.frombuffer(memoryview(np.ascontiguousarray(a)).toreadonly(), a.dtype).reshape(a.shape)
        pos = {k: 0 for k in _ARRAY_FIELDS}
        segs = []
        for i, r in enumerate(_progress(recs, f"load {split}", progress)):
            where = f"{mp}: splits.{split}[{i}] ({r.get('name', '')!r})"
            kw = {}
            for k in ("speaker_motion", "listener_motion", *r["has"]):
                per_frame = _ARRAY_FIELDS[k][0]
                n = r["T"] if per_frame else (r["n_sa_tokens"] if per_frame is None else 1)
                a = arrays[f"{split}/{k}"][pos[k]:pos[k] + n]
                pos[k] += n
                kw[k] = a[0] if per_frame is False else a
            try:
                segs.append(Segment(fps=r["fps"], listener_id=r.get("listener_id", "listener"), name=r.get("name", ""),
                                    sa_rate=r.get("sa_rate", 50.0), words=_meta_words(where, "words", r["words"]),
                                    history_words=_meta_words(where, "history_words", r["history_words"]), **kw))
            except ValueError as e:
                raise ValueError(f"{where} / {ap.name}: {e}") from e
        if corpus.n_sa is not None:
            sa = arrays[f"{split}/sa_tokens"]
            if sa.size and sa.max() >= corpus.n_sa:
                raise ValueError(f"{ap}: array '{split}/sa_tokens': expected ids in [0, {corpus.n_sa}) "
                                 f"(n_sa of {mp.name}), got {sa.max()}")
        setattr(corpus, split, segs)
    if "mean" in arrays or "std" in arrays:
        for k in ("mean", "std"):
            if k not in arrays or arrays[k].shape != (D_MOTION,):
                got = tuple(arrays[k].shape) if k in arrays else "missing"
                raise ValueError(f"{ap}: array {k!r}: expected shape ({D_MOTION},) (mean and std go together), got {got}")
            _check_finite(str(ap), k, arrays[k])
        if (arrays["std"] <= 0).any():
            i = int(np.argmin(arrays["std"]))
            raise ValueError(f"{ap}: array 'std': expected std > 0 in every dimension, got {arrays['std'][i]} at index {i}")
        corpus.mean, corpus.std = arrays["mean"], arrays["std"]
    return _finish(corpus, d, warn_missing=False)


# ----------------------------------------------------------------------------------- detection
def detect_layout(path: str | os.PathLike) -> str:
    """``"minilisten"``, ``"lm-listener"`` or ``"learning2listen"``; raises when none matches."""
    d = Path(path)
    if not d.exists():
        raise FileNotFoundError(f"dataset ({d}): expected a dataset directory, got nothing there (not found)")
    if not d.is_dir():
        raise ValueError(f"dataset ({d}): expected a dataset directory, got a file")
    if (d / META_FILE).is_file():
        return "minilisten"
    if any(d.glob("segments_*.pth")):
        return "lm-listener"
    try:
        if _l2l_speaker_dirs(d):
            return "learning2listen"
    except OSError:  # pragma: no cover
        pass
    have = sorted(p.name for p in d.iterdir())[:20]
    raise ValueError(
        f"{d}: no known dataset layout. Looked for: {META_FILE} + {ARRAYS_FILE} (minilisten, save_corpus); "
        f"segments_{{train,val,test}}.pth (LM-listener); [data/]<speaker>/{{train,test}}/p{{0,1}}_list_faces_clean_deca.npy "
        f"or {{train,test}}/p{{0,1}}_list_faces_clean_deca.npy (Learning2Listen). Found: {have}")


def load_dataset(path: str | os.PathLike, **kwargs) -> Corpus:
    """Load any supported layout (see :func:`detect_layout`); ``kwargs`` go to the reader."""
    layout = detect_layout(path)
    reader = {"minilisten": load_corpus, "lm-listener": load_lm_listener, "learning2listen": load_learning2listen}[layout]
    return reader(path, **kwargs)
