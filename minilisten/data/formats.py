"""Reading and writing corpora (LM-listener, Learning2Listen, minilisten's own layout): every reader returns a
:class:`Corpus`, words repaired by ``segment.repair_words``. The layouts and the repairs: docs/data.md."""
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
from ..errors import UserError
from .segment import D_MOTION, MEL_PER_FRAME, N_EXP, N_POSE, N_SHAPE, Segment, Word, _check_array, repair_words, seconds
from .windows import motion_stats

log = logging.getLogger("minilisten.data")

SPLITS = ("train", "val", "test")
FPS = 30.0                # LM-listener's and Learning2Listen's frame rate
WORD_SECONDS = 0.3        # LM-listener stores a word's end only: its start is estimated as end - WORD_SECONDS
FORMAT_TAG, FORMAT_VERSION = "minilisten-corpus", 2
META_FILE, ARRAYS_FILE = "meta.json", "arrays.safetensors"
WORD_FIELDS = ("words", "history_words")
_MISSING = object()


@dataclass
class Corpus:
    """Segments per split, listener motion ``mean``/``std`` ``(56,)`` (the source's, else train's), the SA vocabulary
    ``n_sa`` when known, ``info`` extras (JSON values, numpy arrays); what it lacks: ``coverage.Coverage``."""
    train: list[Segment] = field(default_factory=list)
    val: list[Segment] = field(default_factory=list)
    test: list[Segment] = field(default_factory=list)
    fps: float | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    source: str = "minilisten"
    n_sa: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, list[Segment]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def __repr__(self) -> str:
        n = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"Corpus(source={self.source!r}, {n}, fps={self.fps})"


def _finish(corpus: Corpus, path, repaired: int = 0) -> Corpus:
    """Fill ``fps`` (when the segments share one), ``mean``/``std`` (from train), ``info["repaired_words"]``."""
    rates = {s.fps for s in corpus.train + corpus.val + corpus.test}
    corpus.fps = corpus.fps or (rates.pop() if len(rates) == 1 else None)
    if corpus.mean is None and corpus.train:
        corpus.mean, corpus.std = motion_stats(corpus.train, "listener")
        corpus.info["stats"] = "computed from train listener motion"
    if repaired:
        corpus.info["repaired_words"] = repaired
        log.warning("%s: repaired %d word(s): put in order by end time, starts clamped to the previous "
                    "word's end (as the peers read words: by their end)", path, repaired)
    return corpus


def _directory(path, what: str, splits: Iterable[str] = (), allowed: tuple[str, ...] = SPLITS) -> Path:
    """``path`` as an existing directory holding ``what``, and ``splits`` checked against ``allowed``."""
    d = Path(path)
    if not d.is_dir():
        raise UserError(f"{d}: directory not found (expected {what})")
    bad = [s for s in splits if s not in allowed]
    if bad:
        raise UserError(f"splits: expected names from {allowed}, got {bad[0]!r}")
    return d


def _progress(it, desc: str, progress: bool):
    return tqdm(it, desc=desc, leave=False, disable=None if progress else True)   # None: only on a terminal


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a`` (memory only the reader holds) as a view of a read-only buffer: Segments share its slices."""
    a = np.asarray(a, order="C")
    return np.frombuffer(memoryview(a).toreadonly(), a.dtype).reshape(a.shape)


def _segment(where: str, **kw) -> Segment:
    """``Segment(**kw)`` whose errors name ``where`` (file and record) first."""
    try:
        return Segment(**kw)
    except UserError as e:
        raise UserError(f"{where}: {e}") from e


def _mean_std(mean: tuple, std: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(where, array)`` pairs -> listener motion mean and std ``(56,)`` float32: finite, std > 0."""
    m, s = (_check_array(str(w), None if a is None else np.reshape(a, -1), (D_MOTION,)) for w, a in (mean, std))
    if (s <= 0).any():
        i = int(np.argmin(s))
        raise UserError(f"{std[0]}: expected std > 0 in every dimension, got {s[i]} at index {i}")
    return m, s


