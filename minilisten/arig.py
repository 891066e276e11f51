"""ARIG-style continuous listener (after Guo et al., ICCV 2025): one listener frame (56,) per speaker
frame, sampled by a flow-matching MLP head from a causal model of both streams (IBU, state head, PMP).
Motion in raw units outside, normalised inside. Design, causality and caches: docs/arig.md.
"""
from __future__ import annotations

import functools
import math
import zlib
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_model, save_checkpoint
from .data.segment import D_MOTION, N_EMOTIONS, N_SHAPE, Segment
from .errors import UserError
from .tokens import check_sa_tokens, length_batches, sa_frame_bounds, word_frame

FORMAT = "minilisten.ARIG"       # config.json tag (minilisten.checkpoint.check_format)
STATES = ("speaking", "pause", "silence")   # conversational states from the speaker's words (:func:`state_labels`)
HEADS = ("diffusion", "regression")
IBUS = ("full", "linear")
IGNORE = -1   # state label of frames whose state the data cannot tell (no words)


@dataclass
class ARIGConfig:
    """CPU-sized defaults; :meth:`paper` gives the appendix's sizes (512 / 2048)."""
    d_model: int = 96            # embeddings of every stream (appendix: 512)
    n_head: int = 4
    d_ff: int = 384              # feed-forward width (appendix: 2048)
    depth: int = 2               # bidirectional-learning blocks (appendix: 2)
    window: int = 32             # history cache in frames (appendix: silent; ~1 s at 30 fps)
    coarse_frames: int = 3       # latest audio frames of the coarse outline (appendix: 3)
    temporal_frames: int = 5     # listener frames of the temporal layer (appendix: 5)
    diff_width: int = 192        # DiffusionMLP width (appendix: "lightweight")
    diff_blocks: int = 3         # DiffusionMLP blocks (appendix: 3)
    diff_cond: int = D_MOTION    # DiffusionMLP condition projected to this dim (appendix: the motion dim)
    diff_mul: int = 4            # (s, eps) draws per frame in the diffusion loss (MAR: 4)
    sample_steps: int = 8        # default Euler steps at inference
    temperature: float = 1.0     # default noise scale at inference (train-arig chooses it on the validation split)
    head: str = "diffusion"      # "diffusion" | "regression" (ablation: deterministic head)
    ibu: str = "full"            # "full" | "linear" (ablation: no bidirectional-integrated learning)
    w_state: float = 0.2         # weight of the state cross-entropy
    hist_noise: float = 0.1      # training: Gaussian noise (normalised units) on the listener history
    self_hist: float = 0.5       # training: fraction of history frames replaced by the model's own one-step samples
    bound: float = 0.1           # generated frames clamped to the data's per-dim range widened by this x the range
    word_buckets: int = 4096     # hashed word ids (0 = no word yet)
    since_max: int = 16          # frames-since-last-word buckets (the last one = ">= since_max")
    # set from the data (train-arig does it; not options)
    n_sa: int = 1024             # SA vocabulary (0 = the data has no SA tokens)
    use_emotion: bool = True
    use_words: bool = True
    use_beta: bool = True
    fps: float = 30.0
    sa_rate: float = 50.0

    DATA_FIELDS = ("n_sa", "use_emotion", "use_words", "use_beta", "fps", "sa_rate")

    def __post_init__(self):
        for f in fields(self):   # ints >= 1 (n_sa >= 0); floats finite, > 0 (fps, sa_rate) or >= 0
            v, low, strict = getattr(self, f.name), int(f.name != "n_sa"), f.name in ("fps", "sa_rate")
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"{f.name}: expected an int >= {low}, got {v!r}")
            number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if f.type == "float" and not (number and (v > 0 if strict else v >= 0)):
                raise ValueError(f"{f.name}: expected a finite number {'> 0' if strict else '>= 0'}, got {v!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model: expected a multiple of n_head={self.n_head}, got {self.d_model}")
        if self.window < max(self.coarse_frames, self.temporal_frames):
            raise ValueError(f"window: expected >= coarse_frames and temporal_frames "
                             f"({max(self.coarse_frames, self.temporal_frames)}), got {self.window}")
        if self.self_hist > 1:
            raise ValueError(f"self_hist: expected a fraction in [0, 1], got {self.self_hist!r}")
        for name, options in (("head", HEADS), ("ibu", IBUS)):
            if getattr(self, name) not in options:
                raise ValueError(f"{name}: expected one of {options}, got {getattr(self, name)!r}")

    @classmethod
    def paper(cls, **kw) -> "ARIGConfig":
        """The appendix's sizes: embeddings 512, feed-forward 2048, depth 2, 3 + 5 frames, 3 MLP blocks."""
        return cls(**{**dict(d_model=512, n_head=8, d_ff=2048, depth=2, window=64, diff_width=512), **kw})

    @property
    def sa_slots(self) -> int:
        """Most SA tokens that start inside one frame."""
        return max(1, math.ceil(self.sa_rate / self.fps - 1e-9))


