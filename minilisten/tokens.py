"""Tokens: the vocabulary, every time -> step/frame rule and the interleaved sequences (Lai et al. Eq. 1-4), the
one home of the token layout's rules (training, decoding, streaming, ARIG inputs). Layout, context policy:
docs/streaming.md."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from .data.segment import N_EMOTIONS, Word, check_emotion_probs
from .errors import UserError

MODALITIES = ("W", "SA", "emo")
PLACEMENTS = ("eq1", "lm_listener")
SPECIALS = ("<bos>", "<pad>", "<sa>", "</sa>", "<emo>", "</emo>")
IGNORE = -100            # target of positions without a loss
SA_RATE = 50.0           # SpeechTokenizer tokens per second
EPS = 1e-6               # tolerance on times expressed in frames


@dataclass(frozen=True)
class Vocab:
    """Token-id layout (docs/streaming.md). ``lr/sa/emo(code)``: code(s) in ``[0, n_lr/n_sa/n_emo)`` (int, array,
    tensor) -> token id(s); ints and arrays are range-checked, tensors are not (no host sync in decoding loops)."""
    n_words: int
    n_lr: int = 256
    n_sa: int = 1024
    n_emo: int = N_EMOTIONS

    def __post_init__(self):
        for f in fields(self):   # V_SA / V_emo may be empty (0): data without SA tokens or emotion
            v, low = getattr(self, f.name), (0 if f.name in ("n_sa", "n_emo") else 1)
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low):
                raise ValueError(f"Vocab.{f.name}: expected an integer >= {low}, got {v!r}")

    bos = property(lambda self: self.n_words + 0)
    pad = property(lambda self: self.n_words + 1)
    sa_start = property(lambda self: self.n_words + 2)
    sa_end = property(lambda self: self.n_words + 3)
    emo_start = property(lambda self: self.n_words + 4)
    emo_end = property(lambda self: self.n_words + 5)
    lr_offset = property(lambda self: self.n_words + len(SPECIALS))
    sa_offset = property(lambda self: self.lr_offset + self.n_lr)
    emo_offset = property(lambda self: self.sa_offset + self.n_sa)
    size = property(lambda self: self.emo_offset + self.n_emo)

    def _map(self, code, offset: int, n: int, name: str):
        if torch.is_tensor(code):
            return code + offset
        c = np.asarray(code)
        if c.size and (c.min() < 0 or c.max() >= n):
            what = "code: expected a value" if c.ndim == 0 else "codes: expected values"
            raise ValueError(f"{name} {what} in [0, {n}), got {c.min() if c.min() < 0 else c.max()}")
        return offset + int(c) if c.ndim == 0 else c.astype(np.int64) + offset

    def lr(self, code):
        return self._map(code, self.lr_offset, self.n_lr, "LR")

    def sa(self, code):
        return self._map(code, self.sa_offset, self.n_sa, "SA")

    def emo(self, code):
        return self._map(code, self.emo_offset, self.n_emo, "emo")

    def kind(self, token_id: int) -> str:
        """``"W"``, ``"SA"``, ``"emo"``, ``"LR"`` or the special's name (``"<sa>"``, ...)."""
        t = int(token_id)
        if not 0 <= t < self.size:
            raise ValueError(f"token {token_id}: outside the vocabulary [0, {self.size})")
        if t < self.lr_offset:
            return "W" if t < self.n_words else SPECIALS[t - self.n_words]
        return "LR" if t < self.sa_offset else "SA" if t < self.emo_offset else "emo"

    def kinds(self, ids) -> list[str]:
        """Map a sequence back to its modalities (debugging and tests)."""
        return [self.kind(t) for t in (ids.tolist() if hasattr(ids, "tolist") else ids)]


def check_modalities(modalities) -> tuple[str, ...]:
    """``"W+SA+emo"`` / ``("W", "emo")`` -> a non-empty tuple in canonical order; errors name the unknown entry."""
    mods = modalities.replace(",", "+").split("+") if isinstance(modalities, str) else list(modalities)
    mods = [m for m in mods if m]
    bad = [m for m in mods if m not in MODALITIES]
    if bad or not mods:
        raise ValueError(f"modalities: expected a non-empty subset of {MODALITIES} (e.g. 'W+SA+emo'), got "
                         + (f"unknown modality {bad[0]!r}" if bad else "none"))
    return tuple(m for m in MODALITIES if m in mods)