def _read_stats(directory: Path, pairs) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """The first pair of (mean, std) ``.npy`` files present in ``directory``; both or neither."""
    for m, s in pairs:
        pm, ps = directory / m, directory / s
        if pm.is_file() != ps.is_file():
            have, lack = (pm, ps) if pm.is_file() else (ps, pm)
            raise UserError(f"{lack}: missing (its pair {have.name} exists; expected both or neither)")
        if pm.is_file():
            return (*_mean_std((pm, np.load(pm)), (ps, np.load(ps))), f"{m}, {s}")
    return None, None, None


def _word_items(where: str, key: str, v) -> list[tuple[str, float | None, float]]:
    """LM-listener's word dicts (``text``, ``end``, maybe ``start``) or our ``[text, start, end]`` -> ``(text,
    start or None, end)`` with finite times, for ``repair_words``."""
    if not isinstance(v, (list, tuple)):
        raise UserError(f"{where}: field {key!r}: expected a list of dicts with 'text' and 'end' or of "
                        f"[text, start, end], got {type(v).__name__}")
    out = []
    for j, w in enumerate(v):
        if isinstance(w, dict) and "text" in w and "end" in w:
            w = (w["text"], w.get("start"), w["end"])
        elif not (isinstance(w, list) and len(w) == 3 and isinstance(w[0], str)):
            got = sorted(map(str, w)) if isinstance(w, dict) else repr(w)[:60]
            raise UserError(f"{where}: field {key!r}[{j}]: expected a dict with 'text' and 'end' or "
                            f"[text, start, end], got {got}")
        at = f"{where}: field {key!r}[{j}] ({w[0]!r})"
        out.append((str(w[0]), None if w[1] is None else seconds(f"{at}: start", w[1]), seconds(f"{at}: end", w[2])))
    return out


LM_KEYS = ("p0_exp", "p0_pose", "p1_exp", "p1_pose")


def _part(where: str, key: str, v, width: int, T: int | None = None) -> np.ndarray:
    if not (torch.is_tensor(v) or isinstance(v, np.ndarray)):
        raise UserError(f"{where}: field {key!r}: expected a tensor or array, got {type(v).__name__}")
    return _check_array(f"{where}: field {key!r}", v, (T, width))


def _frame(where: str, key: str, v) -> int | None:
    if torch.is_tensor(v) and v.numel() == 1:
        v = v.item()
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
        raise UserError(f"{where}: field {key!r}: expected an int frame index, got {v!r:.60}")
    return None if v is None else int(v)