def word_id(text: str, buckets: int) -> int:
    """Hashed word id in ``[1, buckets)`` (0 = no word); deterministic across runs (crc32)."""
    return 1 + zlib.crc32(text.lower().encode("utf-8")) % (buckets - 1) if buckets > 1 else 0


def frame_sa(tok: np.ndarray, last: int, k: int) -> tuple[np.ndarray, int]:
    """One frame's SA input ``(k,)``: the tokens that start in it (-1 pads), else the ``last`` one again (-1: none)."""
    slots = np.full(k, -1, np.int64)
    if tok.size:
        slots[:tok.size] = tok[:k]
        last = int(tok[-1])
    elif last >= 0:
        slots[0] = last
    return slots, last


def state_labels(seg: Segment, gap: float = 0.25, pause: float = 0.5) -> np.ndarray:
    """Conversational state per frame ``(T,)`` int64 (``STATES``) at frame centres: *speaking* in a word or a gap
    < ``gap`` s, else *pause* up to ``pause`` s after the last word, else *silence* (docs/arig.md)."""
    ws = sorted(seg.history_words + seg.words, key=lambda w: w.end)
    c = (np.arange(seg.T) + 0.5) / seg.fps
    out = np.full(seg.T, 2, np.int64)
    last_end = np.full(seg.T, -np.inf)
    for i, w in enumerate(ws):
        inside = (c >= w.start) & (c < w.end)
        if i + 1 < len(ws) and ws[i + 1].start - w.end < gap:
            inside |= (c >= w.end) & (c < ws[i + 1].start)
        out[inside] = 0
        last_end = np.where(c >= w.end, np.maximum(last_end, w.end), last_end)
    out[(out != 0) & (c - last_end <= pause)] = 1
    return out


def frame_inputs(seg: Segment, cfg: ARIGConfig, with_states: bool = True) -> dict[str, np.ndarray]:
    """Per-frame inputs (numpy): ``spk, lis (T, 56)``, ``sa (T, K)`` (-1 empty; no new token repeats the last),
    ``emo (T, 8)``, ``word, since, state (T,)`` (state -1 unknown), ``beta (100,)``; unused fields are zeros."""
    T, where = seg.T, f"segment {seg.name!r}"
    for name, used, want in (("sa_tokens", cfg.n_sa, f"SA tokens (the model has n_sa={cfg.n_sa})"),
                             ("emotion", cfg.use_emotion, f"({T}, {N_EMOTIONS}) probabilities (the model uses it)"),
                             ("listener_beta", cfg.use_beta, f"the listener's shape ({N_SHAPE},) (the model uses it)")):
        if used and getattr(seg, name) is None:
            raise ValueError(f"{where}: {name}: expected {want}, got None")
    for name, used in (("fps", True), ("sa_rate", cfg.n_sa)):
        want, got = getattr(cfg, name), getattr(seg, name)
        if used and abs(got - want) > 1e-6:
            raise ValueError(f"{where}: {name}: expected {want:g} (the model's), got {got:g}")
    K = cfg.sa_slots
    sa = np.full((T, K), -1, np.int64)
    if cfg.n_sa:
        tok = check_sa_tokens(seg.sa_tokens, cfg.n_sa, f"{where}: sa_tokens")
        b = np.minimum(sa_frame_bounds(np.arange(T + 1), cfg.fps, cfg.sa_rate), tok.size)
        last = -1
        for t in range(T):
            sa[t], last = frame_sa(tok[b[t]:b[t + 1]], last, K)
    word, since = np.zeros(T, np.int64), np.full(T, cfg.since_max, np.int64)
    if cfg.use_words:
        for w in sorted(seg.history_words + seg.words, key=lambda w: w.end):
            e = max(word_frame(w.end, seg.fps), -10 ** 6)
            a = max(e, 0)
            word[a:] = word_id(w.text, cfg.word_buckets)
            since[a:] = np.minimum(np.arange(a, T) - e, cfg.since_max)
    # a words dataset whose speaker is silent in this segment: silence throughout (state_labels gives it)
    return {"spk": seg.speaker_motion.astype(np.float32), "lis": seg.listener_motion.astype(np.float32), "sa": sa,
            "emo": seg.emotion.astype(np.float32) if cfg.use_emotion else np.zeros((T, N_EMOTIONS), np.float32),
            "word": word, "since": since,
            "beta": seg.listener_beta.astype(np.float32) if cfg.use_beta else np.zeros(N_SHAPE, np.float32),
            "state": state_labels(seg) if (with_states and cfg.use_words) else np.full(T, IGNORE, np.int64)}