def word_step(end: float, fps: float, r: int = 8, placement: str = "eq1") -> int:
    """Step of a word ending at ``end`` s: Eq. 1 (``"eq1"``: the step holding the end) or LM-listener's rule."""
    if placement == "eq1":
        return max(0, word_frame(end, fps, r))
    if placement == "lm_listener":
        return math.ceil(end * fps - EPS) // r + 1
    raise ValueError(f"word_placement: expected one of {PLACEMENTS}, got {placement!r}")


def word_frame(end: float, fps: float, r: int = 1) -> int:
    """The frame (or step of ``r`` frames) ``k`` whose span ``(k r / fps, (k + 1) r / fps]`` holds ``end`` (or < 0)."""
    return math.ceil(end * fps / r - EPS) - 1


def word_steps(words: list[Word], n_steps: int, fps: float, r: int = 8, placement: str = "eq1") -> list[list[Word]]:
    """Words of each step in time order (``out[i]`` precede ``LR_i``); words of steps ``>= n_steps`` are dropped,
    words ending before 0 s (history) refused; ``placement`` is checked by ``LMConfig``."""
    out: list[list[Word]] = [[] for _ in range(n_steps)]
    for k, w in enumerate(sorted(words, key=lambda w: (w.end, w.start))):
        if w.end < -EPS:
            raise ValueError(f"words[{k}] ({w.text!r}): expected end >= 0 s (inside the clip), got end={w.end:.3f}; "
                             "speech before the first frame belongs in history_words")
        j = word_step(w.end, fps, r, placement)
        if j < n_steps:
            out[j].append(w)
    return out


def sa_bounds(steps, fps: float, r: int = 8, sa_rate: float = SA_RATE):
    """First SA token ``floor(i r sa_rate / fps)`` of LR step(s) ``i`` (int -> int, array -> int64 array)."""
    b = np.floor(np.asarray(steps, dtype=np.float64) * r * sa_rate / fps + EPS).astype(np.int64)
    return int(b) if b.ndim == 0 else b


def sa_frame_bounds(frames, fps: float, sa_rate: float = SA_RATE):
    """First SA token index of ARIG frame(s) ``t``: ``ceil(t sa_rate / fps)`` (a frame takes the tokens that *start*
    in it; LR steps those that *end* in them, :func:`sa_bounds`)."""
    b = np.ceil(np.asarray(frames, dtype=np.float64) * sa_rate / fps - EPS).astype(np.int64)
    return int(b) if b.ndim == 0 else b


def check_sa_tokens(sa_tokens, n_sa: int | None = None, name: str = "sa_tokens") -> np.ndarray:
    """``(M,)`` integer token ids (an empty array of any dtype passes) in ``[0, n_sa)`` -> int64."""
    sa = np.asarray(sa_tokens.detach().cpu() if torch.is_tensor(sa_tokens) else sa_tokens)
    if sa.ndim != 1 or not (np.issubdtype(sa.dtype, np.integer) or sa.size == 0):
        raise UserError(f"{name}: expected a 1-D integer array, got shape {sa.shape} dtype {sa.dtype}")
    hi = (2 ** 63 - 1) if n_sa is None else n_sa - 1
    if sa.size and (sa.min() < 0 or sa.max() > hi):   # checked before the cast: uint64 ids may not fit int64
        bad = int(sa.min()) if sa.min() < 0 else int(sa.max())
        raise UserError(f"{name}: expected token ids in [0, {hi + 1}) (the SA codebook), got {bad}")
    return sa.astype(np.int64)


def sa_steps(sa_tokens: np.ndarray, n_steps: int, fps: float, r: int = 8, sa_rate: float = SA_RATE,
             n_sa: int | None = None) -> list[np.ndarray]:
    """Split an SA token stream (token 0 at the clip's first frame) into ``n_steps`` steps (checked)."""
    sa = check_sa_tokens(sa_tokens, n_sa)
    b = sa_bounds(np.arange(n_steps + 1), fps, r, sa_rate)
    if sa.size < b[-1]:
        raise ValueError(f"sa_tokens: expected at least {b[-1]} tokens for {n_steps} steps of {r} frames at "
                         f"{fps:g} fps and {sa_rate:g} tokens/s, got {sa.size}")
    return [sa[b[i]:b[i + 1]] for i in range(n_steps)]