def _lm_segment(file: Path, i: int, rec, fps: float, listener_id):
    """One LM-listener record -> (Segment, words dropped after its end, words repaired, beta spread)."""
    where = f"{file}[{i}]"
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a dict (one segment), got {type(rec).__name__}")
    missing = [k for k in LM_KEYS if k not in rec]
    if missing:
        raise UserError(f"{where}: missing field {missing[0]!r} (LM-listener keys: {LM_KEYS}, p{{0,1}}_shape, "
                        f"split_{{start,end}}_frame, {{before,during}}_words; got {sorted(map(str, rec))})")
    lis_exp = _part(where, "p0_exp", rec["p0_exp"], N_EXP)
    T = len(lis_exp)
    lis = np.concatenate([lis_exp, _part(where, "p0_pose", rec["p0_pose"], N_POSE, T)], 1)
    spk = np.concatenate([_part(where, "p1_exp", rec["p1_exp"], N_EXP, T),
                          _part(where, "p1_pose", rec["p1_pose"], N_POSE, T)], 1)
    betas, spread = {}, 0.0
    for k in ("p0_shape", "p1_shape"):
        if rec.get(k) is not None:
            sh = _part(where, k, rec[k], N_SHAPE, T)
            betas[k] = sh.mean(0, dtype=np.float64).astype(np.float32)   # EMOCA estimates shape per frame
            if k == "p0_shape" and T > 1:
                spread = float(sh.std(0).max())
    start_f, end_f = (_frame(where, k, rec.get(k)) for k in ("split_start_frame", "split_end_frame"))
    if start_f is not None and end_f is not None and end_f - start_f != T:
        raise UserError(f"{where}: field 'split_end_frame': expected split_start_frame + T = {start_f} + {T} = "
                        f"{start_f + T} (end exclusive), got {end_f}")
    before, during = (_word_items(where, k, [] if rec.get(k) is None else rec[k]) for k in ("before_words",
                                                                                        "during_words"))
    if (before or during) and start_f is None:
        raise UserError(f"{where}: field 'split_start_frame': needed to place words (absolute times), got None")
    t0, duration = (start_f or 0) / fps, T / fps
    for j, (text, _, end) in enumerate(before):
        if end - t0 > 1e-6:
            raise UserError(f"{where}: field 'before_words'[{j}] ({text!r}): expected end <= the segment start "
                            f"{t0:.3f} s (split_start_frame / fps), got end={end:.3f} s")
    rel = [(text, None if s is None else s - t0, e - t0) for text, s, e in before + during]
    words, repaired = repair_words(rel, WORD_SECONDS)
    inside = [Word(w.text, max(w.start, 0.0), min(w.end, duration)) for w in words if 0 < w.end <= duration + 1e-6]
    name = f"{rec.get('fname', '')}:{start_f}-{end_f}" if start_f is not None else f"{file.stem}[{i}]"
    seg = _segment(where, speaker_motion=spk, listener_motion=lis, fps=fps, listener_beta=betas.get("p0_shape"),
                   listener_id=listener_id(rec) if callable(listener_id) else listener_id,
                   speaker_beta=betas.get("p1_shape"), words=inside,
                   history_words=[w for w in words if w.end <= 0], name=name)
    return seg, sum(w.end > duration + 1e-6 for w in words), repaired, spread


def load_lm_listener(path: str | os.PathLike, *, splits: Iterable[str] = SPLITS, fps: float = FPS,
                     listener_id: str | Callable[[dict], str] | None = None, allow_pickle: bool = False,
                     progress: bool = True) -> Corpus:
    """Read an LM-listener directory (``segments_{split}.pth`` + stats; p0 = listener). ``listener_id``: a string, a
    function of the raw record, or None (the directory name); ``allow_pickle``: only for files you trust."""
    d = _directory(path, "an LM-listener dataset: segments_{train,val,test}.pth", splits)
    missing = [f"segments_{s}.pth" for s in splits if not (d / f"segments_{s}.pth").is_file()]
    if missing:
        raise UserError(f"{d}: missing {', '.join(missing)} (LM-listener layout: segments_{{train,val,test}}.pth, "
                        f"mean.npy, std.npy); found {sorted(p.name for p in d.iterdir())[:20]}")
    listener_id = d.resolve().name if listener_id is None else listener_id
    corpus = Corpus(source="lm-listener", fps=float(fps))
    dropped, repaired, spread = 0, 0, 0.0
    for s in splits:
        file = d / f"segments_{s}.pth"
        data = safe_pickle.load_torch(file, allow_pickle)
        if not isinstance(data, (list, tuple)):
            raise UserError(f"{file}: expected a list of dicts (one per segment), got {type(data).__name__}")
        for i, rec in enumerate(_progress(data, f"read {file.name}", progress)):
            seg, n_drop, n_fix, sp = _lm_segment(file, i, rec, float(fps), listener_id)
            getattr(corpus, s).append(seg)
            dropped, repaired, spread = dropped + n_drop, repaired + n_fix, max(spread, sp)
    corpus.info.update(dropped_words=dropped, listener_beta_max_std=spread)
    if dropped:
        log.info("%s: dropped %d during_words ending after their segment (as LM-listener does)", d, dropped)
    if spread > 0.05:
        log.warning("%s: p0_shape varies over time (largest per-dim std %.3g); listener_beta is its mean", d, spread)
    corpus.mean, corpus.std, src = _read_stats(d, (("mean.npy", "std.npy"), ("p0_mean.npy", "p0_std.npy")))
    if src:
        corpus.info["stats"] = src
    return _finish(corpus, d, repaired)