def collate(items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack per-frame inputs of equal length into a batch: ``spk (B, T, 56)``, ``beta (B, 100)``, ..."""
    return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN as in DiT: ``LN(x) * (1 + scale) + shift`` (LN without affine parameters)."""
    return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift


def _zero(m: nn.Linear) -> nn.Linear:
    nn.init.zeros_(m.weight)
    nn.init.zeros_(m.bias)
    return m


class AdaLN(nn.Module):
    """cond (..., d) -> n chunks of (..., d) (shift, scale, gate, ...), zero-initialised as DiT."""

    def __init__(self, d: int, n: int):
        super().__init__()
        self.n, self.lin = n, _zero(nn.Linear(d, n * d))

    def forward(self, c):
        return self.lin(F.silu(c)).chunk(self.n, dim=-1)


class MLP(nn.Module):
    def __init__(self, d: int, d_ff: int, d_out: int | None = None):
        super().__init__()
        self.fc, self.proj = nn.Linear(d, d_ff), nn.Linear(d_ff, d_out or d)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class SlidingAttention(nn.Module):
    """Multi-head attention over positions ``(t - window, t]``, S tokens per position (one per
    stream), with a learned relative-position bias (n_head, window) (no absolute positions, so a
    ring cache serves unbounded streams). q, k, v come from the caller (per-stream projections)."""

    def __init__(self, d: int, n_head: int, window: int):
        super().__init__()
        self.nh, self.window = n_head, window
        self.rel_bias = nn.Parameter(torch.zeros(n_head, window))

    def _heads(self, x):   # (B, L, d) -> (B, nh, L, hd)
        B, L, d = x.shape
        return x.view(B, L, self.nh, d // self.nh).transpose(1, 2)

    def forward(self, q, k, v, cache: dict | None = None, name: str = "") -> torch.Tensor:
        """q, k, v: (B, N, S, d) -> (B, N, S, d); with ``cache``: (B, S, d), one new position (:meth:`step`)."""
        if cache is not None:
            return self.step(q, k, v, cache, name)
        B, N, S, d = q.shape
        pos = torch.arange(N, device=q.device).repeat_interleave(S)      # token n*S + s: stream s at position n
        rel = pos[:, None] - pos[None, :]                                   # (L, L) query - key
        ok = (rel >= 0) & (rel < self.window)
        bias = self.rel_bias[:, rel.clamp(0, self.window - 1)].masked_fill(~ok, float("-inf"))   # (nh, L, L)
        q, k, v = (self._heads(t.reshape(B, N * S, d)) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return y.transpose(1, 2).reshape(B, N, S, d)

    def step(self, q, k, v, cache: dict, name: str) -> torch.Tensor:
        """One new position: q, k, v (B, S, d) -> (B, S, d); ``cache[name]`` holds keys/values
        (B, nh, (window-1)*S, hd) of the previous positions (oldest first) and ``valid`` (int)."""
        B, S, d = q.shape
        W = self.window
        kh, vh = self._heads(k), self._heads(v)
        if name not in cache:
            z = kh.new_zeros(B, self.nh, (W - 1) * S, d // self.nh)
            cache[name] = {"k": z, "v": z.clone(), "valid": 0}
        c = cache[name]
        K, V = torch.cat([c["k"], kh], 2), torch.cat([c["v"], vh], 2)      # (B, nh, W*S, hd)
        off = torch.arange(W - 1, -1, -1, device=q.device).repeat_interleave(S)   # offsets of the keys
        bias = self.rel_bias[:, off]                                        # (nh, W*S)
        bias = bias.masked_fill(off > c["valid"], float("-inf"))[None, :, None, :]
        y = F.scaled_dot_product_attention(self._heads(q), K, V, attn_mask=bias)
        cache[name] = {"k": K[:, :, S:], "v": V[:, :, S:], "valid": min(c["valid"] + 1, W - 1)}
        return y.transpose(1, 2).reshape(B, S, d)


class BidirectionalBlock(nn.Module):
    """Agent and user streams with their own adaLN / qkv / MLP, one joint attention.
    x, cond: (B, N, 2, d) (stream 0 = agent, 1 = user) -> (B, N, 2, d); with a cache (B, 2, d), one position."""

    def __init__(self, c: ARIGConfig):
        super().__init__()
        d = c.d_model
        self.mod = nn.ModuleList(AdaLN(d, 6) for _ in range(2))
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d) for _ in range(2))
        self.out = nn.ModuleList(nn.Linear(d, d) for _ in range(2))
        self.mlp = nn.ModuleList(MLP(d, c.d_ff) for _ in range(2))
        self.attn = SlidingAttention(d, c.n_head, c.window)

    def forward(self, x, cond, cache: dict | None = None, name: str = ""):
        mods = [m(cond[..., s, :]) for s, m in enumerate(self.mod)]   # per stream: 6 x (..., d)
        q, k, v = zip(*[self.qkv[s](modulate(x[..., s, :], *mods[s][:2])).chunk(3, -1) for s in range(2)])
        y = self.attn(*(torch.stack(t, -2) for t in (q, k, v)), cache, name)   # (..., 2, d)
        outs = []
        for s in range(2):
            sh1, sc1, g1, sh2, sc2, g2 = mods[s]
            h = x[..., s, :] + g1 * self.out[s](y[..., s, :])
            h = h + g2 * self.mlp[s](modulate(h, sh2, sc2))
            outs.append(h)
        return torch.stack(outs, -2)


class IntegratedBlock(nn.Module):
    """Both streams in one sequence, shared parameters, attention and MLP in parallel on one
    adaLN-modulated input: ``x + g_a * Attn(h) + g_m * MLP(h)``. x, cond: (B, N, S, d) (with a cache (B, S, d))."""

    def __init__(self, c: ARIGConfig, adaptive: bool = True):
        super().__init__()
        d = c.d_model
        self.mod = AdaLN(d, 4) if adaptive else None
        self.qkv, self.out, self.mlp = nn.Linear(d, 3 * d), nn.Linear(d, d), MLP(d, c.d_ff)
        self.attn = SlidingAttention(d, c.n_head, c.window)

    def forward(self, x, cond=None, cache: dict | None = None, name: str = ""):
        if self.mod is not None:
            sh, sc, ga, gm = self.mod(cond)
            h = modulate(x, sh, sc)
        else:
            h, ga, gm = F.layer_norm(x, x.shape[-1:]), 1.0, 1.0
        q, k, v = self.qkv(h).chunk(3, -1)
        return x + ga * self.out(self.attn(q, k, v, cache, name)) + gm * self.mlp(h)


class CrossBlock(nn.Module):
    """query (M, d) attends a few memory tokens (M, n, d), then a feed-forward; pre-LN residual."""

    def __init__(self, d: int, n_head: int, d_ff: int):
        super().__init__()
        self.ln_q, self.ln_m, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_head, batch_first=True)
        self.ff = MLP(d, d_ff)

    def forward(self, q, mem):
        m = self.ln_m(mem)
        x = q + self.attn(self.ln_q(q)[:, None], m, m, need_weights=False)[0][:, 0]
        return x + self.ff(self.ln_f(x))


class TimestepEmbedder(nn.Module):
    """Diffusion time s in [0, 1] (M,) -> (M, w): sinusoid of 1000 s, then an MLP (DiT)."""

    def __init__(self, w: int, freq: int = 128):
        super().__init__()
        self.freq, self.mlp = freq, nn.Sequential(nn.Linear(freq, w), nn.SiLU(), nn.Linear(w, w))

    def forward(self, s):
        half = self.freq // 2
        f = torch.exp(-math.log(10000.0) * torch.arange(half, device=s.device, dtype=torch.float32) / half)
        a = 1000.0 * s[:, None].float() * f[None]
        return self.mlp(torch.cat([torch.cos(a), torch.sin(a)], -1))


class DiffusionMLP(nn.Module):
    """MAR's SimpleMLPAdaLN: x_s (M, 56), s (M,), cond (M, d_z) -> velocity (M, 56).
    ``blocks`` residual MLP blocks with adaLN (shift, scale, gate) on ``time_emb(s) + cond``."""

    def __init__(self, d_z: int, c: ARIGConfig):
        super().__init__()
        w = c.diff_width
        self.cond = nn.Sequential(nn.Linear(d_z, c.diff_cond), nn.Linear(c.diff_cond, w))   # projected to 56 first
        self.time, self.inp = TimestepEmbedder(w), nn.Linear(D_MOTION, w)
        self.mods = nn.ModuleList(AdaLN(w, 3) for _ in range(c.diff_blocks))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
                                  for _ in range(c.diff_blocks))
        self.final_mod, self.final = AdaLN(w, 2), _zero(nn.Linear(w, D_MOTION))

    def forward(self, x, s, cond):
        return self.velocity(x, self.time(s) + self.cond(cond))

    def velocity(self, x, c):
        """x_s (M, 56), c = time_emb(s) + cond projection (M or 1, w) -> velocity (M, 56)."""
        h = self.inp(x)
        for mod, mlp in zip(self.mods, self.mlps):
            sh, sc, g = mod(c)
            h = h + g * mlp(modulate(h, sh, sc))
        sh, sc = self.final_mod(c)
        return self.final(modulate(h, sh, sc))

    def sample(self, cond, noise, steps: int):
        """:func:`euler_sample` of this net (the projection of ``cond (M, d_z)`` computed once) -> x (M, 56)."""
        cz = self.cond(cond)
        return euler_sample(lambda x, s: self.velocity(x, self.time(s) + cz), noise, steps)