def emotion_tokens(probs, r: int = 8) -> np.ndarray:
    """Supplement Eq. 7-9: ``probs (T, 8)`` -> ``(T // r,)`` int64, the argmax of each ``r`` frames' mean."""
    p = check_emotion_probs(probs, "emotion")
    n = p.shape[0] // r
    return p[:n * r].reshape(n, r, N_EMOTIONS).mean(1).argmax(1).astype(np.int64)


@dataclass
class SpeakerSteps:
    """Speaker tokens of a clip per LR step (before LM tokenization); absent modalities are ``None``."""
    history: list[Word]                 # W^h, by end time
    words: list[list[Word]] | None      # words[i] precede LR_i
    sa: list[np.ndarray] | None         # SA token ids of each step
    emo: np.ndarray | None              # emotion class of each step
    n_steps: int


def speaker_tokens(seg, modalities=MODALITIES, n_steps: int | None = None, r: int = 8,
                   placement: str = "eq1", n_sa: int | None = None) -> SpeakerSteps:
    """Assign a Segment's words, SA tokens and emotion to ``n_steps`` (default ``T // r``) steps."""
    mods = check_modalities(modalities)
    max_steps = seg.T // r
    n = max_steps if n_steps is None else int(n_steps)
    if not 0 <= n <= max_steps:
        raise ValueError(f"n_steps: expected 0 <= n_steps <= T // r = {seg.T} // {r} = {max_steps}, got {n}")
    words = word_steps(seg.words, n, seg.fps, r, placement) if "W" in mods else None
    for m, field in (("SA", "sa_tokens"), ("emo", "emotion")):
        if m in mods and getattr(seg, field) is None:
            raise ValueError(f"modality {m!r} requested but segment {seg.name!r} has {field}=None")
    hist = sorted(seg.history_words, key=lambda w: w.end) if "W" in mods else []
    sa = sa_steps(seg.sa_tokens, n, seg.fps, r, seg.sa_rate, n_sa) if "SA" in mods else None
    emo = emotion_tokens(seg.emotion, r)[:n] if "emo" in mods else None
    return SpeakerSteps(hist, words, sa, emo, n)


def history_ids(vocab: Vocab, words: list[list[int]], budget: int) -> list[int]:
    """``[<bos>] + W^h``: the most recent whole words (id lists, oldest first) within ``budget`` tokens."""
    n = int(np.searchsorted(np.cumsum([len(ids) for ids in reversed(words)]), budget, side="right"))
    return [vocab.bos] + [t for ids in words[len(words) - n:] for t in ids]


def step_ids(vocab: Vocab, words: list[list[int]] | None = None, sa=None, emo: int | None = None) -> list[int]:
    """One step's tokens ``W_i + [<sa>] + SA_i + [</sa>] + [<emo>, emo_i, </emo>]``; ``None`` leaves one out."""
    s = [t for ids in words for t in ids] if words is not None else []
    if sa is not None:
        s += [vocab.sa_start, *vocab.sa(np.asarray(sa, np.int64)).tolist(), vocab.sa_end]
    if emo is not None:
        s += [vocab.emo_start, vocab.emo(int(emo)), vocab.emo_end]
    return s


def prefix_ids(vocab: Vocab, history: list[int], steps: list[list[int]], j: int, history_tokens: int) -> list[int]:
    """``[<bos>] + H_j``: W^h then the words of steps ``< j``, the last ``history_tokens`` tokens."""
    if j == 0:
        return list(history)
    words = history[1:] + [t for s in steps[:j] for t in s if 0 <= t < vocab.n_words]
    return history[:1] + words[len(words) - min(len(words), history_tokens):]