def save_lm_listener(corpus, directory: str | os.PathLike, *, with_beta: bool = True) -> Path:
    """``corpus`` as ``segments_{split}.pth`` (p0 = listener, segments 300 frames apart) + ``mean.npy``/``std.npy``;
    SA, emotion, valence, word starts and ids are dropped; ``with_beta=False`` writes no ``p{0,1}_shape``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        recs = []
        for i, seg in enumerate(getattr(corpus, split)):
            start = 300 + i * (seg.T + 300)
            t0 = start / seg.fps
            rec = {"fname": f"{seg.name}.mp4", "split_start_frame": start, "split_end_frame": start + seg.T}
            for key, ws in (("before_words", seg.history_words), ("during_words", seg.words)):
                rec[key] = [{"text": w.text, "end": float(t0 + w.end)} for w in ws]
            for p, motion, beta in ((0, seg.listener_motion, seg.listener_beta),
                                    (1, seg.speaker_motion, seg.speaker_beta)):
                rec[f"p{p}_exp"], rec[f"p{p}_pose"] = torch.tensor(motion[:, :N_EXP]), torch.tensor(motion[:, N_EXP:])
                if with_beta:
                    beta = np.zeros(N_SHAPE, np.float32) if beta is None else beta
                    rec[f"p{p}_shape"] = torch.tensor(beta).repeat(seg.T, 1)
            recs.append(rec)
        torch.save(recs, d / f"segments_{split}.pth")
    mean, std = motion_stats(corpus.train)
    np.save(d / "mean.npy", mean)
    np.save(d / "std.npy", std)
    return d


L2L_WIDTH = 184  # exp 50 | pose 6 | detail 128


def _l2l_file(split_dir: Path, person: int, kind: str) -> Path:
    return split_dir / f"p{person}_{kind}_clean_deca.npy"


def _l2l_speaker_dirs(d: Path) -> list[Path]:
    def is_speaker(p):
        return any(_l2l_file(p / s, o, "list_faces").is_file() for s in ("train", "test") for o in (0, 1))
    if is_speaker(d):
        return [d]
    root = d / "data" if (d / "data").is_dir() else d
    return sorted(p for p in root.iterdir() if p.is_dir() and is_speaker(p))


def _l2l_runs(ff: Path, N: int, R: int, allow_pickle: bool):
    """Rows grouped into runs of contiguous rows of one video (``*_files``: [video, _, frame] per frame),
    ordered by (video, first frame), and each run's name; one run per row without a files array."""
    if not ff.is_file():
        return [[i] for i in range(N)], [str(i) for i in range(N)]
    files = safe_pickle.load_npy(ff, allow_pickle)
    if files.shape != (N, R, 3):
        raise UserError(f"{ff}: expected shape ({N}, {R}, 3) ([video id, unused, frame] per frame), "
                        f"got {tuple(files.shape)}")
    vids = [str(v) for v in files[:, 0, 0]]
    try:
        frames = np.asarray(files[:, :, 2]).astype(np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise UserError(f"{ff}: field 'frame' ([:, :, 2]): expected integer frame numbers, "
                        f"got {files[0, 0, 2]!r} ({e})") from None
    runs = []
    for i in sorted(range(N), key=lambda i: (vids[i], frames[i, 0])):
        if runs and vids[runs[-1][-1]] == vids[i] and frames[i, 0] == frames[runs[-1][-1], -1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs, [f"{vids[r[0]]}:{frames[r[0], 0]}-{frames[r[-1], -1] + 1}" for r in runs]


def _l2l_split(sd: Path, split: str, fps: float, allow_pickle: bool) -> tuple[list[Segment], int]:
    """One speaker's split: p{o}_list_faces (the listener) with p{1-o}_speak_* (o = 1 for fallon)."""
    o, d = (1 if sd.name == "fallon" else 0), sd / split
    lf, sf, af, ff = (_l2l_file(d, p, k) for p, k in ((o, "list_faces"), (1 - o, "speak_faces"),
                                                       (1 - o, "speak_audio"), (1 - o, "speak_files")))
    for f in (lf, sf):
        if not f.is_file():
            raise UserError(f"{f}: missing (Learning2Listen pairs p{o}_list_faces with p{1 - o}_speak_faces for "
                            f"speaker {sd.name!r}, split {split!r})")
    lis, spk = (safe_pickle.load_npy(f, allow_pickle, mmap=True) for f in (lf, sf))
    for f, a in ((lf, lis), (sf, spk)):
        if a.ndim != 3 or a.shape[1] < 1 or a.shape[2] != L2L_WIDTH or not np.issubdtype(a.dtype, np.floating):
            raise UserError(f"{f}: expected float faces of shape (N, 64, {L2L_WIDTH}) (exp 50 | pose 6 | detail 128), "
                            f"got {tuple(a.shape)} {a.dtype}")
    if spk.shape != lis.shape:
        raise UserError(f"{sf}: expected shape {lis.shape} (rows/frames as {lf.name}), got {spk.shape}")
    N, R = lis.shape[:2]
    runs, names = _l2l_runs(ff, N, R, allow_pickle)
    order = [i for r in runs for i in r]
    lis, spk = (_frozen(_check_array(f"{f}: faces[:, :, :56]", a[:, :, :D_MOTION], (N, R, D_MOTION))[order])
                .reshape(N * R, D_MOTION) for f, a in ((lf, lis), (sf, spk)))
    mel = None
    if af.is_file():
        mel = _check_array(str(af), safe_pickle.load_npy(af, allow_pickle, mmap=True), (N, MEL_PER_FRAME * R, None))
        mel = _frozen(mel[order]).reshape(N * R * MEL_PER_FRAME, -1)
    segs, pos = [], 0
    for run, name in zip(runs, names):
        n = len(run) * R
        segs.append(Segment(speaker_motion=spk[pos:pos + n], listener_motion=lis[pos:pos + n], fps=fps,
                            listener_id=sd.name, name=f"{sd.name}/{split}/{name}",
                            mel=None if mel is None else mel[MEL_PER_FRAME * pos:MEL_PER_FRAME * (pos + n)]))
        pos += n
    return segs, N


def load_learning2listen(path: str | os.PathLike, *, speakers: Iterable[str] | None = None,
                         splits: Iterable[str] = ("train", "test"), fps: float = FPS,
                         allow_pickle: bool = False, progress: bool = True) -> Corpus:
    """Read Learning2Listen ``.npy`` files (``path``: the repo root, its ``data/`` or one speaker's directory); a
    video's contiguous 64-frame rows become one Segment, with its mel when present (no words, beta, val split)."""
    d = _directory(path, "Learning2Listen: data/<speaker>/{train,test}/p0_list_faces_clean_deca.npy", splits,
                   ("train", "test"))
    dirs = _l2l_speaker_dirs(d)
    if speakers is not None:
        by_name = {p.name: p for p in dirs}
        lacking = [s for s in speakers if s not in by_name]
        if lacking:
            raise UserError(f"{d}: no Learning2Listen speaker directories {lacking}; found {sorted(by_name)}")
        dirs = [by_name[s] for s in speakers]
    if not dirs:
        raise UserError(f"{d}: no Learning2Listen data: expected <speaker>/{{train,test}}/"
                        f"p{{0,1}}_list_faces_clean_deca.npy here or under data/")
    corpus = Corpus(source="learning2listen", fps=float(fps))
    rows = 0
    for sd in _progress(dirs, "read Learning2Listen", progress):
        for split in splits:
            segs, n = _l2l_split(sd, split, float(fps), allow_pickle)
            getattr(corpus, split).extend(segs)
            rows += n
    log.info("%s: joined %d Learning2Listen rows into %d segments (contiguous rows of one video)", d, rows,
             len(corpus.train) + len(corpus.test))
    corpus.info.update(speakers=[p.name for p in dirs], rows=rows)
    return _finish(corpus, d)


#: Segment array fields -> dtype; arrays.safetensors holds ``{split}/{i}/{field}`` for those a segment has
_ARRAYS = dict.fromkeys(("speaker_motion", "listener_motion", "listener_beta", "speaker_beta", "emotion", "valence",
                         "mel"), np.float32) | {"sa_tokens": np.int64}


def _write(path: Path, data: bytes) -> None:
    """Atomic write (temporary file, then rename) with the mode ``open`` gives: 0666 & ~umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _encode_info(x, path: str, arrays: dict):
    """JSON-able copy of ``info``: numpy arrays go to ``arrays`` as ``{"__array__": key}`` (bit-exact)."""
    if isinstance(x, dict):
        bad = [k for k in x if not isinstance(k, str)]
        if bad:
            raise UserError(f"corpus.{path}: expected str keys (JSON), got {bad[0]!r} ({type(bad[0]).__name__})")
        return {k: _encode_info(v, f"{path}.{k}", arrays) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode_info(v, f"{path}[{i}]", arrays) for i, v in enumerate(x)]
    if isinstance(x, np.ndarray) and x.dtype != object:
        arrays[f"{path}#{len(arrays)}"] = x
        return {"__array__": f"{path}#{len(arrays) - 1}"}
    x = x.item() if isinstance(x, np.generic) else x
    if x is None or isinstance(x, (bool, int, str)) or (isinstance(x, float) and math.isfinite(x)):
        return x
    raise UserError(f"corpus.{path}: expected JSON values (finite numbers) or numeric numpy arrays, got {x!r:.60}")


def _decode_info(x, arrays: dict, where: str):
    if isinstance(x, dict) and set(x) == {"__array__"}:
        if x["__array__"] not in arrays:
            raise UserError(f"{where}: missing array {x['__array__']!r} referenced by meta.json info")
        return arrays[x["__array__"]]
    if isinstance(x, dict):
        return {k: _decode_info(v, arrays, where) for k, v in x.items()}
    return [_decode_info(v, arrays, where) for v in x] if isinstance(x, list) else x


def _check_sa(where: str, sa, n_sa) -> None:
    if n_sa is not None and sa is not None and sa.size and sa.max() >= n_sa:
        raise UserError(f"{where}: expected ids in [0, {n_sa}) (the corpus n_sa), got {sa.max()}")


def save_corpus(corpus, directory: str | os.PathLike, *, progress: bool = True) -> Path:
    """Write ``corpus`` (a Corpus or object with ``.train/.val/.test``, a dict of splits, or a list of Segments =
    train) to ``arrays.safetensors`` then ``meta.json``, each atomically; :func:`load_corpus` reads it back."""
    from safetensors.numpy import save

    if isinstance(corpus, (list, tuple)):
        corpus = Corpus(train=list(corpus))
    elif isinstance(corpus, dict):
        if set(corpus) - set(SPLITS):
            raise UserError(f"corpus: expected split keys {SPLITS}, got extra {sorted(set(corpus) - set(SPLITS))}")
        corpus = Corpus(**corpus)
    if not all(hasattr(corpus, k) for k in SPLITS):
        raise UserError(f"corpus: expected a Corpus, an object with .train/.val/.test, a dict of splits or a list of "
                        f"Segments, got {type(corpus).__name__}")
    n_sa = getattr(corpus, "n_sa", None)
    if n_sa is not None and (isinstance(n_sa, bool) or not isinstance(n_sa, (int, np.integer)) or n_sa < 0):
        raise UserError(f"corpus.n_sa: expected None or an int >= 0 (the SA vocabulary size), got {n_sa!r}")
    arrays, splits = {}, {}
    for split in SPLITS:
        splits[split] = []
        for i, s in enumerate(_progress(getattr(corpus, split), f"save {split}", progress)):
            if not isinstance(s, Segment):
                raise UserError(f"corpus.{split}[{i}]: expected a Segment, got {type(s).__name__}")
            _check_sa(f"corpus.{split}[{i}]: sa_tokens", s.sa_tokens, n_sa)
            arrays.update({f"{split}/{i}/{k}": getattr(s, k) for k in _ARRAYS if getattr(s, k) is not None})
            splits[split].append({"name": s.name, "listener_id": s.listener_id, "fps": s.fps, "sa_rate": s.sa_rate}
                                 | {k: [[w.text, w.start, w.end] for w in getattr(s, k)] for k in WORD_FIELDS})
    if getattr(corpus, "mean", None) is not None:
        arrays["mean"], arrays["std"] = _mean_std(("corpus.mean", corpus.mean), ("corpus.std", corpus.std))
    info = _encode_info(dict(getattr(corpus, "info", None) or {}), "info", arrays)
    fps = getattr(corpus, "fps", None)
    meta = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "arrays": ARRAYS_FILE,
            "fps": None if fps is None else float(fps), "n_sa": None if n_sa is None else int(n_sa),
            "source": str(getattr(corpus, "source", "minilisten")), "info": info, "splits": splits}
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write(d / ARRAYS_FILE, save({k: np.asarray(v, order="C") for k, v in arrays.items()}))
    _write(d / META_FILE, json.dumps(meta, indent=1, allow_nan=False).encode("utf-8"))
    return d


_KINDS = {"int": int, "number": (int, float), "str": str, "list": list, "dict": dict}


def _get(where: str, obj: dict, key: str, kind: str, default=_MISSING):
    """``obj[key]`` as a JSON ``kind`` (int, number, str, list, dict); None passes when it is the default."""
    if key not in obj or (obj[key] is None and default is None):
        if default is _MISSING:
            raise UserError(f"{where}: missing field {key!r}")
        return default
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, _KINDS[kind]):
        raise UserError(f"{where}: field {key!r}: expected {kind}, got {type(v).__name__} {v!r:.60}")
    return v


def _read_meta(mp: Path) -> dict:
    """meta.json, its fields checked (types, format tag and version, a file name for arrays, split lists)."""
    if not mp.is_file():
        raise UserError(f"{mp}: missing (a minilisten corpus directory holds {META_FILE} + {ARRAYS_FILE})")
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{mp}: not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_TAG:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"{mp}: field 'format': expected {FORMAT_TAG!r}, got {got!r}")
    w = str(mp)
    meta |= {"version": _get(w, meta, "version", "int"), "n_sa": _get(w, meta, "n_sa", "int", None),
             "arrays": _get(w, meta, "arrays", "str", ARRAYS_FILE), "info": _get(w, meta, "info", "dict", None) or {},
             "fps": _get(w, meta, "fps", "number", None), "source": _get(w, meta, "source", "str", "minilisten"),
             "splits": _get(w, meta, "splits", "dict")}
    for key, ok, expected in (("version", meta["version"] == FORMAT_VERSION, FORMAT_VERSION),
                              ("n_sa", (meta["n_sa"] or 0) >= 0, "null or an int >= 0 (SA vocabulary size)"),
                              ("arrays", Path(meta["arrays"]).name == meta["arrays"] not in ("", ".", ".."),
                               f"a file name inside the corpus directory (e.g. {ARRAYS_FILE!r})"),
                              ("splits", set(meta["splits"]) <= set(SPLITS), f"keys from {SPLITS}")):
        if not ok:
            raise UserError(f"{mp}: field {key!r}: expected {expected}, got {meta[key]!r}")
    for split, recs in meta["splits"].items():
        if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
            raise UserError(f"{mp}: field 'splits.{split}': expected a list of segment records (objects)")
    return meta


def load_corpus(directory: str | os.PathLike, *, progress: bool = True) -> Corpus:
    """Read a directory in :func:`save_corpus`'s layout; words are repaired, other faults raise a UserError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    d = _directory(directory, f"a minilisten corpus: {META_FILE} + {ARRAYS_FILE}")
    mp = d / META_FILE
    meta = _read_meta(mp)
    ap = d / meta["arrays"]
    if not ap.is_file():
        raise UserError(f"{ap}: missing (named by {mp})")
    if not ap.resolve().is_relative_to(d.resolve()):
        raise UserError(f"{mp}: field 'arrays': expected a file inside the corpus directory {d}, got {ap.name!r} "
                        f"resolving to {ap.resolve()}")
    try:
        arrays = load_file(str(ap))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{ap}: not a readable safetensors file: {e}") from e
    corpus = Corpus(source=meta["source"], fps=meta["fps"], n_sa=meta["n_sa"],
                    info=_decode_info(meta["info"], arrays, str(ap)))
    repaired = 0
    for split, recs in meta["splits"].items():
        for i, r in enumerate(_progress(recs, f"load {split}", progress)):
            where = f"{mp}: splits.{split}[{i}] ({r.get('name', '')!r})"
            kw = {k: arrays[f"{split}/{i}/{k}"] for k in _ARRAYS if f"{split}/{i}/{k}" in arrays}
            for k, dt in _ARRAYS.items():
                if k in kw and kw[k].dtype != dt:
                    raise UserError(f"{ap}: array '{split}/{i}/{k}': expected dtype {np.dtype(dt)}, got {kw[k].dtype}")
                if k.endswith("_motion") and k not in kw:
                    raise UserError(f"{ap}: missing array '{split}/{i}/{k}' (segment {i} of {split} in {mp.name})")
            _check_sa(f"{ap}: array '{split}/{i}/sa_tokens'", kw.get("sa_tokens"), corpus.n_sa)
            words = {k: repair_words(_word_items(where, k, _get(where, r, k, "list"))) for k in WORD_FIELDS}
            repaired += sum(n for _, n in words.values())
            seg = _segment(f"{where} / {ap.name}", fps=_get(where, r, "fps", "number"),
                           name=_get(where, r, "name", "str", ""),
                           listener_id=_get(where, r, "listener_id", "str", "listener"),
                           sa_rate=_get(where, r, "sa_rate", "number", 50.0),
                           **{k: ws for k, (ws, _) in words.items()}, **{k: _frozen(a) for k, a in kw.items()})
            getattr(corpus, split).append(seg)
    if "mean" in arrays or "std" in arrays:
        corpus.mean, corpus.std = _mean_std(*((f"{ap}: array {k!r}", arrays.get(k)) for k in ("mean", "std")))
    return _finish(corpus, d, repaired)


def detect_layout(path: str | os.PathLike) -> str:
    """``"minilisten"``, ``"lm-listener"`` or ``"learning2listen"``; UserError when none matches."""
    d = Path(path)
    if not d.is_dir():
        got = "a file" if d.exists() else "nothing there (not found)"
        raise UserError(f"dataset ({d}): expected a dataset directory, got {got}")
    if (d / META_FILE).is_file():
        return "minilisten"
    if any(d.glob("segments_*.pth")):
        return "lm-listener"
    if _l2l_speaker_dirs(d):
        return "learning2listen"
    raise UserError(
        f"{d}: no known dataset layout. Looked for: {META_FILE} + {ARRAYS_FILE} (minilisten, save_corpus); "
        f"segments_{{train,val,test}}.pth (LM-listener); [data/]<speaker>/{{train,test}}/"
        f"p{{0,1}}_list_faces_clean_deca.npy (Learning2Listen). Found: {sorted(p.name for p in d.iterdir())[:20]}")


def load_dataset(path: str | os.PathLike, **kwargs) -> Corpus:
    """Load any supported layout (see :func:`detect_layout`); ``kwargs`` go to the reader."""
    reader = {"minilisten": load_corpus, "lm-listener": load_lm_listener, "learning2listen": load_learning2listen}
    return reader[detect_layout(path)](path, **kwargs)