def flow_loss(net, x0: torch.Tensor, cond: torch.Tensor, s: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-token flow-matching loss: ``x_s = (1 - s) x0 + s eps``, ``mean |net(x_s, s, cond) - (eps - x0)|^2``.
    x0, eps: (M, 56); s: (M,); cond: (M, d_z)."""
    xs = (1 - s[:, None]) * x0 + s[:, None] * eps
    return ((net(xs, s, cond) - (eps - x0)) ** 2).mean()


def check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")


def euler_sample(velocity, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate dx/ds = velocity(x, s) from s = 1 (x = noise (M, 56)) to s = 0 in ``steps`` uniform
    Euler steps; s is passed as a (1,) tensor (every row has the same s)."""
    check_steps(steps)
    x = noise
    for k in range(steps, 0, -1):
        x = x - (1.0 / steps) * velocity(x, torch.full((1,), k / steps, device=x.device, dtype=x.dtype))
    return x


class ARIG(nn.Module):
    """The model (docs/arig.md). ``features(batch)`` (teacher forcing) and ``step`` (one frame,
    caches) give the condition z (d,) and the state logits; ``loss`` trains; :func:`arig_generate` samples."""

    def __init__(self, config: ARIGConfig | None = None):
        super().__init__()
        self.config = c = config or ARIGConfig()
        d = c.d_model
        big = torch.finfo(torch.float32).max   # lis_lo/hi: raw bounds of generated frames (none until set_motion_stats)
        for name, v in (("lis_mean", 0.0), ("spk_mean", 0.0), ("lis_std", 1.0), ("spk_std", 1.0),
                        ("lis_lo", -big), ("lis_hi", big)):
            self.register_buffer(name, torch.full((D_MOTION,), v))
        # input embeddings
        self.emb_agent, self.emb_user = nn.Linear(D_MOTION, d), nn.Linear(D_MOTION, d)
        self.emb_sa = nn.Embedding(max(c.n_sa, 1), d)
        self.emb_emo = nn.Linear(N_EMOTIONS, d)
        self.emb_word, self.emb_since = nn.Embedding(c.word_buckets, d), nn.Embedding(c.since_max + 1, d)
        self.audio_bias = nn.Parameter(torch.zeros(d))
        self.emb_beta = nn.Sequential(nn.Linear(N_SHAPE, d), nn.SiLU(), nn.Linear(d, d))
        # interactive behaviour understanding
        if c.ibu == "full":
            self.bidir = nn.ModuleList(BidirectionalBlock(c) for _ in range(c.depth))
            self.integrated = IntegratedBlock(c)
        else:   # ablation: per-frame linear layers instead of bidirectional + integrated learning
            self.linear_ibu = nn.ModuleList(nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d))
                                            for _ in range(2))
        # conversational state understanding
        self.context = IntegratedBlock(c, adaptive=False)
        self.state_feat = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, d), nn.GELU())
        self.state_head = nn.Linear(d, len(STATES))
        # progressive motion prediction
        self.coarse_query = nn.Linear(d, d)
        self.coarse = CrossBlock(d, c.n_head, c.d_ff)
        self.fine = CrossBlock(d, c.n_head, c.d_ff)
        self.emb_temporal = nn.Linear(D_MOTION, d)
        self.temporal_pos = nn.Parameter(torch.zeros(c.temporal_frames + 1, d))
        self.temporal = nn.TransformerEncoderLayer(d, c.n_head, c.d_ff, dropout=0.0, activation="gelu",
                                                   batch_first=True, norm_first=True)
        self.ln_z = nn.LayerNorm(d)
        if c.head == "diffusion":
            self.diffusion = DiffusionMLP(d, c)
        else:
            self.regressor = MLP(d, c.d_ff, D_MOTION)

    def set_motion_stats(self, lis_mean, lis_std, spk_mean, spk_std, lis_min=None, lis_max=None,
                         min_std: float = 1e-4) -> None:
        """Normalisation of listener and speaker motion (each (56,)); std floored at ``min_std``; with the listener
        data's ``lis_min``/``lis_max`` (56,), generated frames are bounded by them widened by ``config.bound``."""
        stats = (("lis_mean", lis_mean), ("lis_std", lis_std), ("spk_mean", spk_mean), ("spk_std", spk_std))
        for name, v in stats + ((("lis_lo", lis_min), ("lis_hi", lis_max)) if lis_min is not None else ()):
            t = torch.as_tensor(np.asarray(v, np.float32))
            if t.shape != (D_MOTION,) or not torch.isfinite(t).all():
                raise ValueError(f"{name}: expected finite values of shape ({D_MOTION},), got {tuple(t.shape)}")
            getattr(self, name).copy_(t.clamp_min(min_std) if name.endswith("std") else t)
        if lis_min is not None:
            span = self.lis_hi - self.lis_lo
            self.lis_lo.sub_(self.config.bound * span)
            self.lis_hi.add_(self.config.bound * span)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """Checkpoints without ``lis_lo``/``lis_hi`` (saved before the bound existed) load unbounded."""
        return super().load_state_dict({"lis_lo": self.lis_lo, "lis_hi": self.lis_hi, **state}, strict, assign)

    def bounded(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised frames (..., 56) clamped to ``[lis_lo, lis_hi]`` (the widened data range, else no bound)."""
        return torch.clamp(x, self._norm_lis(self.lis_lo), self._norm_lis(self.lis_hi))

    def noise_scale(self, temperature: float | None = None) -> float:
        """The sampling temperature: ``temperature`` (a finite number >= 0), or ``config.temperature`` when None."""
        t = self.config.temperature if temperature is None else temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < math.inf:
            raise UserError(f"temperature: expected a finite number >= 0, got {t!r}")
        return float(t)

    def save_pretrained(self, directory) -> None:
        """``config.json`` + ``model.safetensors`` (atomic; see minilisten.checkpoint)."""
        save_checkpoint(directory, {"format": FORMAT, "version": 1, **asdict(self.config)}, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> "ARIG":
        return load_model(directory, cls, ARIGConfig, FORMAT, map_location=map_location)

    def _audio(self, sa, emo, word, since):
        """Per-frame speaker speech: sa (..., K) int (-1 empty), emo (..., 8), word/since (...) -> (..., d)."""
        a = self.audio_bias + self.emb_emo(emo) * float(self.config.use_emotion)
        if self.config.n_sa:
            m = (sa >= 0).float()
            e = self.emb_sa(sa.clamp_min(0)) * m[..., None]
            a = a + e.sum(-2) / m.sum(-1, keepdim=True).clamp_min(1)
        if self.config.use_words:
            a = a + self.emb_word(word) + self.emb_since(since)
        return a

    def _beta(self, beta):
        return self.emb_beta(beta) if self.config.use_beta else self.emb_beta(torch.zeros_like(beta)) * 0

    def _norm_lis(self, m):
        return (m - self.lis_mean) / self.lis_std

    def _ibu(self, g, u, a, b, cache=None):
        """Tokens -> (.., 2, d) through IBU; g, u, a: (B, N, d), or (B, d) with ``cache``."""
        x = torch.stack([g, u + a], -2)                                   # (..., 2, d) agent, user
        if self.config.ibu == "linear":
            return torch.stack([self.linear_ibu[0](torch.cat([g, a + b], -1)),
                                self.linear_ibu[1](torch.cat([u, a], -1))], -2)
        cond = torch.stack([a + b, a], -2)
        for i, blk in enumerate(self.bidir):
            x = blk(x, cond, cache, f"bidir{i}")
        return self.integrated(x, (a + b)[..., None, :].expand_as(x), cache, "integrated")

    def _pmp(self, cis, state, a_last, a_hist, m_hist, b):
        """cis, state, a_last, b: (M, d); a_hist: (M, 3, d) latest audio; m_hist: (M, 5, 56) normalised
        listener frames t-5..t-1 -> z (M, d)."""
        coarse = self.coarse(self.coarse_query(b), a_hist)
        fine = self.fine(coarse, torch.stack([cis, state, a_last], 1))
        seq = torch.cat([self.emb_temporal(m_hist), fine[:, None]], 1) + self.temporal_pos
        return self.ln_z(self._temporal_last(seq))

    def _temporal_last(self, seq):
        """``self.temporal(seq)[:, -1]`` computed for the last position only (the others' outputs are
        never used): seq (M, L, d) -> (M, d). The layer is pre-norm: x + SA(LN1 x), then + FF(LN2 .)."""
        t = self.temporal
        h = t.norm1(seq)
        x = seq[:, -1] + t.self_attn(h[:, -1:], h, h, need_weights=False)[0][:, 0]
        return x + t.linear2(t.activation(t.linear1(t.norm2(x))))

    def features(self, batch: dict, ref: torch.Tensor | None = None, hist_noise: float = 0.0,
                 generator: torch.Generator | None = None, lis=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing (``lis`` as history; or ``lis (B, T, 56)`` normalised), ``ref (B, 56)`` raw (default the
        mean) -> ``z (B, T, d)``, state logits ``(B, T, n_states)``; frame t sees speaker <= t and listener < t."""
        c, P = self.config, self.config.window
        B, T = batch["spk"].shape[:2]
        spk = (batch["spk"] - self.spk_mean) / self.spk_std
        lis = self._norm_lis(batch["lis"]) if lis is None else lis
        if hist_noise:
            lis = lis + hist_noise * torch.randn(lis.shape, generator=generator, device=lis.device)
        r = torch.zeros(B, D_MOTION, device=spk.device) if ref is None else self._norm_lis(ref)
        pad = lambda x: torch.cat([x[:, :1].expand(-1, P, *x.shape[2:]), x], 1)   # repeat frame 0 P times
        a = self._audio(pad(batch["sa"]), pad(batch["emo"]), pad(batch["word"]), pad(batch["since"]))   # (B, P+T, d)
        u = self.emb_user(pad(spk))
        lis_in = torch.cat([r[:, None].expand(-1, P + 1, -1), lis[:, :-1]], 1)    # agent input: frame i-1
        g = self.emb_agent(lis_in)
        b = self._beta(batch["beta"])[:, None].expand(-1, P + T, -1)
        x = self._ibu(g, u, a, b)
        x = self.context(x)                                                # (B, P+T, 2, d)
        cis = x[:, P:, 0]
        state = self.state_feat(x[:, P:].reshape(B, T, -1))
        n_c, n_t = c.coarse_frames, c.temporal_frames
        a_hist = a.unfold(1, n_c, 1)[:, P - n_c + 1:].transpose(-1, -2)  # (B, T, 3, d): frames t-2..t
        m_hist = lis_in.unfold(1, n_t, 1)[:, P - n_t + 1:].transpose(-1, -2)   # (B, T, 5, 56): t-5..t-1
        M = B * T
        z = self._pmp(cis.reshape(M, -1), state.reshape(M, -1), a[:, P:].reshape(M, -1),
                      a_hist.reshape(M, n_c, -1), m_hist.reshape(M, n_t, -1), b[:, P:].reshape(M, -1))
        return z.view(B, T, -1), self.state_head(state)

    def loss(self, batch: dict, ref=None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Training loss on a batch: motion (diffusion or regression) + ``w_state`` x state CE."""
        c, noise = self.config, self.config.hist_noise if self.training else 0.0
        x0, hist = self._norm_lis(batch["lis"]).reshape(-1, D_MOTION), None
        if self.training and c.self_hist:   # parallel scheduled sampling: own one-step samples in the history
            with torch.no_grad():
                z, _ = self.features(batch, ref, noise, generator)
                eps = torch.randn(x0.shape, generator=generator, device=x0.device)
                own = self.bounded(self.sample(z.reshape(x0.shape[0], -1), eps)).view_as(batch["lis"])
                pick = torch.rand(own.shape[:2], generator=generator, device=x0.device)[..., None] < c.self_hist
                hist = torch.where(pick, own, x0.view_as(own))
        z, logits = self.features(batch, ref, noise, generator, hist)
        zf = z.reshape(x0.shape[0], -1)
        if c.head == "diffusion":
            n = c.diff_mul
            s = torch.rand(n * x0.shape[0], generator=generator, device=x0.device)
            eps = torch.randn((n * x0.shape[0], D_MOTION), generator=generator, device=x0.device)
            motion = flow_loss(self.diffusion, x0.repeat(n, 1), zf.repeat(n, 1), s, eps)
        else:
            motion = F.mse_loss(self.regressor(zf), x0)
        labels = batch["state"].reshape(-1)
        known = labels != IGNORE
        lg, lab = logits.reshape(-1, len(STATES))[known], labels[known]
        state = F.cross_entropy(lg, lab) if known.any() else logits.sum() * 0
        acc = (lg.argmax(-1) == lab).float().mean() if known.any() else torch.tensor(float("nan"))
        total = motion + c.w_state * state
        return total, {"motion": float(motion.detach()), "state": float(state.detach()), "state_acc": float(acc)}

    def init_state(self, first: dict, ref: torch.Tensor | None = None) -> dict:
        """Caches for B streams, filled with ``window`` pad positions from ``first`` (frame 0's inputs, ``spk (B,
        56)``, ``sa (B, K)``, ...) and ``ref (B, 56)``, raw reference listener motion (default: the mean)."""
        c = self.config
        B = first["spk"].shape[0]
        r = torch.zeros(B, D_MOTION, device=first["spk"].device) if ref is None else self._norm_lis(ref)
        a = self._audio(first["sa"], first["emo"], first["word"], first["since"])
        st = {"kv": {}, "beta": self._beta(first["beta"]), "m_hist": r[:, None].repeat(1, c.temporal_frames, 1),
              "a_hist": a[:, None].repeat(1, c.coarse_frames - 1, 1)}
        for _ in range(c.window):
            self._advance(st, first, r)
        return st

    def _advance(self, st: dict, inp: dict, agent_in: torch.Tensor):
        """One position through IBU + context with the caches -> (cis, state feature, audio)."""
        a = self._audio(inp["sa"], inp["emo"], inp["word"], inp["since"])
        u = self.emb_user((inp["spk"] - self.spk_mean) / self.spk_std)
        x = self._ibu(self.emb_agent(agent_in), u, a, st["beta"], st["kv"])
        x = self.context(x, None, st["kv"], "context")               # (B, 2, d)
        return x[:, 0], self.state_feat(x.reshape(x.shape[0], -1)), a

    def step(self, st: dict, inp: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame t: speaker inputs (as :meth:`init_state`'s ``first``) -> ``z (B, d)``, state logits; listener frame
        t-1 is the last :meth:`commit` (or the reference)."""
        cis, state, a = self._advance(st, inp, st["m_hist"][:, -1])
        a_hist = torch.cat([st["a_hist"], a[:, None]], 1)
        st["a_hist"] = a_hist[:, 1:]
        z = self._pmp(cis, state, a, a_hist, st["m_hist"], st["beta"])
        return z, self.state_head(state)

    @staticmethod
    def commit(st: dict, frame_norm: torch.Tensor) -> None:
        """Append listener frame t (normalised, (B, 56)) to the history of ``st``."""
        st["m_hist"] = torch.cat([st["m_hist"][:, 1:], frame_norm[:, None]], 1)

    def sample(self, z: torch.Tensor, noise: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Normalised listener frames (M, 56) from conditions z (M, d) and noise (M, 56)."""
        if self.config.head == "regression":
            return self.regressor(z)
        return self.diffusion.sample(z, noise, self.config.sample_steps if steps is None else steps)


def decode_frame(model: ARIG, st: dict, inp: dict, noise: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """The frame rule: :meth:`ARIG.step`, :meth:`ARIG.sample` with ``noise (B, 56)``, :meth:`ARIG.bounded`,
    :meth:`ARIG.commit` of the sample -> the normalised listener frame ``(B, 56)``."""
    z, _ = model.step(st, inp)
    x = model.bounded(model.sample(z, noise, steps))
    model.commit(st, x)
    return x


def sample_frame(model: ARIG, st: dict, inp: dict, gens: list, temperature: float = 1.0, steps: int | None = None,
                 frame=decode_frame) -> torch.Tensor:
    """One raw listener frame ``(B, 56)`` of B streams, noise ``(1, 56)`` from each stream's generator."""
    noise = torch.cat([torch.randn((1, D_MOTION), generator=g, device=model.lis_mean.device) for g in gens])
    return frame(model, st, inp, noise * temperature, steps) * model.lis_std + model.lis_mean


@functools.cache
def compiled_decode_frame(device_type: str = "cpu"):
    """:func:`decode_frame` under ``torch.compile`` (one graph per model, batch and steps; CPU: C++ wrapper)."""
    opts = {"options": {"cpp_wrapper": True}} if device_type == "cpu" else {}
    return torch.compile(decode_frame, dynamic=False, **opts)


@torch.no_grad()
def arig_generate(model: ARIG, clips: list[Segment], steps: int | None = None, seed: int = 0,
                  reference: str = "mean", temperature: float | None = None, batch: int = 64) -> list[np.ndarray]:
    """Listener motion ``(T, 56)`` float32 per clip, from ``reference`` "mean" (training mean) or "first" (the clip's
    first listener frame); clip i's noise is seeded ``seed + i`` (as a :class:`StreamingARIG` with that seed);
    ``temperature`` None: the model's ``config.temperature``."""
    if reference not in ("mean", "first"):
        raise ValueError(f"reference: expected 'mean' or 'first', got {reference!r}")
    model.eval()
    dev, mean, temperature = model.lis_mean.device, model.lis_mean.cpu().numpy(), model.noise_scale(temperature)
    out: list = [None] * len(clips)
    for part in length_batches([c.T for c in clips], batch):
        b = collate([frame_inputs(clips[i], model.config, with_states=False) for i in part])
        b = {k: v.to(dev) for k, v in b.items() if k not in ("lis", "state")}   # the speaker's inputs
        ref = np.stack([clips[i].listener_motion[0] if reference == "first" else mean for i in part])
        ref = torch.as_tensor(ref, device=dev)
        gens = [torch.Generator(device=dev).manual_seed(seed + i) for i in part]
        frames = []
        for t in range(b["spk"].shape[1]):
            inp = {k: v if k == "beta" else v[:, t] for k, v in b.items()}
            if t == 0:
                st = model.init_state(inp, ref)
            frames.append(sample_frame(model, st, inp, gens, temperature, steps))
        for i, mi in zip(part, torch.stack(frames, 1).float().cpu().numpy()):
            out[i] = mi
    return out
