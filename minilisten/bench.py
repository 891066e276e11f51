"""placeholder: replaced below"""
import numpy as np

from .data.segment import D_MOTION, N_EMOTIONS, N_SHAPE, Segment, Word

WORDS = ("the a yes no really what why okay so and but you i we they think know right good great sure maybe "
         "well oh hmm that this was is it not just like about people work home today tomorrow").split()


def speaker_segment(seconds: float, fps: float = 30.0, seed: int = 0, words_per_second: float = 2.5,
                    n_sa: int = 1024) -> Segment:
    """A random speaker stream with realistic token counts (benchmark and test input): words with
    timings (``words_per_second``), a few history words, SA tokens at 50/s, per-frame emotion
    probabilities (slowly varying), a random listener beta; motion is zero (not used)."""
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
    logits = np.cumsum(rng.normal(0, 0.3, (T, N_EMOTIONS)), 0)
    emo = np.exp(logits - logits.max(1, keepdims=True))
    emo /= emo.sum(1, keepdims=True)
    return Segment(speaker_motion=np.zeros((T, D_MOTION), np.float32), listener_motion=np.zeros((T, D_MOTION), np.float32),
                   fps=fps, listener_beta=rng.normal(size=N_SHAPE).astype(np.float32), words=words, history_words=hist,
                   sa_tokens=rng.integers(0, n_sa, int(np.ceil(dur * 50)) + 1), emotion=emo.astype(np.float32),
                   name=f"speaker{seed}")