def context_plan(vocab: Vocab, history: list[int], steps: list[list[int]], max_len: int, history_tokens: int,
                 window_keep: float, with_lr: bool = True) -> list[int]:
    """Start step ``j_i`` of the context of each step ``i`` (docs/streaming.md, context policy)."""
    lens = [len(s) + (1 if with_lr else 0) for s in steps]   # step i's tokens + LR_i
    cum = np.cumsum([0] + lens)

    def length(j: int, i: int) -> int:   # context up to and including LR_i (or step i for S')
        prefix = len(prefix_ids(vocab, history, steps, j, history_tokens))
        return prefix + int(cum[i + 1] - cum[j]) + (0 if with_lr else 1)

    plan, j = [], 0
    for i in range(len(steps)):
        if length(j, i) > max_len:
            budget = max(1, int(window_keep * max_len))
            j = next((k for k in range(j + 1, i + 1) if length(k, i) <= budget), i)
            if length(j, i) > max_len:
                raise ValueError(f"step {i}: {lens[i]} tokens plus the history do not fit the context of "
                                 f"{max_len} tokens; raise max_len or lower history_tokens")
        plan.append(j)
    return plan


def context_ids(vocab: Vocab, history: list[int], steps: list[list[int]], codes, i: int, j: int,
                history_tokens: int) -> list[int]:
    """``[<bos>] + H_j + steps[j] + [LR_j] + ... + steps[i]``: the input whose last position
    predicts ``LR_i`` (``codes`` holds at least ``LR_0 .. LR_{i-1}``)."""
    ids = prefix_ids(vocab, history, steps, j, history_tokens)
    for k in range(j, i):
        ids += steps[k]
        ids.append(vocab.lr(int(codes[k])))
    ids += steps[i]
    return ids


@dataclass
class LMSequence:
    """One sequence; ``targets[p]``: what position p predicts (stage 2: the next LR code; 1: the next id) or IGNORE."""
    ids: np.ndarray        # (L,) int64 token ids
    targets: np.ndarray    # (L,) int64
    stage: int             # 1 = S' (Eq. 2/3), 2 = S (Eq. 1/4)
    n_prefix: int          # length of [<bos>] + H_j
    first_step: int        # steps [first_step, last_step] are predicted in this sequence
    last_step: int

    @property
    def loss_mask(self) -> np.ndarray:
        return self.targets != IGNORE


def pack_sequences(vocab: Vocab, history: list[int], steps: list[list[int]], codes, plan: list[int],
                   history_tokens: int) -> list[LMSequence]:
    """One :class:`LMSequence` per context chunk of ``plan``: S (stage 2) with ``codes (n_steps,)``, S' (stage 1)
    with None; each step is predicted once, with the context inference uses."""
    out = []
    for j in sorted(set(plan)):
        first, last = plan.index(j), len(plan) - 1 - plan[::-1].index(j)
        ids = prefix_ids(vocab, history, steps, j, history_tokens)
        n_prefix = len(ids)
        tg: list[int] = [IGNORE] * n_prefix
        for k in range(j, last + 1):
            if codes is None:   # Eq. 3: the position before each W / SA / emo token of a predicted step
                for t in steps[k]:
                    if k >= first and vocab.kind(t) in ("W", "SA", "emo"):
                        tg[-1] = t
                    ids.append(t)
                    tg.append(IGNORE)
            else:
                ids += steps[k]
                tg += [IGNORE] * len(steps[k])
                if k >= first:
                    tg[-1] = int(codes[k])        # Eq. 4: predicts LR_k, the next token
                ids.append(vocab.lr(int(codes[k])))
                tg.append(IGNORE)
        out.append(LMSequence(np.asarray(ids, np.int64), np.asarray(tg, np.int64), 1 if codes is None else 2,
                              n_prefix, first, last))
    return out


def length_batches(lengths, batch: int) -> list[list[int]]:
    """Indices grouped by equal length (groups in first-seen order), in chunks of at most ``batch``."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [ids[s:s + batch] for ids in groups.values() for s in range(0, len(ids), batch)]


def collate(seqs: list[LMSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest: ``input_ids``, ``attention_mask``, ``targets`` of shape (B, L)."""
    def pad(rows, value):
        return pad_sequence([torch.as_tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value)

    return {"input_ids": pad([s.ids for s in seqs], pad_id), "targets": pad([s.targets for s in seqs], IGNORE),
            "attention_mask": pad([np.ones(len(s.ids)) for s in seqs], 0)}
