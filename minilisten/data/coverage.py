"""What a dataset has, and so what each stage can do with it (the one home of that rule): speaker modalities, V_SA,
beta, valence, identities, windows that fit, a held-out validation split. What each layout gives: docs/data.md."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError
from .segment import Segment

log = logging.getLogger("minilisten.data")

MODALITY_FIELD = {"W": "words", "SA": "sa_tokens", "emo": "emotion"}
#: What a dataset without each piece leaves out (Coverage.missing, said once by the report).
MISSING = {
    "W": "no words: W left out of the LM inputs (the LM conditions on SA/emo only)",
    "SA": "no SA tokens (sa_tokens): SA left out of the LM inputs",
    "emo": "no speaker emotion: emo left out of the LM inputs",
    "beta": "no listener shape beta: the identity-disentangled (IN, AdaIN) VQ-VAE needs beta (100,) per segment "
            "(FLAME/EMOCA shape of the listener); only the naive VQ-VAE is trained",
    "valence": "no valence: L2 Affect left out (it compares valence, which the data lacks)",
}
#: V_SA when a dataset has SA tokens but does not say its codebook size (SpeechTokenizer RVQ-1).
DEFAULT_N_SA = 1024


def available_modalities(segments: Iterable[Segment]) -> tuple[str, ...]:
    """Modalities (W, SA, emo) the segments have: SA and emo when every segment has them, W when any has words."""
    segs = list(segments)
    has = {"W": any(s.words or s.history_words for s in segs),
           "SA": all(s.sa_tokens is not None for s in segs), "emo": all(s.emotion is not None for s in segs)}
    return tuple(m for m in MODALITY_FIELD if segs and has[m])


def resolve_n_sa(corpus, segments: Sequence[Segment]) -> int:
    """V_SA for an LM on this data: the corpus's ``n_sa`` when it states one, 0 when no segment has
    SA tokens, else :data:`DEFAULT_N_SA`; token ids beyond it raise (naming the segment)."""
    n_sa = getattr(corpus, "n_sa", None)
    with_sa = [s for s in segments if s.sa_tokens is not None]
    if not with_sa:
        return 0 if n_sa is None else int(n_sa)
    n = DEFAULT_N_SA if n_sa is None else int(n_sa)
    for s in with_sa:
        if s.sa_tokens.size and int(s.sa_tokens.max()) >= n:
            raise UserError(f"segment {s.name!r}: sa_tokens: expected ids in [0, {n}) "
                            f"({'the dataset n_sa' if n_sa is not None else 'SpeechTokenizer default'}), "
                            f"got {int(s.sa_tokens.max())}")
    return n


@dataclass
class Coverage:
    """What a dataset's splits support; ``missing``: one line per missing piece and what it leaves out."""
    modalities: tuple[str, ...]
    has_beta: bool
    has_valence: bool
    fps: float
    n_identities: int
    missing: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, splits: dict[str, list[Segment]]) -> "Coverage":
        segs = [s for v in splits.values() for s in v]
        if not segs:
            raise UserError("dataset: expected segments in at least one split, got none")
        mods = available_modalities(segs)
        has_beta = all(s.listener_beta is not None for s in segs)
        has_val = all(s.valence is not None for s in segs)
        rates = sorted({float(s.fps) for s in segs})
        if len(rates) != 1:
            raise UserError(f"dataset: expected one frame rate for all segments, got {rates}")
        betas = [s.listener_beta for s in segs if s.listener_beta is not None]
        n_beta = int(identity_groups(np.stack(betas)).max()) + 1 if betas else 0
        n_ids = max(len({s.listener_id for s in segs}), n_beta)
        if not mods:
            raise UserError("dataset: expected at least one speaker modality (words, sa_tokens or emotion) in every "
                            "segment, got none: the LM has nothing to condition on")
        have = {m: m in mods for m in MODALITY_FIELD} | {"beta": has_beta, "valence": has_val}
        missing = [line for key, line in MISSING.items() if not have[key]]
        return cls(mods, has_beta, has_val, rates[0], n_ids, missing)

    def describe(self) -> str:
        head = (f"{self.fps:g} fps, {self.n_identities} listener identit{'y' if self.n_identities == 1 else 'ies'}, "
                f"speaker modalities {'+'.join(self.modalities)}, beta {'yes' if self.has_beta else 'no'}, "
                f"valence {'yes' if self.has_valence else 'no'}")
        return "\n".join([head] + [f"  - {m}" for m in self.missing])


def fit_window(segments: Sequence[Segment], want: int, r: int = 8, what: str = "window") -> int:
    """``want`` frames when some segment is that long, else the longest cut to a multiple of ``r`` (logged)."""
    longest = max((s.T for s in segments), default=0)
    if longest < r:
        raise UserError(f"segments: expected at least one segment of >= {r} frames, got the longest with {longest}")
    fit = longest // r * r
    if fit < want:
        log.info("%s: %d frames, the longest multiple of %d the segments allow (not %d)", what, fit, r, want)
    return min(want, fit)


def with_val_split(corpus, fraction: float = 0.1, seed: int = 0):
    """``(train, val, note)``: the corpus's own val split, or when it has none (Learning2Listen) a
    seeded ``fraction`` of train held out, with a note saying so; test is never touched."""
    if corpus.val:
        return list(corpus.train), list(corpus.val), None
    train = list(corpus.train)
    if len(train) < 2:
        raise UserError(f"dataset: no val split and {len(train)} training segment(s): expected >= 2 to hold one out")
    n_val = max(1, int(round(fraction * len(train))))
    pick = set(np.random.default_rng(seed).permutation(len(train))[:n_val].tolist())
    note = f"no val split: {n_val} of {len(train)} training segments held out for validation"
    return [s for i, s in enumerate(train) if i not in pick], [s for i, s in enumerate(train) if i in pick], note


#: Betas closer than this (max-abs) are one person: EMOCA's per-segment means differ by ~1e-3 within one person.
BETA_SAME_PERSON = 0.05


def identity_groups(betas: np.ndarray, tol: float = BETA_SAME_PERSON) -> np.ndarray:
    """Person index per row of ``betas (N, 100)``: a row joins the first group whose first member is within ``tol``
    (max-abs); groups are numbered in order of appearance."""
    heads, out = [], []
    for row in np.asarray(betas, np.float64):
        k = next((k for k, h in enumerate(heads) if np.abs(row - h).max() <= tol), len(heads))
        if k == len(heads):
            heads.append(row)
        out.append(k)
    return np.array(out, np.int64)
