"""The synthetic dyadic corpus, minilisten's default data and its tests' ground truth: one world per seed (response
atoms, emotions, phrase types, identities whose style is a function of beta), then one conversation per segment,
all a deterministic function of ``seed``. The generative process and the corpus family: docs/data.md."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import lfilter
from scipy.special import softmax

from ..errors import UserError
from .formats import Corpus
from .segment import D_MOTION, EMOTIONS, N_EMOTIONS, N_EXP, N_POSE, N_SHAPE, Segment, Word

N_SA = 1024
RESPONSES = ("idle", "nod", "smile", "laugh", "concern", "surprise", "frown")
#: How listener identity enters the motion / how the listener responds (the variants of CORPORA).
IDENTITY_MODES = ("offset_gain", "gain", "rhythm")
RESPONSE_MODES = ("cue", "contagion", "backchannel")
RESPONSE_VALENCE = dict(zip(RESPONSES, (0.0, 0.1, 0.6, 0.9, -0.5, 0.2, -0.7)))
# per speaker emotion, in EMOTIONS order (neutral, happy, sad, surprise, fear, disgust, anger, contempt)
EMOTION_PRIOR = dict(zip(EMOTIONS, (.30, .22, .14, .10, .04, .04, .10, .06)))
EMOTION_VALENCE = dict(zip(EMOTIONS, (0.0, 0.8, -0.6, 0.3, -0.5, -0.6, -0.8, -0.5)))
EMOTION_PITCH = dict(zip(EMOTIONS, (0, 3, -3, 4, 2, -1, 1, -2)))
EMOTION_ENERGY = dict(zip(EMOTIONS, (3, 5, 1.5, 5, 3.5, 2.5, 6.5, 2.5)))

PHRASES = {
    "statement": ["i went to the store yesterday", "we moved the meeting to friday", "the train was on time today",
                  "my brother called me this morning", "they painted the house blue"],
    "question": ["do you know what i mean", "can you believe that", "have you ever been there",
                 "would you do the same thing", "did you hear about it"],
    "joke": ["so the dog ate my homework again", "he said he would be on time", "what a great idea that was",
             "of course the printer broke again", "i just love waiting in line"],
    "bad_news": ["my flight got cancelled last night", "i lost my wallet on the bus", "the results came back today",
                 "we did not get the contract"],
    "good_news": ["i finally got the job", "we are having a baby", "the project was approved",
                  "i passed the exam"],
    "story": ["and then she opened the door", "so we drove all night long", "and nobody was there at all",
              "then the lights went out"],
}
_FILLERS = ["so", "well", "um", "and", "like", "you", "know"]

_DEFAULT_BY_EMOTION = {"neutral": "nod", "happy": "smile", "sad": "concern", "surprise": "surprise",
                       "fear": "concern", "disgust": "frown", "anger": "frown", "contempt": "frown"}


#: The ground-truth response atom for each (phrase type, speaker emotion).
RESPONSE_RULE = {(p, e): _DEFAULT_BY_EMOTION[e] for p in PHRASES for e in EMOTIONS} | {
    ("joke", "neutral"): "smile", ("joke", "happy"): "laugh", ("joke", "surprise"): "laugh",
    ("joke", "sad"): "concern", ("joke", "contempt"): "frown", ("joke", "anger"): "frown",
    ("question", "neutral"): "nod", ("question", "happy"): "nod", ("question", "surprise"): "surprise",
    ("statement", "neutral"): "idle", ("statement", "happy"): "nod",
    ("good_news", "neutral"): "smile", ("good_news", "happy"): "laugh", ("good_news", "sad"): "smile",
    ("bad_news", "neutral"): "concern", ("bad_news", "happy"): "surprise",
    ("story", "neutral"): "nod", ("story", "surprise"): "surprise",
}


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    """Moving average over axis 0 with window n (same length, edges repeated)."""
    return uniform_filter1d(x, size=n, axis=0, mode="nearest") if n > 1 else x


def _ar1(rng, T: int, d: int, rho: float, sigma: float) -> np.ndarray:
    """Smooth noise: AR(1) ``x_t = rho x_{t-1} + e_t`` with stationary std ``sigma``."""
    e = rng.normal(0, sigma * np.sqrt(1 - rho ** 2), (T, d))
    e[0] = rng.normal(0, sigma, d)
    return lfilter([1.0], [1.0, -rho], e, axis=0)


def _envelope(t: np.ndarray, t_on: float, dur: float, rise: float = 0.2, decay: float = 0.4) -> np.ndarray:
    up = np.clip((t - t_on) / rise, 0, 1)
    down = np.clip(1 - (t - (t_on + dur)) / decay, 0, 1)
    e = np.minimum(up, down)
    return e * e * (3 - 2 * e)  # smoothstep


def _make_world(rng: np.random.Generator, n_identities: int, identity: str = "offset_gain") -> dict:
    def sparse_dirs(n, k=8, scale=0.8):
        out = np.zeros((n, N_EXP))
        for i in range(n):
            idx = rng.choice(N_EXP, k, replace=False)
            out[i, idx] = rng.normal(0, scale, k)
        return out

    world = {
        "response_exp": sparse_dirs(len(RESPONSES)),
        "emotion_exp": sparse_dirs(N_EMOTIONS, k=10, scale=0.7),
        "M_o": rng.normal(size=(N_EXP, N_SHAPE)), "M_g": rng.normal(size=(N_EXP, N_SHAPE)),
        "M_p": rng.normal(size=(N_POSE, N_SHAPE)), "M_q": rng.normal(size=(N_POSE, N_SHAPE)),
    }
    world["response_exp"][RESPONSES.index("idle")] = 0.0
    world["emotion_exp"][EMOTIONS.index("neutral")] *= 0.2
    world["betas"] = betas = rng.normal(size=(n_identities, N_SHAPE))
    world["M_r"] = rng.normal(size=(3, N_SHAPE))   # drawn last: the default world stays as it was
    world["styles"] = [identity_style(world, b, identity) for b in betas]
    return world


def identity_style(world: dict, beta: np.ndarray, identity: str = "offset_gain") -> dict:
    """The identity style as a function of beta (see :data:`IDENTITY_MODES`)."""
    u = lambda M: np.tanh(M @ beta / 10)  # noqa: E731  (values in (-1, 1), one per row of M)
    style = {"exp_offset": np.zeros(N_EXP), "exp_gain": np.ones(N_EXP), "pose_gain": np.ones(N_POSE),
             "pose_offset": np.zeros(N_POSE), "nod_hz": 2.5, "lag_scale": 1.0}
    if identity == "offset_gain":
        return style | {"exp_offset": 0.6 * u(world["M_o"]), "exp_gain": np.exp(0.5 * u(world["M_g"])),
                        "pose_gain": np.exp(0.4 * u(world["M_p"])), "pose_offset": 0.08 * u(world["M_q"])}
    if identity == "gain":
        return style | {"exp_gain": np.exp(0.8 * u(world["M_g"])), "pose_gain": np.exp(0.6 * u(world["M_p"]))}
    if identity == "rhythm":
        r = u(world["M_r"])   # (3,): nod rate, response lag, pose amplitude
        return style | {"pose_gain": np.full(N_POSE, np.exp(0.7 * r[2])), "nod_hz": 2.5 * np.exp(0.35 * r[0]),
                        "lag_scale": np.exp(0.5 * r[1])}
    raise UserError(f"identity: expected one of {IDENTITY_MODES}, got {identity!r}")


#: response atom -> pose channels [pitch, yaw, roll, jaw x3] it moves: (column, amplitude, Hz: 0 = the
#: envelope alone, None = the identity's nod rate)
_POSE_ATOMS = {"nod": ((0, 0.08, None),), "laugh": ((3, 0.15, 0), (0, 0.04, 4.0)),
               "surprise": ((0, -0.05, 0), (3, 0.08, 0)), "concern": ((2, 0.06, 0), (0, 0.02, 0)),
               "frown": ((0, 0.03, 0),), "smile": ((3, 0.02, 0),)}


def _response_pose(name: str, t: np.ndarray, env: np.ndarray, phase: float, nod_hz: float = 2.5) -> np.ndarray:
    """Pose pattern (T, 6) of a response atom."""
    p = np.zeros((len(t), N_POSE))
    for col, amp, hz in _POSE_ATOMS.get(name, ()):
        hz = nod_hz if hz is None else hz
        p[:, col] = amp * np.sin(2 * np.pi * hz * t + phase) * env if hz else amp * env
    return p


def _conversation(rng, world, style, T: int, fps: float, pre: float, response: str = "cue", drift: float = 0.0) -> dict:
    """Simulate one conversation of T frames (plus ``pre`` seconds of lead-in); docs/data.md."""
    n_all = T + int(round(pre * fps))
    t = np.arange(n_all) / fps - pre                 # seconds, 0 = first frame of the segment
    end_time = T / fps
    emotions, probs = list(EMOTION_PRIOR), np.array(list(EMOTION_PRIOR.values()))
    words, utterances = [], []
    cur = -pre + rng.uniform(0, 0.5)
    while cur < end_time:
        phrase = rng.choice(list(PHRASES))
        emo = emotions[rng.choice(len(emotions), p=probs / probs.sum())]
        text = list(PHRASES[phrase][rng.integers(len(PHRASES[phrase]))].split())
        if rng.random() < 0.3:
            text.insert(0, _FILLERS[rng.integers(len(_FILLERS))])
        u_start = cur
        for w in text:
            d = rng.uniform(0.18, 0.40)
            words.append(Word(w, cur, cur + d))
            cur += d + rng.uniform(0.02, 0.08)
        utterances.append((phrase, emo, u_start, words[-1].end))
        cur = words[-1].end + rng.uniform(0.3, 1.2)

    # ---- speaker: expression, jaw, emotion probabilities, acoustic tokens
    emo_exp = world["emotion_exp"]
    in_word = np.zeros(n_all, bool)
    intensity = np.zeros((n_all, N_EMOTIONS))
    for phrase, emo, a, b in utterances:
        c = EMOTIONS.index(emo)
        w = slice(*np.searchsorted(t, [a - 0.1, b + 0.2 + 0.8]))   # where the envelope is non-zero
        intensity[w, c] += _envelope(t[w], a - 0.1, b - a + 0.3, rise=0.3, decay=0.8) * rng.uniform(0.7, 1.2)
    for w in words:
        in_word[slice(*np.searchsorted(t, [w.start, w.end]))] = True
    spk_exp = intensity @ emo_exp + _ar1(rng, n_all, N_EXP, 0.95, 0.05)
    spk_pose = _ar1(rng, n_all, N_POSE, 0.97, 0.02)
    spk_pose[:, 3] += in_word * 0.1 * (0.5 + 0.5 * np.sin(2 * np.pi * 4.5 * t))
    spk = np.concatenate([spk_exp, spk_pose], 1)

    proto = emo_exp / (np.square(emo_exp).sum(1, keepdims=True))
    logits = 4 * spk_exp @ proto.T + rng.normal(0, 0.7, (n_all, N_EMOTIONS))
    logits[:, EMOTIONS.index("neutral")] += 1.5              # the recogniser's neutral bias
    emotion = softmax(_smooth(logits, 5), axis=1)

    n_sa = int(np.floor((end_time + pre) * 50))
    ts = np.arange(n_sa) / 50 - pre
    sa = np.zeros(n_sa, np.int64)
    base = rng.uniform(5, 9)
    for phrase, emo, a, b in utterances:
        m = (ts >= a) & (ts < b)
        rel = (ts[m] - a) / max(b - a, 1e-3)
        pitch = base + EMOTION_PITCH[emo] + rng.normal(0, 0.8, m.sum())
        if phrase == "question":
            pitch += 4 * np.clip((rel - 0.7) / 0.3, 0, 1)
        if phrase == "joke" and emo in ("contempt", "anger", "disgust"):
            pitch += 2.5 * np.sin(2 * np.pi * 3 * rel)
        energy = EMOTION_ENERGY[emo] + 1.0 * np.sin(2 * np.pi * 4.5 * ts[m]) + rng.normal(0, 0.6, m.sum())
        voiced = np.interp(ts[m], t, in_word.astype(float)) > 0.5
        tok = 1 + 8 * np.clip(np.round(pitch), 0, 15) + np.clip(np.round(energy), 0, 7)
        sa[m] = np.where(voiced, tok.astype(np.int64), 0)

    # ---- listener: responses to utterances, backchannel nods, contagion
    resp_exp = np.zeros((n_all, N_EXP))
    resp_pose = np.zeros((n_all, N_POSE))
    valence = np.zeros(n_all)
    busy_until = -np.inf
    responses = []

    def respond(name, t_on, amp, dur):
        w = slice(*np.searchsorted(t, [t_on, t_on + dur + 0.4]))   # where the envelope is non-zero
        env = _envelope(t[w], t_on, dur) * amp
        resp_exp[w] += env[:, None] * world["response_exp"][RESPONSES.index(name)]
        resp_pose[w] += _response_pose(name, t[w], env, rng.uniform(0, 2 * np.pi), style["nod_hz"])
        valence[w] += env * RESPONSE_VALENCE[name]
        responses.append((name, t_on, dur))

    lag = style["lag_scale"]
    for k, (phrase, emo, a, b) in enumerate(utterances):
        name = RESPONSE_RULE[(phrase, emo)]
        t_on = b + lag * rng.uniform(0.25, 0.6)
        dur = rng.uniform(0.8, 2.0)
        nxt = utterances[k + 1][2] if k + 1 < len(utterances) else np.inf
        if response == "cue":
            if name != "idle":
                respond(name, t_on, rng.uniform(0.7, 1.2), dur)
                busy_until = t_on + dur
            if nxt - b > 0.5 and busy_until < b and rng.random() < 0.5:
                respond("nod", b + lag * rng.uniform(0.2, 0.4), 0.4, 0.6)
        elif response == "backchannel":   # only pauses matter: a nod, or a smile after a happy utterance
            if nxt - b > 0.4 and rng.random() < 0.8:
                respond("smile" if emo == "happy" else "nod", b + lag * rng.uniform(0.2, 0.4), rng.uniform(0.7, 1.2),
                        0.5 + 0.4 * dur)

    spk_val = intensity @ np.array([EMOTION_VALENCE[e] for e in EMOTIONS])
    n_lag = int(round(0.5 * lag * fps))
    delayed_exp = np.concatenate([np.zeros((n_lag, N_EXP)), _smooth(spk_exp, int(fps // 3))[:len(spk_exp) - n_lag]])
    delayed_val = np.concatenate([np.zeros(n_lag), spk_val[:len(spk_val) - n_lag]])
    contagion = 0.25
    if response == "contagion":
        # the listener answers the speaker's emotion (not the words) after the lag: the emotion's
        # default response atom, weighted by the delayed, smoothed emotion intensity
        n_lag2 = int(round(0.8 * lag * fps))
        inten = np.concatenate([np.zeros((n_lag2, N_EMOTIONS)), _smooth(intensity, int(fps // 2))[:n_all - n_lag2]])
        atom = np.array([RESPONSES.index(_DEFAULT_BY_EMOTION[e]) for e in EMOTIONS])
        resp_exp += inten @ world["response_exp"][atom]
        for c, e in enumerate(EMOTIONS):
            env = np.clip(inten[:, c], 0, 1.5)
            resp_pose += _response_pose(_DEFAULT_BY_EMOTION[e], t, env, rng.uniform(0, 2 * np.pi), style["nod_hz"])
        valence = inten @ np.array([RESPONSE_VALENCE[_DEFAULT_BY_EMOTION[e]] for e in EMOTIONS])
        contagion = 0.5
    lis_exp = style["exp_offset"] + style["exp_gain"] * (resp_exp + contagion * delayed_exp)
    lis_exp += _ar1(rng, n_all, N_EXP, 0.95, 0.03) + rng.normal(0, 0.01, (n_all, N_EXP))
    lis_pose = style["pose_offset"] + style["pose_gain"] * resp_pose
    lis_pose += _ar1(rng, n_all, N_POSE, 0.95, 0.01) + rng.normal(0, 0.003, (n_all, N_POSE))
    if drift:   # slow per-clip nuisance (tracking drift, posture), unrelated to identity and speaker
        drng = np.random.default_rng(rng.integers(2**32))
        rho = np.exp(-1.0 / (6.0 * fps))   # a 6 s time constant
        lis_exp += drng.normal(0, drift, N_EXP) + _ar1(drng, n_all, N_EXP, rho, drift)
        lis_pose += drng.normal(0, drift / 8, N_POSE) + _ar1(drng, n_all, N_POSE, rho, drift / 8)
    lis = np.concatenate([lis_exp, lis_pose], 1)
    valence = np.clip(_smooth(valence + 0.3 * delayed_val, 5), -1, 1)

    s = n_all - T   # crop the lead-in
    return dict(speaker=spk[s:], listener=lis[s:], emotion=emotion[s:], valence=valence[s:],
                sa=sa[int(round(pre * 50)):], words=words, utterances=utterances, responses=responses)


def synthetic_corpus(seed: int = 0, n_identities: int = 8, n_segments: int = 300, seconds: float = 64.0,
                     fps: float = 30.0, split: tuple[float, float, float] = (0.8, 0.1, 0.1), *,
                     identity: str = "offset_gain", response: str = "cue", modalities: str = "all",
                     beta: str = "identity", drift: float = 0.0) -> Corpus:
    """Segments of ``round(seconds * fps)`` frames split by segment (stratified by identity); ``info`` holds the
    ground truth (world, ``betas[k]`` of listener ``id{k}``, events). Keywords pick the assumptions: identity,
    response, modalities, beta, drift (std of a slow per-clip listener drift); :data:`CORPORA` names the variants."""
    for name, v, allowed in (("identity", identity, IDENTITY_MODES), ("response", response, RESPONSE_MODES),
                             ("modalities", modalities, ("all", "words")), ("beta", beta, ("identity", "random"))):
        if v not in allowed:
            raise UserError(f"{name}: expected one of {allowed}, got {v!r}")
    for name, v in (("n_identities", n_identities), ("n_segments", n_segments)):
        if not (isinstance(v, (int, np.integer)) and v >= 1):
            raise UserError(f"{name}: expected an integer >= 1, got {v!r}")
    if not (seconds > 0 and fps > 0):
        raise UserError(f"seconds/fps: expected positive values, got seconds={seconds!r}, fps={fps!r}")
    if len(split) != 3 or abs(sum(split) - 1) > 1e-6 or min(split) < 0:
        raise UserError(f"split: expected 3 non-negative fractions summing to 1, got {split!r}")
    rng = np.random.default_rng(seed)
    world = _make_world(rng, n_identities, identity)
    T, pre = int(round(seconds * fps)), 3.0
    segments, events = [], []
    for i in range(n_segments):
        k = i % n_identities
        srng = np.random.default_rng([seed, i])
        c = _conversation(srng, world, world["styles"][k], T, fps, pre, response, drift)
        words = [w for w in c["words"] if w.end > 0 and w.start >= 0 and w.end <= T / fps]
        hist = [w for w in c["words"] if w.end <= 0]
        spk_beta = srng.normal(size=N_SHAPE)
        lis_beta = world["betas"][k] if beta == "identity" else np.random.default_rng([seed, i, 7]).normal(size=N_SHAPE)
        full = modalities == "all"   # else words only
        segments.append(Segment(speaker_motion=c["speaker"], listener_motion=c["listener"], fps=fps,
                                listener_id=f"id{k}", listener_beta=lis_beta, speaker_beta=spk_beta, words=words,
                                history_words=hist, sa_tokens=c["sa"] if full else None, sa_rate=50.0,
                                emotion=c["emotion"] if full else None, valence=c["valence"] if full else None,
                                name=f"synthetic{seed}_{i:04d}"))
        events.append({"utterances": c["utterances"], "responses": c["responses"]})
    # split by segment, stratified by identity so that every identity is in every split
    prng = np.random.default_rng([seed, 10**6])
    idx = {"train": [], "val": [], "test": []}
    for k in range(n_identities):
        mine = prng.permutation(np.arange(k, n_segments, n_identities))
        n_va, n_te = (int(round(f * len(mine))) for f in split[1:])
        part = {"val": mine[:n_va], "test": mine[n_va:n_va + n_te], "train": mine[n_va + n_te:]}
        short = [name for name, f in zip(part, (split[1], split[2], split[0])) if f > 0 and not len(part[name])]
        if short:
            raise UserError(f"n_segments: expected enough segments per identity for every split, got {len(mine)} "
                            f"for identity {k} ({n_segments} segments / {n_identities} identities) and split "
                            f"{tuple(split)}: the {'/'.join(short)} split would have none of its segments")
        for name in idx:
            idx[name] = sorted(idx[name] + part[name].tolist())
    info = {"world": world, "events": events, "split_index": idx, "seed": seed,
            "assumptions": dict(identity=identity, response=response, modalities=modalities, beta=beta, drift=drift)}
    return Corpus(**{k: [segments[j] for j in v] for k, v in idx.items()}, fps=fps,
                  n_sa=N_SA if modalities == "all" else None, info=info)


def listener_alternatives(corpus: Corpus, segment: Segment) -> list[np.ndarray]:
    """Every identity's listener motion ``(T, 56)`` answering ``segment``'s speaker (a whole segment of ``corpus``),
    drawn again with each identity's style: item k is identity k's, the appropriate reactions (issue 25)."""
    seed, world, a = corpus.info.get("seed"), corpus.info.get("world"), corpus.info.get("assumptions")
    i = segment.name.rpartition("_")[2]
    if world is None or segment.name != f"synthetic{seed}_{i}" or not i.isdigit():
        raise UserError(f"segment: expected a segment of a synthetic corpus, got {segment.name!r}")
    out = []
    for style in world["styles"]:
        c = _conversation(np.random.default_rng([seed, int(i)]), world, style, segment.T, corpus.fps, 3.0,
                          a["response"], a["drift"])
        if not np.array_equal(c["speaker"].astype(np.float32), segment.speaker_motion):
            raise UserError(f"segment {segment.name}: expected a whole segment of this corpus, got another speaker")
        out.append(c["listener"].astype(np.float32))
    return out


#: The family of synthetic corpora (``--corpus NAME``; their table: docs/data.md): one world cannot show that a
#: method works. name -> (keywords of :func:`synthetic_corpus`, one line for ``data --help``)
CORPORA: dict[str, tuple[dict, str]] = {
    "default": ({}, "identity = offset + gain of beta; responses to cue words x emotion; 8 ids, 300 x 64 s"),
    "gain": (dict(identity="gain"), "identity = expression and pose gain only (same resting face)"),
    "rhythm": (dict(identity="rhythm"), "identity = nod rate, response lag, pose amplitude (same expression)"),
    "contagion": (dict(response="contagion"), "the listener answers the speaker's emotion (no cue-word rule)"),
    "backchannel": (dict(response="backchannel"), "the listener reacts only at pauses (nod, smile after happy)"),
    "words-only": (dict(modalities="words"), "no SA tokens, emotion or valence (LM-listener's public release)"),
    "realtalk25": (dict(fps=25.0), "default world at 25 fps (RealTalk)"),
    "small": (dict(n_identities=5, n_segments=35), "5 ids, 35 x 64 s (30 min train), a small real dataset's size"),
    "beta-random": (dict(beta="random"), "control: beta drawn per segment (identity NOT in beta)"),
}


def named_corpus(name: str = "default", seed: int = 0, **overrides) -> Corpus:
    """The variant ``name`` of :data:`CORPORA` (``overrides`` go to :func:`synthetic_corpus`)."""
    if name not in CORPORA:
        raise UserError(f"corpus: expected one of {tuple(CORPORA)}, got {name!r}")
    return synthetic_corpus(seed=seed, **{**CORPORA[name][0], **overrides})


WORDS = ("the a yes no really what why okay so and but you i we they think know right good great sure maybe "
         "well oh hmm that this was is it not just like about people work home today tomorrow").split()


def speaker_segment(seconds: float, fps: float = 30.0, seed: int = 0, words_per_second: float = 2.5,
                    n_sa: int = 1024) -> Segment:
    """A random speaker stream with realistic token counts (benchmark and test input): words, history words, SA
    tokens at 50/s, slowly varying emotion probabilities, a random listener beta; motion is zero."""
    rng = np.random.default_rng(seed)
    T = int(round(seconds * fps))
    dur = T / fps
    words, t = [], float(rng.uniform(0.0, 0.3))
    while True:
        d = float(rng.uniform(0.12, 0.45))
        if t + d > dur:
            break
        words.append(Word(str(rng.choice(WORDS)), t, t + d))
        t += d + float(rng.exponential(max(1e-3, 1.0 / words_per_second - 0.28)))
    hist = [Word(str(rng.choice(WORDS)), -2.0 + 0.3 * k, -1.8 + 0.3 * k) for k in range(6)]
    emo = softmax(np.cumsum(rng.normal(0, 0.3, (T, N_EMOTIONS)), 0), axis=1)
    zero = np.zeros((T, D_MOTION), np.float32)
    return Segment(speaker_motion=zero, listener_motion=zero, fps=fps,
                   listener_beta=rng.normal(size=N_SHAPE).astype(np.float32), words=words, history_words=hist,
                   sa_tokens=rng.integers(0, n_sa, int(np.ceil(dur * 50)) + 1), emotion=emo.astype(np.float32),
                   name=f"speaker{seed}")
